"""In-process federations for tests: real gRPC over mutual TLS on loopback, real
threads, real (digits) data.

:class:`Federation` holds what one federation shares (the client shards, the
policy's CA, the aggregator's signing key) and builds aggregators, collaborators
and :class:`RawClient` s (a hand-driven collaborator for misbehaving on purpose).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from secfl.fl import _messages as msg
from secfl.fl._aggregator import Aggregator, Signer
from secfl.fl._collaborator import Collaborator, ModelGate
from secfl.fl._commit import Commit, Ledger, MemoryLedger
from secfl.fl._config import FederationConfig
from secfl.fl._envelope import ModelEnvelope, read_unverified
from secfl.fl._tensors import from_bytes, to_bytes
from secfl.fl._transport import Client, Credentials, PeerPolicy, Server
from secfl.fl.strategies._base import Params
from secfl.policy._secrets import CaSecret
from secfl.spm import _sealing as sv
from secfl.spm.enroll import make_csr
from secfl.tasks._base import Dataset, Task
from secfl.tasks._split import SplitReport

POLICY = "p"
DIGEST = "d" * 64
AGGREGATOR = "aggregator"
#: Upper bound on any wait in these helpers: a hang fails the test instead.
LIMIT = 60.0


def ca(name: str, now: datetime | None = None) -> sv.Value:
    """A policy identity CA (as the SPM generates it)."""
    when = now or datetime.now(UTC)
    return sv.generate(CaSecret(name=name, kind="x509-ca", common_name=f"{name} CA"), {}, when)


def identity(authority: sv.Value, service: str, *, policy: str = POLICY,
             now: datetime | None = None, ttl: int = 3600) -> Credentials:  # fmt: skip
    """A service certificate from ``authority``, valid from ``now`` for ``ttl`` seconds."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr(make_csr(key, service))
    cert = sv.issue_service_certificate(authority, csr, policy=policy, service=service,
                                        ttl_seconds=ttl, now=now or datetime.now(UTC))  # fmt: skip
    return Credentials(
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        ca_pem=authority["crt"].encode(),
    )  # fmt: skip


def site(index: int) -> str:
    return f"site-{index + 1}"


