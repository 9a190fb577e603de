"""A real SPM process on loopback HTTPS, a board with keys, and policies to submit.

Shared by the SPM's end-to-end, restart and benchmark code: everything here runs
the SPM as `secfl spm serve` in its own process, exactly as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from secfl.policy import _keys as keys
from secfl.policy._document import load_policy
from secfl.policy._signatures import Signature, sign_policy
from secfl.tee import _simulated as simulated

AGGREGATOR_MR = "a1" * 48
COLLABORATOR_MR = "c0" * 48
#: Seconds these SPMs serve a policy's current version and revocations before re-reading
#: them (``SECFL_SPM_POLICY_REFRESH``; 1 s by default): a test that changes them behind the
#: SPM's back waits :data:`REFRESH_WAIT` instead of a second.
POLICY_REFRESH = 0.1
#: Long enough that the next request re-reads (the SPM's clock is this process's).
REFRESH_WAIT = 2 * POLICY_REFRESH


@dataclass
class Board:
    """Three members: alice (ed25519), bob (ecdsa-p256), carol (ed25519); 2 of 3."""

    keys: dict[str, bytes] = field(default_factory=dict)
    public: dict[str, bytes] = field(default_factory=dict)
    recovery: dict[str, bytes] = field(default_factory=dict)
    recovery_public: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Board:
        board = cls()
        for name, kind in (("alice", "ed25519"), ("bob", "ecdsa-p256"), ("carol", "ed25519")):
            board.keys[name], board.public[name] = keys.generate(kind)  # type: ignore[arg-type]
            board.recovery[name], board.recovery_public[name] = keys.generate_recovery()
        return board

    def members(self) -> list[dict[str, str]]:
        return [
            {
                "name": n,
                "public_key": self.public[n].decode(),
                "recovery_key": self.recovery_public[n].decode(),
            }
            for n in self.keys
        ]

    def sign(self, document: str, *who: str) -> list[Signature]:
        policy = load_policy(document)
        return [sign_policy(policy, self.keys[w], w) for w in who]


def policy_document(
    name: str,
    board: Board,
    sim_root: bytes,
    *,
    version: int = 1,
    predecessor: str = "",
    accept: tuple[str, ...] = ("simulated",),
    extra: dict[str, Any] | None = None,
) -> str:
    """A policy: an aggregator and a collaborator, an identity CA, a model key, counters."""
    doc: dict[str, Any] = {
        "name": name,
        "version": version,
        "predecessor": predecessor,
        "board": {"members": board.members(), "threshold": 2},
        "platforms": {
            "accept": list(accept),
            "allow_unknown_tcb": True,
            **({"simulation_root": sim_root.decode()} if "simulated" in accept else {}),
        },
        "identity_ca": "fl-ca",
        "services": [
            {
                "name": "aggregator",
                "role": "aggregator",
                "measurements": {k: [AGGREGATOR_MR] for k in accept if k in ("simulated", "snp")},
                "inject": {
                    "env": {"MODEL_KEY": "$$SECFL::model-key:hex$$"},
                    "files": {"/secrets/seed": "$$SECFL::seed:base64$$"},
                },
                "counters": ["round"],
                "certificate_ttl": 3600,
            },
            {
                "name": "collaborator",
                "role": "collaborator",
                "measurements": {k: [COLLABORATOR_MR] for k in accept if k in ("simulated", "snp")},
                "inject": {"files": {"/secrets/model.key": "$$SECFL::model-key:hex$$"}},
            },
        ],
        "secrets": [
            {"name": "fl-ca", "kind": "x509-ca", "common_name": f"{name} CA"},
            {"name": "model-key", "kind": "aes-256"},
            {"name": "seed", "kind": "random", "size": 16},
            {"name": "signing", "kind": "ed25519"},
        ],
        "counters": [{"name": "round"}],
        "federation": {"rounds": 10, "counter": "round", "min_clients": 1},
    }
    if extra:
        doc.update(extra)
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass
class SpmProcess:
    """`secfl spm serve` in a child process, with what its ready file says."""

    data: Path
    sim_dir: Path
    db: str | None
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    pin: str = ""
    measurement: str = ""
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the process's environment
    args: list[str] = field(default_factory=list)  # added to `secfl spm serve`'s options

    def start(self, timeout: float = 60.0) -> SpmProcess:
        ready = self.data.with_suffix(".ready.json")
        ready.unlink(missing_ok=True)
        self.log = self.data.with_suffix(".log")
        args = [
            sys.executable, "-m", "secfl.cli.main", "spm", "serve",
            "--data", str(self.data), "--listen", "127.0.0.1:0",
            "--platform", "simulated", "--sim-dir", str(self.sim_dir),
            "--ready-file", str(ready),
        ]  # fmt: skip
        if self.db:
            args += ["--db", self.db]
        args += self.args
        env = {**os.environ, "SECFL_SPM_POLICY_REFRESH": str(POLICY_REFRESH), **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"SPM exited {self.proc.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SPM did not start: {self.log.read_text()}")
            time.sleep(0.05)
        doc = json.loads(ready.read_text())
        self.url, self.pin, self.measurement = (
            doc["url"],
            doc["tls_spki_sha256"],
            doc["measurement"],
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def make_sim(path: Path) -> bytes:
    simulated.init(path, force=True)
    return (path / simulated.ROOT_CERT).read_bytes()


@contextmanager
def spm_with_policy(
    data: Path, sim: tuple[Path, bytes], board: Board, *services: str, policy: str = "fed"
) -> Iterator[tuple[SpmProcess, dict[str, Any]]]:
    """A running `secfl spm serve` with ``policy`` (version 1, signed by alice and bob)
    and an enrollment (session token, certificate) for each of ``services``
    (``aggregator``, ``collaborator``), attested in the simulated TEE."""
    from secfl.spm.client import SpmClient
    from secfl.spm.enroll import enroll

    measurements = {"aggregator": AGGREGATOR_MR, "collaborator": COLLABORATOR_MR}
    proc = SpmProcess(data, sim[0], None).start()
    try:
        with SpmClient(proc.url, pin=proc.pin) as client:
            document = policy_document(policy, board, sim[1])
            client.submit_policy(document, board.sign(document, "alice", "bob"))
            platform = simulated.SimulatedPlatform(sim[0])
            enrolled = {
                s: enroll(client, platform, policy, s, measurement=measurements[s])
                for s in services
            }
        yield proc, enrolled
    finally:
        proc.stop()


@contextmanager
def shared_replicas(
    folder: Path, sim: tuple[Path, bytes]
) -> Iterator[tuple[SpmProcess, SpmProcess]]:
    """Two SPMs on one SQLite database, ``a`` re-reading the policy and revocations at
    most once a second (the default), ``b`` with ``a``'s master key (``--new-anchor``)."""
    shared = f"sqlite:///{folder / 'shared.db'}"
    a = SpmProcess(folder / "a", sim[0], shared, env={"SECFL_SPM_POLICY_REFRESH": "1"})
    a.start()
    b = None
    try:
        (folder / "b").mkdir(mode=0o700)
        (folder / "b" / "master.key").write_bytes((folder / "a" / "master.key").read_bytes())
        (folder / "b" / "master.key").chmod(0o600)
        b = SpmProcess(folder / "b", sim[0], shared, args=["--new-anchor"]).start()
        yield a, b
    finally:
        a.stop()
        if b is not None:
            b.stop()


@contextmanager
def raw_http(client: Any) -> Iterator[httpx.Client]:
    """An httpx client to the SPM ``client`` (an ``SpmClient``) pinned, verifying its
    certificate the same way: for tests that need the raw answers (status, headers)."""
    context = client._connect().context
    with httpx.Client(
        base_url=client.url, verify=context, timeout=client.timeout, trust_env=False
    ) as http:
        yield http


def sql(data: Path, statement: str, *args: object) -> None:
    """Run one statement on the SQLite database of the SPM data folder ``data`` (the
    host's hand on it)."""
    import sqlite3

    db = sqlite3.connect(data / "spm.db")
    with db:
        db.execute(statement, args)
    db.close()


def copy_spm(data: Path, to: Path) -> Path:
    """The SPM's data folder as it is now (SQLite's WAL folded in), to tamper with."""
    import sqlite3

    to.mkdir(mode=0o700)
    for name in os.listdir(data):
        if name.startswith("spm.db"):
            continue
        (to / name).write_bytes((data / name).read_bytes())
        (to / name).chmod(0o600)
    source = sqlite3.connect(data / "spm.db")
    target = sqlite3.connect(to / "spm.db")
    with target:
        source.backup(target)
    source.close()
    target.close()
    return to
