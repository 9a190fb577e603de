"""A whole confidential Flower federation on one machine, as separate processes.

What ``secfl flower demo`` (and ``examples/flower/run.sh``), the tests and the
benchmark drive, in one work folder: a simulated TEE root and an SPM; the Flower app
built into a FAB (``flwr build`` of the Flower venv) and shielded as the app's code
volume; each site's share of scikit-learn's digits as its own shielded data volume
(its own key, sealed to the SPM for this board); a board of three approving a
2-of-3 policy written by :func:`secfl.flower.flower_policy`; the SuperLink and the
SuperNodes each started by ``secfl run`` with the simulated TEE; and, for the demo,
a SuperNode whose app was modified, which attestation refuses.

It runs in secfl's venv; the Flower processes run with the Flower venv's Python
(:func:`flower_python`). :meth:`LocalFlowerFederation.stop` ends every process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from secfl.errors import FlowerError
from secfl.flower._local import ROOT, Process, build_fab, flower_python, free_port, site_arrays
from secfl.flower._policy import APP_VOLUME, FAB_NAME, FlowerFederation, Site, flower_policy

__all__ = [
    "BOARD",
    "LocalFlowerFederation",
]

BOARD = (("alice", "ed25519"), ("bob", "ecdsa-p256"), ("carol", "ed25519"))


@dataclass
class LocalFlowerFederation:
    """One machine, loopback, the simulated TEE (see the module docstring)."""

    work: Path
    app: Path = ROOT / "examples" / "flower"
    sites: int = 4
    rounds: int = 3
    #: More run config (KEY=VALUE), on top of ``num-server-rounds`` and ``min-nodes``.
    run_config: list[str] = field(default_factory=list)
    #: Seal the ServerApp's outputs (its saved model) for the model owner.
    output: bool = True
    processes: dict[str, Process] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work = Path(self.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self.python = flower_python()
        self.sim_dir = self.work / "sim"
        self.volumes = self.work / "volumes"
        self.volumes.mkdir(exist_ok=True)
        self.names = [f"site-{i}" for i in range(1, self.sites + 1)]
        self.keys: dict[str, bytes] = {}
        self.tags: dict[str, str] = {}
        self.policy_name = "flower"
        self.fed: FlowerFederation | None = None

    # --- setting up ------------------------------------------------------------------------

    def start_spm(self) -> None:
        from secfl.tee import _simulated as simulated

        simulated.init(self.sim_dir, force=True)
        ready = self.work / "spm.ready.json"
        self._spawn("spm", [sys.executable, "-m", "secfl.cli.main", "spm", "serve",
                            "--data", str(self.work / "spm"), "--listen", "127.0.0.1:0",
                            "--platform", "simulated", "--sim-dir", str(self.sim_dir),
                            "--ready-file", str(ready)])  # fmt: skip
        doc = self._wait_file("spm", ready, 60)
        self.spm_url, self.spm_pin = doc["url"], doc["tls_spki_sha256"]

    def prepare(self) -> None:
        """Build and shield the app (and a modified copy), shield each site's data."""
        import numpy as np

        from secfl.shield import encrypt_directory

        plain = self.work / "plain"
        app_dir = plain / APP_VOLUME
        self.fab = build_fab(self.app, self.python, app_dir / FAB_NAME)
        self.fab_sha256 = hashlib.sha256(self.fab).hexdigest()
        self.keys["app"] = os.urandom(32)
        self.tags["app"] = encrypt_directory(app_dir, self.volumes / "app.secfl", self.keys["app"])
        self.modified_fab = build_fab(self._modified_app(), self.python, plain / "modified.fab")
        self.modified_sha256 = hashlib.sha256(self.modified_fab).hexdigest()
        for name, arrays in zip(self.names, site_arrays(self.sites), strict=True):
            folder = plain / name
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(folder / "train.npz", x=arrays["x"], y=arrays["y"])
            self.keys[name] = os.urandom(32)
            self.tags[name] = encrypt_directory(folder, self.volumes / f"{name}.secfl",
                                                self.keys[name])  # fmt: skip
        self.keys["model-output"] = os.urandom(32)

    def _modified_app(self) -> Path:
        """The app with a ClientApp that scales every update (model poisoning)."""
        copy = self.work / "plain" / "modified" / "flower"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.app, copy, ignore=shutil.ignore_patterns("*.fab", "__pycache__"))
        client = next(copy.glob("*/client_app.py"))
        client.write_text(
            client.read_text().replace(
                "ArrayRecord(model.state_dict())",
                "ArrayRecord({k: v * 10 for k, v in model.state_dict().items()})",
            )
        )
        return copy

    def federation(self) -> FlowerFederation:
        if self.fed is None:
            raise FlowerError("flower: the policy is not written yet (submit_policy)")
        return self.fed

    def submit_policy(self, name: str = "flower") -> str:
        """Write the policy, have two of the three board members sign it, submit it; it
        becomes this federation's (:meth:`federation`). Returns its digest."""
        from secfl.policy import _keys as keys

        self.gate_port, self.link_port = free_port(), free_port()
        self.board = {n: keys.generate(kind) for n, kind in BOARD}  # type: ignore[arg-type]
        self.policy_name = name
        self.fed, digest = self._submit(name, f"127.0.0.1:{self.gate_port}")
        return digest

    def submit_other_policy(self, name: str) -> FlowerFederation:
        """Another policy (its own CA and node keys, the same board and sites) whose
        SuperNodes are told to dial this federation's SuperLink."""
        fed, _ = self._submit(name, self.federation().superlink)
        return fed

    def _submit(self, name: str, superlink: str) -> tuple[FlowerFederation, str]:
        from secfl.policy._document import load_policy
        from secfl.policy._signatures import sign_policy
        from secfl.spm._sealing import board_binding, seal_imported
        from secfl.spm.client import SpmClient
        from secfl.tee import _simulated as simulated

        members = [{"name": n, "public_key": self.board[n][1].decode()} for n, _ in BOARD]
        binding = board_binding([m["public_key"] for m in members], 2)
        with SpmClient(self.spm_url, pin=self.spm_pin) as client:
            spm_key = client.public_key()

        def sealed(secret: str, value: bytes) -> str:
            return seal_imported(value, spm_key, name, secret, binding)

        sites = [
            Site(n, self.tags[n], sealed(f"{n}-data-key", self.keys[n]), runtime_port=free_port())
            for n in self.names
        ]
        output = self.work / "output" / f"{name}-model.secfl"
        fed = FlowerFederation(
            name=name, python=str(self.python), fab_sha256=self.fab_sha256,
            app_tag=self.tags["app"], app_sealed=sealed("app-key", self.keys["app"]),
            superlink=superlink, sites=sites, board=members, threshold=2,
            platforms={"accept": ["simulated"], "allow_unknown_tcb": True,
                       "simulation_root": (self.sim_dir / simulated.ROOT_CERT).read_text()},
            listen=f"127.0.0.1:{self.gate_port}", superlink_port=self.link_port,
            run_config=[f"num-server-rounds={self.rounds}", f"min-nodes={self.sites}",
                        *self.run_config],
            output=str(output) if self.output else None,
            output_sealed=sealed("model-output-key", self.keys["model-output"])
            if self.output else None,
        )  # fmt: skip
        text = yaml.safe_dump(flower_policy(fed), sort_keys=False, allow_unicode=True)
        (self.work / f"{name}.policy.yaml").write_text(text)
        policy = load_policy(text)
        sigs = [sign_policy(policy, self.board[n][0], n) for n in ("alice", "bob")]
        (self.work / "output").mkdir(exist_ok=True)
        with SpmClient(self.spm_url, pin=self.spm_pin) as client:
            reply = client.submit_policy(text, sigs)
        return fed, str(reply.get("digest", ""))

    # --- running ---------------------------------------------------------------------------

    def run_argv(
        self, service: str, volumes: dict[str, Path], argv: list[str], policy: str | None = None
    ) -> list[str]:
        args = [sys.executable, "-m", "secfl.cli.main", "run", "--spm", self.spm_url,
                "--spm-pin", self.spm_pin, "--policy", policy or self.policy_name,
                "--service", service,
                "--platform", "simulated", "--sim-dir", str(self.sim_dir)]  # fmt: skip
        for name, path in volumes.items():
            args += ["--volume", f"{name}={path}"]
        return [*args, "--", *argv]

    def start_superlink(self) -> Process:
        fed = self.federation()
        argv = self.run_argv("superlink", {APP_VOLUME: self.volumes / "app.secfl"},
                             fed.superlink_argv())  # fmt: skip
        return self._spawn("superlink", argv)

    def wait_gate(self, timeout: float = 120.0) -> None:
        """Until the SuperLink's gate accepts connections (its log says so)."""
        link = self.processes["superlink"]
        deadline = time.monotonic() + timeout
        while "Fleet API is served" not in link.text():
            if link.proc.poll() is not None:
                code = link.proc.returncode
                raise FlowerError(f"flower: the SuperLink exited {code}: {link.tail()}")
            if time.monotonic() > deadline:
                raise FlowerError(f"flower: the SuperLink did not start in {timeout:.0f} s")
            time.sleep(0.1)

    def site_argv(
        self, site: Site, fab_sha256: str | None = None, fed: FlowerFederation | None = None
    ) -> list[str]:
        fed = fed or self.federation()
        volumes = {site.data_volume: self.volumes / f"{site.name}.secfl"}
        return self.run_argv(
            site.name, volumes, fed.supernode_argv(site, fab_sha256), policy=fed.name
        )

    def start_supernodes(self) -> list[Process]:
        return [self._spawn(s.name, self.site_argv(s)) for s in self.federation().sites]

    def start_modified(self) -> Process:
        """A SuperNode under site-1's name whose app was modified: its command line pins
        the modified app, so its measurement is not the policy's."""
        site = self.federation().sites[0]
        return self._spawn("modified-site", self.site_argv(site, self.modified_sha256))

    def run_demo(
        self,
        step: Callable[[str, float], None] | None = None,
        before_supernodes: Callable[[], None] | None = None,
        timeout: float = 1800.0,
    ) -> int:
        """The whole demonstration: the SPM, the app and data shielded, the policy signed
        and submitted, the SuperLink attested, then (after ``before_supernodes``) the
        SuperNodes and a SuperNode whose app was modified. Returns the SuperLink's exit
        code once the run ended; ``step(what, seconds)`` hears of each stage."""

        def stage(what: str, action: Callable[[], object]) -> None:
            began = time.monotonic()
            action()
            if step is not None:
                step(what, time.monotonic() - began)

        stage("SPM started (simulated TEE)", self.start_spm)
        stage("app built into a FAB and shielded; each site's data shielded", self.prepare)
        stage("policy signed by alice and bob (2 of 3) and submitted", self.submit_policy)
        stage("SuperLink attested; its Fleet API served (and nothing else)", self._superlink)
        if before_supernodes is not None:
            before_supernodes()
        self.start_supernodes()
        modified = self.start_modified()
        code = self.wait(timeout)
        modified.proc.wait(timeout=120)
        return code

    def _superlink(self) -> None:
        self.start_superlink()
        self.wait_gate()

    def wait(self, timeout: float = 600.0) -> int:
        """The SuperLink's exit code once the run ended (it exits then)."""
        link = self.processes["superlink"]
        try:
            return link.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FlowerError(
                f"flower: the run did not end in {timeout:.0f} s: {link.tail()}"
            ) from None

    def rounds_seen(self) -> list[str]:
        """The ServerApp's per-round lines (Flower's log, from the SuperLink's output)."""
        text = self.processes["superlink"].text()
        return [line for line in text.splitlines() if "[ROUND " in line]

    def audit(self) -> list[dict[str, Any]]:
        from secfl.spm.client import SpmClient

        entries: list[dict[str, Any]] = []
        with SpmClient(self.spm_url, pin=self.spm_pin) as client:
            while True:
                page = client.audit(since=entries[-1]["seq"] if entries else 0)["entries"]
                if not page:
                    return entries
                entries.extend(page)

    def final_model(self) -> dict[str, Any]:
        """The ServerApp's saved model, opened with the model owner's key."""
        import io

        import numpy as np

        from secfl.shield import Volume

        path = self.work / "output" / f"{self.policy_name}-model.secfl"
        with Volume.open(path, self.keys["model-output"]) as volume:
            data = bytes(volume.read_bytes("final_model.npz"))
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def stop(self) -> None:
        procs = list(self.processes.values())
        for p in reversed(procs):
            if p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait()

    # --- processes -------------------------------------------------------------------------

    def start(self, name: str, argv: list[str]) -> Process:
        """Start ``argv`` as process ``name`` (its log in ``logs/NAME.log``)."""
        return self._spawn(name, argv)

    def stop_process(self, name: str) -> None:
        """SIGTERM (then SIGKILL) process ``name`` and everything it started."""
        p = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.proc.pid, signal.SIGTERM)
        try:
            p.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait()

    def _spawn(self, name: str, argv: list[str]) -> Process:
        log = self.work / "logs" / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.work, start_new_session=True)  # fmt: skip
        self.processes[name] = p = Process(name, proc, log)
        return p

    def _wait_file(self, name: str, path: Path, timeout: float) -> dict[str, Any]:
        p = self.processes[name]
        deadline = time.monotonic() + timeout
        while not path.exists():
            if p.proc.poll() is not None:
                raise FlowerError(f"flower: {name} exited {p.proc.returncode}: {p.tail()}")
            if time.monotonic() > deadline:
                raise FlowerError(f"flower: {name} did not start in {timeout:.0f} s")
            time.sleep(0.05)
        return dict(json.loads(path.read_text()))
