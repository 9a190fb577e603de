"""A whole confidential federation on one machine, as separate processes.

What ``secfl demo`` drives: a simulated TEE root; an SPM (``secfl spm serve``); a
board of three with a 2-of-3 policy; the task code and every party's data
shielded with that party's own key (imported into the SPM sealed to it); the
aggregator and the collaborators each started by ``secfl run`` over loopback; and
an extra collaborator whose task code was modified, which attestation refuses.
Everything lives in one work folder; :meth:`Federation.stop` ends every process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from secfl.errors import DemoError
from secfl.launcher._measurement import resolve_program, run_measurement
from secfl.policy import _keys as keys
from secfl.policy._document import load_policy
from secfl.policy._signatures import sign_policy
from secfl.shield import encrypt_directory
from secfl.spm.client import SpmClient
from secfl.tee import _simulated as simulated

__all__ = [
    "BOARD",
    "POLICY",
    "TAMPERING",
    "TASK_MODULE",
    "VERIFY_KEY",
    "DemoSettings",
    "Federation",
    "Workload",
    "free_port",
    "secfl_program",
]

POLICY = "demo"
BOARD: tuple[tuple[str, keys.KeyKind], ...] = (
    ("alice", "ed25519"),
    ("bob", "ecdsa-p256"),
    ("carol", "ed25519"),
)

TASK_MODULE = '''"""The federation's task, as the board approved it: {task}."""

from secfl.tasks._registry import get_task

