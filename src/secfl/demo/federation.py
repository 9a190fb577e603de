"""A whole confidential federation on one machine, as separate processes.

What ``secfl demo`` drives: a simulated TEE root; an SPM (``secfl spm serve``); a
board of three with a 2-of-3 policy; the task code and every party's data
shielded with that party's own key (imported into the SPM sealed to it); the
aggregator and the collaborators each started by ``secfl run`` over loopback; and
an extra collaborator whose task code was modified, which attestation refuses.
Everything lives in one work folder; :meth:`Federation.stop` ends every process.

The policy is written by :mod:`secfl.demo._policy`, the volumes by
:mod:`secfl.demo._volumes`, and the processes started and stopped by
:mod:`secfl.demo._processes`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from secfl.demo._policy import BOARD, POLICY, demo_policy
from secfl.demo._processes import (
    Workload,
    free_port,
    kill_group,
    secfl_program,
    spawn,
    stop_all,
    wait_ready,
)
from secfl.demo._volumes import shard_in, shield_volumes
from secfl.launcher._measurement import resolve_program, run_measurement
from secfl.policy import _keys as keys
from secfl.policy._document import load_policy
from secfl.policy._signatures import sign_policy
from secfl.spm.client import SpmClient
from secfl.tee import _simulated as simulated

__all__ = ["DemoSettings", "Federation"]


@dataclass
class DemoSettings:
    task: str = "digits"
    #: Honest sites (one collaborator each); the poisoned ones come on top.
    clients: int = 4
    rounds: int = 10
    samples: int | None = None
    seed: int = 0
    epochs: int = 2
    lr: float | None = None
    batch_size: int | None = None
    tampered: bool = True
    certificate_ttl: int = 600
    round_timeout: float = 300.0
    #: More federation settings for the policy (e.g. quorum, dead_after).
    overrides: dict[str, Any] = field(default_factory=dict)
    #: The aggregation rule (a strategy name, e.g. clone-audit) and its settings.
    defence: str = "fedavg"
    defence_settings: dict[str, Any] = field(default_factory=dict)
    #: Sites *added* to the honest ones, whose data is poisoned (labels flipped): genuine
    #: code, so attestation admits them; only a defence can notice them.
    poisoned: int = 0
    #: A folder of task code (``task.py`` and whatever it imports) shielded as the task
    #: volume instead of the built-in task's module; its data still comes from
    #: splitting ``task`` (so its ``load_data`` reads a folder holding one shard).
    code: Path | None = None


@dataclass
class Federation:
    work: Path
    settings: DemoSettings = field(default_factory=DemoSettings)
    workloads: dict[str, Workload] = field(default_factory=dict)
    #: Workloads killed on purpose (not failures).
    killed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Absolute: every process starts inside the work folder, where a relative
        # path would name a folder below itself.
        self.work = Path(self.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.sim_dir = self.work / "sim"
        self.metrics = self.work / "metrics.jsonl"
        self.output = self.work / "output"
        self.program = secfl_program()
        total = self.settings.clients + self.settings.poisoned
        self.sites = [f"site-{i}" for i in range(1, total + 1)]
        #: The added sites with poisoned data: the last ones, after every honest site.
        self.poisoned = self.sites[self.settings.clients :]
        self.keys: dict[str, bytes] = {}
        self.tags: dict[str, str] = {}
        self._all: list[Workload] = []

    # --- setting up ------------------------------------------------------------------------

    def start_spm(self) -> None:
        simulated.init(self.sim_dir, force=True)
        ready = self.work / "spm.ready.json"
        self._spawn("spm", [sys.executable, "-m", "secfl.cli.main", "spm", "serve",
                            "--data", str(self.work / "spm"), "--listen", "127.0.0.1:0",
                            "--platform", "simulated", "--sim-dir", str(self.sim_dir),
                            "--ready-file", str(ready)])  # fmt: skip
        doc = self._wait_ready("spm", ready, 60)
        self.spm_url, self.spm_pin = doc["url"], doc["tls_spki_sha256"]

    def prepare_data(self) -> None:
        """Split the task's data, shield the code and each party's shard with its key."""
        volume_keys, tags = shield_volumes(self.settings, self.sites, self.poisoned, self.work)
        self.keys.update(volume_keys)
        self.tags.update(tags)
        self.keys["model-output"] = os.urandom(32)

    def argv(self, role: str) -> list[str]:
        """The exact command line of a workload: it is part of its measurement."""
        if role == "aggregator":
            return [str(self.program), "aggregator", "--task", "volume:task",
                    "--validation", "volume:validation", "--test", "volume:test",
                    "--listen", f"127.0.0.1:{self.port}",
                    "--checkpoints", str(self.work / "checkpoints"),
                    "--metrics", str(self.metrics), "--output", str(self.output),
                    "--ready-file", str(self.work / "aggregator.ready.json")]  # fmt: skip
        return [str(self.program), "collaborator", "--aggregator", f"127.0.0.1:{self.port}",
                "--task", "volume:task"]  # fmt: skip

    def measurement(self, role: str) -> str:
        return run_measurement(
            resolve_program(str(self.program)), self.argv(role), {"task": self.tags["task"]}
        )

    def submit_policy(self) -> str:
        """Write the policy, have two of the three board members sign it, submit it."""
        self.port = free_port()
        self.board = {n: keys.generate(kind) for n, kind in BOARD}
        recovery = {n: keys.generate_recovery() for n, _ in BOARD}
        client = SpmClient(self.spm_url, pin=self.spm_pin)
        spm_key = client.public_key()
        members = [
            {"name": n, "public_key": self.board[n][1].decode(),
             "recovery_key": recovery[n][1].decode()}
            for n, _ in BOARD
        ]  # fmt: skip
        doc = demo_policy(
            self.settings,
            members=members,
            sites=self.sites,
            volume_keys=self.keys,
            tags=self.tags,
            measurements={r: self.measurement(r) for r in ("aggregator", "collaborator")},
            spm_key=spm_key,
            simulation_root=(self.sim_dir / simulated.ROOT_CERT).read_text(),
        )
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        (self.work / "policy.yaml").write_text(text)
        policy = load_policy(text)
        sigs = [sign_policy(policy, self.board[n][0], n) for n in ("alice", "bob")]
        with client:
            reply = client.submit_policy(text, sigs)
        return str(reply.get("digest", ""))

    # --- running ---------------------------------------------------------------------------

    def _run_argv(self, service: str, volumes: dict[str, Path], role: str) -> list[str]:
        args = [sys.executable, "-m", "secfl.cli.main", "run", "--spm", self.spm_url,
                "--spm-pin", self.spm_pin, "--policy", POLICY, "--service", service,
                "--platform", "simulated", "--sim-dir", str(self.sim_dir)]  # fmt: skip
        for name, path in volumes.items():
            args += ["--volume", f"{name}={path}"]
        return [*args, "--", *self.argv(role)]

    def start_aggregator(self, *, wait: bool = True) -> Workload:
        v = self.work / "volumes"
        volumes = {n: v / f"{n}.secfl" for n in ("task", "validation", "test")}
        ready = self.work / "aggregator.ready.json"
        ready.unlink(missing_ok=True)
        w = self._spawn("aggregator", self._run_argv("aggregator", volumes, "aggregator"))
        if wait:
            self._wait_ready("aggregator", ready, 120)
        return w

    def start_collaborators(self) -> None:
        for site in self.sites:
            self.start_collaborator(site)

    def start_collaborator(self, site: str) -> Workload:
        v = self.work / "volumes"
        volumes = {"task": v / "task.secfl", site: v / f"{site}.secfl"}
        return self._spawn(site, self._run_argv(site, volumes, "collaborator"))

    def start_tampered(self) -> Workload:
        """A site runs a modified copy of the task code under a genuine site's name."""
        v = self.work / "volumes"
        volumes = {"task": v / "task-modified.secfl", self.sites[0]: v / f"{self.sites[0]}.secfl"}
        return self._spawn("tampered-site", self._run_argv(self.sites[0], volumes, "collaborator"))

    def rounds(self) -> list[dict[str, Any]]:
        from secfl.demo.report import read_metrics

        return read_metrics(self.metrics) if self.metrics.exists() else []

    def failed(self) -> Workload | None:
        """A genuine workload that exited with an error, if any."""
        for name, w in self.workloads.items():
            if name not in self.killed | {"tampered-site"} and w.proc.poll() not in (None, 0):
                return w
        return None

    def finished(self) -> bool:
        agg = self.workloads.get("aggregator")
        return agg is not None and agg.proc.poll() == 0

    def audit(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        with SpmClient(self.spm_url, pin=self.spm_pin) as client:
            while True:
                page = client.audit(since=entries[-1]["seq"] if entries else 0)["entries"]
                if not page:
                    return entries
                entries.extend(page)

    def verify_audit(self) -> tuple[int, int]:
        from secfl.spm._audit_verify import verify_remote

        return verify_remote(self.spm_url, self.spm_pin)

    def final_model(self) -> bytes:
        """The final model, opened with the model owner's output key."""
        from secfl.shield import Volume

        with Volume.open(self.output / "model.secfl", self.keys["model-output"]) as volume:
            return bytes(volume.read_bytes("model.safetensors"))

    def kill(self, name: str) -> None:
        """SIGKILL a workload and everything it started (``secfl run`` and its program)."""
        w = self.workloads[name]
        self.killed.add(name)
        kill_group(w)

    def stop(self) -> None:
        stop_all(self._all)

    # --- the same federation without security (for measuring the overhead) ----------------

    def start_insecure(self, out: Path) -> Workload:
        """The same task, data and settings in --insecure mode (no SPM, no TEE, plaintext);
        returns the aggregator, whose metrics and final model go to ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        port = free_port()
        plain = self.work / "plain"
        task = str(plain / "task" / "task.py")
        agg = self._spawn("insecure-aggregator", [
            str(self.program), "aggregator", "--insecure", "--task", task,
            "--validation", str(shard_in(plain / "validation")),
            "--test", str(shard_in(plain / "test")),
            "--federation", str(self.work / "policy.yaml"), "--listen", f"127.0.0.1:{port}",
            "--metrics", str(out / "metrics.jsonl"), "--output", str(out),
            "--ready-file", str(out / "ready.json"),
        ])  # fmt: skip
        self._wait_ready("insecure-aggregator", out / "ready.json", 120)
        for site in self.sites:
            self._spawn(f"insecure-{site}", [
                str(self.program), "collaborator", "--insecure", "--name", site,
                "--aggregator", f"127.0.0.1:{port}", "--task", task,
                "--data", str(shard_in(plain / site)),
            ])  # fmt: skip
        return agg

    # --- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> Workload:
        self.workloads[name] = w = spawn(name, argv, self.logs / f"{name}.log", self.work)
        self._all.append(w)  # a restarted name still gets stopped
        self.killed.discard(name)
        return w

    def _wait_ready(self, name: str, ready: Path, timeout: float) -> dict[str, Any]:
        return wait_ready(self.workloads[name], ready, timeout)