class Background(threading.Thread):
    """``fn()`` on a daemon thread, keeping its result or exception."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # handed to the test by outcome()
            self.error = exc

    def outcome(self, timeout: float = LIMIT) -> Any:
        """The result (or the exception, raised) once the thread is done."""
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


def wait_for(condition: Callable[[], bool], what: str, timeout: float = LIMIT) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.01)


@dataclass
class Federation:
    """One federation's shared material; every piece can also be built by hand."""

    task: Task
    shards: SplitReport
    authority: sv.Value = field(default_factory=lambda: ca(POLICY))
    key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    _data: dict[str, Dataset] = field(default_factory=dict)

    # --- data -----------------------------------------------------------------------------

    def dataset(self, file: str) -> Dataset:
        if file not in self._data:
            self._data[file] = self.task.load_data(self.shards.path(file))
        return self._data[file]

    def data(self, index: int) -> Dataset:
        return self.dataset(self.shards.client_shards[index].file)

    def validation(self) -> Dataset:
        return self.dataset("validation.safetensors")

    # --- the aggregator's side ------------------------------------------------------------

    def server(self, services: Iterable[str], *, secure: bool = True) -> Server:
        peers = PeerPolicy(policy=POLICY, services=set(services))
        return Server(identity(self.authority, AGGREGATOR) if secure else None, peers)

    def aggregator(
        self,
        settings: dict[str, Any],
        *,
        services: Iterable[str] | None = None,
        secure: bool = True,
        ledger: Ledger | None = None,
        directory: Path | None = None,
        start: bool = True,
    ) -> Aggregator:
        """An aggregator for ``settings`` (the ``federation`` section), listening on
        loopback unless ``start=False``; ``services``: who may call (default: sites
        1 to 16)."""
        names = services if services is not None else [site(i) for i in range(16)]
        agg = Aggregator(
            self.task,
            FederationConfig.parse(settings),
            self.server(names, secure=secure),
            Signer(DIGEST, self.key),
            Commit(
                ledger if ledger is not None else MemoryLedger(),
                directory=directory,
                key=b"k" * 32 if directory is not None else None,
                policy_digest=DIGEST,
            ),
            validation=self.validation(),
        )
        if start:
            agg.start()
        return agg

    # --- the collaborators' side ----------------------------------------------------------

    def gate(self, *, secure: bool = True) -> ModelGate:
        return ModelGate(self.key.public_key() if secure else None, DIGEST)

    def client(
        self, port: int, name: str, *, secure: bool = True, creds: Credentials | None = None
    ) -> Client:
        target = f"127.0.0.1:{port}"
        if not secure:
            return Client(target, None, server_name=AGGREGATOR, name=name, timeout=20)
        creds = creds or identity(self.authority, name)
        return Client(target, creds, server_name=AGGREGATOR, timeout=20)

    def collaborator(
        self, port: int, index: int, *, secure: bool = True, gate: ModelGate | None = None
    ) -> Collaborator:
        """Site ``index`` (0-based) training on client shard ``index``."""
        name = site(index)
        creds = identity(self.authority, name) if secure else None
        return Collaborator(
            self.task,
            self.data(index),
            lambda: self.client(port, name, secure=secure, creds=creds),
            gate or self.gate(secure=secure),
            patience=5.0,
        )

    def start_sites(
        self,
        agg: Aggregator,
        indices: Sequence[int],
        *,
        secure: bool = True,
        gates: Sequence[ModelGate] | None = None,
    ) -> list[Background]:
        threads = []
        for k, i in enumerate(indices):
            collab = self.collaborator(
                agg.port, i, secure=secure, gate=gates[k] if gates is not None else None
            )
            thread = Background(collab.run, site(i))
            thread.start()
            threads.append(thread)
        return threads

    def run(
        self,
        agg: Aggregator,
        indices: Sequence[int],
        *,
        secure: bool = True,
        gates: Sequence[ModelGate] | None = None,
        joined: int = 0,
    ) -> Params:
        """Run ``agg`` to the end with the honest sites ``indices`` (first waiting
        until ``joined`` participants joined), then stop its server; any collaborator
        failure fails the run."""
        threads = self.start_sites(agg, indices, secure=secure, gates=gates)
        try:
            wait_for(lambda: len(agg.rounds.participants) >= joined, f"{joined} participants")
            params = agg.run()
            for thread in threads:
                thread.outcome()
            return params
        finally:
            agg.rounds.finish()  # collaborators still polling get 'done'
            for thread in threads:
                thread.join(LIMIT)
            agg.server.stop(None)