_task = get_task("{task}")
name = _task.name
build_model = _task.build_model
load_data = _task.load_data
train = _task.train
evaluate = _task.evaluate
'''

#: What a dishonest site adds to its copy: every update scaled up (model poisoning).
TAMPERING = """

def train(model, data, config, _train=_task.train):
    metrics = _train(model, data, config)
    for p in model.parameters():
        p.data.mul_(10.0)
    return metrics
"""


VERIFY_KEY = "$$SECFL::model-signing:pub$$"


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
class Workload:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 1) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def secfl_program() -> Path:
    """The ``secfl`` executable the workloads run (what their measurement covers)."""
    beside = Path(sys.executable).parent / "secfl"
    found = beside if beside.exists() else shutil.which("secfl")
    if not found:
        raise DemoError("demo: the `secfl` command is not installed next to this Python")
    return Path(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        from secfl.tasks._split import split

        s = self.settings
        report = split(s.task, len(self.sites), seed=s.seed, out=self.work / "plain" / "shards",
                       samples=s.samples, overwrite=True)  # fmt: skip
        parts = {
            site: report.path(sh) for site, sh in zip(self.sites, report.client_shards, strict=True)
        }
        parts["validation"] = report.path("validation.safetensors")
        parts["test"] = report.path("test.safetensors")
        volumes = self.work / "volumes"
        volumes.mkdir(exist_ok=True)
        for name, shard in parts.items():
            folder = self.work / "plain" / name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(shard, folder / shard.name)
            if name in self.poisoned:
                _flip_labels(folder / shard.name)
            self._shield(name, folder, volumes / f"{name}.secfl")
        code = self.work / "plain" / "task"
        bad = self.work / "plain" / "task-modified"
        if s.code is None:
            code.mkdir(parents=True, exist_ok=True)
            (code / "task.py").write_text(TASK_MODULE.format(task=s.task))
            bad.mkdir(parents=True, exist_ok=True)
            (bad / "task.py").write_text(TASK_MODULE.format(task=s.task) + TAMPERING)
        else:  # the site's modified copy: one line more in task.py changes the volume's tag
            shutil.copytree(s.code, code, dirs_exist_ok=True)
            shutil.copytree(s.code, bad, dirs_exist_ok=True)
            with open(bad / "task.py", "a", encoding="utf-8") as fh:
                fh.write("\nMODIFIED_BY_THE_SITE = True\n")
        self._shield("task", code, volumes / "task.secfl")
        encrypt_directory(bad, volumes / "task-modified.secfl", os.urandom(32))
        self.keys["model-output"] = os.urandom(32)

    def _shield(self, name: str, folder: Path, out: Path) -> None:
        self.keys[name] = os.urandom(32)
        self.tags[name] = encrypt_directory(folder, out, self.keys[name])

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
        doc = self._policy(
            [{"name": n, "public_key": self.board[n][1].decode(),
              "recovery_key": recovery[n][1].decode()} for n, _ in BOARD],
            spm_key,
        )  # fmt: skip
        text = yaml.safe_dump(doc, sort_keys=False)
        (self.work / "policy.yaml").write_text(text)
        policy = load_policy(text)
        sigs = [sign_policy(policy, self.board[n][0], n) for n in ("alice", "bob")]
        with client:
            reply = client.submit_policy(text, sigs)
        return str(reply.get("digest", ""))

    def _policy(self, members: list[dict[str, str]], spm_key: Any) -> dict[str, Any]:
        from secfl.spm._sealing import board_binding, seal_imported

        s = self.settings
        imported = [*self.sites, "validation", "test", "task", "model-output"]
        # Each owner seals its key for this board only (see `secfl policy seal-secret`).
        board = board_binding([m["public_key"] for m in members], 2)
        secrets: list[dict[str, Any]] = [
            {"name": "fl-ca", "kind": "x509-ca", "common_name": "demo federation CA"},
            {"name": "model-signing", "kind": "ed25519"},
            {"name": "checkpoint-key", "kind": "aes-256"},
        ] + [
            {"name": f"{n}-key", "kind": "imported",
             "sealed": seal_imported(self.keys[n], spm_key, POLICY, f"{n}-key", board)}
            for n in imported
        ]  # fmt: skip
        volumes = [{"name": "task", "key": "task-key", "kind": "code", "tag": self.tags["task"]}]
        volumes += [
            {"name": n, "key": f"{n}-key", "kind": "data", "tag": self.tags[n]}
            for n in [*self.sites, "validation", "test"]
        ]
        collab = self.measurement("collaborator")
        train: dict[str, Any] = {"epochs": s.epochs}
        if s.lr is not None:
            train["lr"] = s.lr
        if s.batch_size is not None:
            train["batch_size"] = s.batch_size
        return {
            "name": POLICY,
            "version": 1,
            "board": {"members": members, "threshold": 2},
            "platforms": {
                "accept": ["simulated"],
                "allow_unknown_tcb": True,
                "simulation_root": (self.sim_dir / simulated.ROOT_CERT).read_text(),
            },
            "identity_ca": "fl-ca",
            "services": [
                {
                    "name": "aggregator",
                    "role": "aggregator",
                    "measurements": {"simulated": [self.measurement("aggregator")]},
                    "volumes": ["task", "validation", "test"],
                    "inject": {
                        "files": {
                            "/fl/signing-key.pem": "$$SECFL::model-signing:key$$",
                            "/fl/checkpoint.key": "$$SECFL::checkpoint-key:hex$$",
                            "/fl/output.key": "$$SECFL::model-output-key:hex$$",
                        }
                    },
                    "counters": ["rounds"],
                    "certificate_ttl": s.certificate_ttl,
                },
                *[
                    {
                        "name": site,
                        "role": "collaborator",
                        "measurements": {"simulated": [collab]},
                        "volumes": ["task", site],
                        "inject": {"files": {"/fl/signing-key.pub": VERIFY_KEY}},
                        "certificate_ttl": s.certificate_ttl,
                    }
                    for site in self.sites
                ],
            ],
            "secrets": secrets,
            "volumes": volumes,
            "counters": [{"name": "rounds"}],
            "federation": {
                "rounds": s.rounds,
                "min_clients": len(self.sites),
                "strategy": s.defence,
                "strategy_settings": s.defence_settings,
                "train": train,
                "seed": s.seed,
                "round_timeout": s.round_timeout,
                "counter": "rounds",
                "objective": _objective(s.task),
                **s.overrides,
            },
        }

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
        v = self.work / "volumes"
        for site in self.sites:
            volumes = {"task": v / "task.secfl", site: v / f"{site}.secfl"}
            self._spawn(site, self._run_argv(site, volumes, "collaborator"))

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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(w.proc.pid, signal.SIGKILL)
        w.proc.wait(timeout=30)

    def stop(self) -> None:
        for w in reversed(self._all):
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGTERM)
        for w in self._all:
            try:
                w.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait()

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
            "--validation", str(_shard(plain / "validation")),
            "--test", str(_shard(plain / "test")),
            "--federation", str(self.work / "policy.yaml"), "--listen", f"127.0.0.1:{port}",
            "--metrics", str(out / "metrics.jsonl"), "--output", str(out),
            "--ready-file", str(out / "ready.json"),
        ])  # fmt: skip
        self._wait_ready("insecure-aggregator", out / "ready.json", 120)
        for site in self.sites:
            self._spawn(f"insecure-{site}", [
                str(self.program), "collaborator", "--insecure", "--name", site,
                "--aggregator", f"127.0.0.1:{port}", "--task", task,
                "--data", str(_shard(plain / site)),
            ])  # fmt: skip
        return agg

    # --- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> Workload:
        log = self.logs / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.work, start_new_session=True)  # fmt: skip
        self.workloads[name] = w = Workload(name, proc, log)
        self._all.append(w)  # a restarted name still gets stopped
        self.killed.discard(name)
        return w

    def _wait_ready(self, name: str, ready: Path, timeout: float) -> dict[str, Any]:
        w = self.workloads[name]
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if w.proc.poll() is not None:
                raise DemoError(f"demo: {name} exited {w.proc.returncode}: {w.tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"demo: {name} did not start in {timeout:.0f} s: {w.tail()}")
            time.sleep(0.05)
        return dict(json.loads(ready.read_text()))


def _objective(task: str) -> dict[str, str]:
    """The demo policy's objective: a classifier's validation accuracy (higher is
    better), a regression's loss (its standardised mean squared error: lower is better)."""
    from secfl.tasks._registry import get_task

    if get_task(task).target == "class":
        return {"metric": "accuracy", "mode": "max"}
    return {"metric": "loss", "mode": "min"}


def _flip_labels(path: Path) -> None:
    """A dishonest site's shard: every label y becomes classes - 1 - y; a regression's
    targets are mirrored about their mean instead (y becomes 2m - y)."""
    from secfl.tasks._shards import read_shard, target_kind, write_shard

    x, y, meta = read_shard(path)
    if target_kind(meta) == "value":
        mean = float(meta["target_scaling"]["offset"][0])
        write_shard(path, x, (2 * mean - y).astype(y.dtype), meta)
        return
    classes = int(meta["num_classes"])
    meta = {**meta, "label_counts": list(reversed(meta["label_counts"]))}
    write_shard(path, x, classes - 1 - y, meta)


def _shard(folder: Path) -> Path:
    return next(folder.glob("*.safetensors"))