class RawClient:
    """A collaborator driven by hand: join, ask for work, submit what the test says."""

    def __init__(self, fed: Federation, port: int, name: str) -> None:
        self.name = name
        self.client = fed.client(port, name)
        #: The aggregator's epoch (names its process) from the last ``train`` message.
        self.epoch: str | None = None
        self.done: list[Any] = []

    def join(self) -> dict[str, Any]:
        reply = self.client.unary(msg.JOIN, msg.encode({"kind": "join", "samples": 10}))
        return msg.decode(reply, "welcome")[0]

    def next(self) -> tuple[dict[str, Any], bytes]:
        """Poll until told to train (or done); the header and the signed model."""
        give_up = time.monotonic() + LIMIT
        while time.monotonic() < give_up:
            reply = self.client.download(
                msg.NEXT, msg.encode({"kind": "next", "done": self.done}), 64 << 20
            )
            header, payload = msg.decode(reply)
            if header["kind"] == msg.TRAIN:
                self.epoch = header.get("epoch")
                self.done = [header["round"], header["attempt"]]
                if self.epoch is not None:
                    self.done.insert(0, self.epoch)
            if header["kind"] != msg.WAIT:
                return header, bytes(payload)
        raise AssertionError(f"{self.name}: never told to train")

    def train(self) -> tuple[dict[str, Any], Params, ModelEnvelope]:
        """The next ``train`` message: its header, the global model and its envelope."""
        header, payload = self.next()
        assert header["kind"] == msg.TRAIN, header
        params_bytes, envelope = read_unverified(payload)
        return header, from_bytes(params_bytes)[0], envelope

    def submit(
        self, round: int, attempt: int, *payload: bytes, samples: int = 10, epoch: str | None = None
    ) -> dict[str, Any]:
        """Stream an update for ``round``/``attempt`` (of ``epoch``, by default the
        one of the last ``train`` message)."""
        head: dict[str, Any] = {
            "kind": "update",
            "round": round,
            "attempt": attempt,
            "samples": samples,
            "metrics": {"loss": 1.0},
        }
        if (epoch or self.epoch) is not None:
            head["epoch"] = epoch or self.epoch
        reply = self.client.upload(msg.SUBMIT, msg.stream(head, *payload))
        return msg.decode(reply)[0]

    def submit_held(
        self, agg: Aggregator, header: dict[str, Any], params: Params
    ) -> tuple[Background, threading.Event]:
        """Stream an update for ``header``'s round in a thread, in two halves: returns once
        the aggregator let the call in and read its header, the first half sent; the
        second goes when the returned event is set (the call's outcome in the thread)."""
        payload = to_bytes(params)
        head = {"kind": "update", "round": header["round"], "attempt": header["attempt"],
                "epoch": self.epoch, "samples": 10, "metrics": {"loss": 1.0}}  # fmt: skip
        halfway, release = threading.Event(), threading.Event()

        def slowly() -> Iterator[bytes]:
            yield msg.header_bytes(head)
            yield payload[: len(payload) // 2]
            halfway.set()
            release.wait(30)
            yield payload[len(payload) // 2 :]

        seen = agg.rounds.participants[self.name].last_seen
        upload = Background(lambda: self.client.upload(msg.SUBMIT, slowly()), "upload")
        upload.start()
        assert halfway.wait(20)
        wait_for(lambda: agg.rounds.participants[self.name].last_seen > seen, "the upload")
        return upload, release

    def poll_held(self, agg: Aggregator) -> Background:
        """A long poll (``Next``) in a thread: returns once the aggregator let it in, while
        it waits for a round (its answer is the thread's outcome)."""
        request = msg.encode({"kind": "next", "done": []})
        seen = agg.rounds.participants[self.name].last_seen
        poll = Background(lambda: self.client.download(msg.NEXT, request, 64 << 20), "poll")
        poll.start()
        wait_for(lambda: agg.rounds.participants[self.name].last_seen > seen, "the poll")
        return poll

    def close(self) -> None:
        self.client.close()


@contextlib.contextmanager
def serving(
    agg: Aggregator, *clients: RawClient, joined: Sequence[RawClient] | None = None
) -> Iterator[Background]:
    """``agg``'s round loop running in a thread (yielded) once ``joined`` (by default
    every one of ``clients``) joined; on the way out, however the test ends, its round
    is ended, its server stopped, the loop waited for and every client closed."""
    run = Background(agg.run, "aggregator")
    try:
        for raw in clients if joined is None else joined:
            raw.join()
        run.start()
        yield run
    finally:
        agg.rounds.finish(0)
        agg.server.stop(None)
        if run.ident is not None:
            run.join(30)
        for raw in clients:
            raw.close()


#: The three ways an update is taken in, as a federation's settings: folded while it
#: streams in, whole in its turn, whole and kept for the sorted-sender sum.
UPDATE_PATHS = [
    {"strategy": "fedavg"},
    {"strategy": "median", "aggregation_order": "arrival"},
    {"strategy": "median", "aggregation_order": "canonical"},
]
UPDATE_PATH_NAMES = ["streamed", "in-turn", "canonical"]


def revocable(fed: Federation, port: int, name: str) -> tuple[RawClient, str]:
    """A collaborator with a certificate of its own, and that certificate's serial as
    the SPM's revocation list names it."""
    creds = identity(fed.authority, name)
    raw = RawClient(fed, port, name)
    raw.client = fed.client(port, name, creds=creds)
    return raw, format(x509.load_pem_x509_certificate(creds.cert_pem).serial_number, "x")


def digits_federation(tmp_path_factory: pytest.TempPathFactory, clients: int = 2) -> Federation:
    """A federation on digits split among ``clients`` sites (seed 1)."""
    from secfl.tasks import get_task
    from secfl.tasks._split import split

    report = split("digits", clients, seed=1, out=tmp_path_factory.mktemp("shards"))
    return Federation(get_task("digits"), report)
