"""An exchange (``Server.exchange`` / ``Client.exchange``) over mutual TLS on loopback:
pieces up, an answer and a streamed payload down, on one call; a small request goes
as one message. The peer checks apply as on every call, a refusal before the answer
is the caller's error, and a payload cut after the answer loses only the payload."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from secfl.errors import FlError
from secfl.fl import _messages as msg
from secfl.fl._chunks import chunks
from secfl.fl._envelope import read_unverified
from secfl.fl._tensors import from_bytes, to_bytes
from secfl.fl._transport import (
    CHUNK_SIZE,
    Client,
    Peer,
    PeerPolicy,
    Server,
    TransportError,
    join,
)
from secfl.spm import _sealing as sv
from secfl.tasks._registry import get_task
from secfl.tasks._split import split
from tests.fl import fedkit
from tests.fl.fedkit import Background, Federation, RawClient, site

from .test_transport import NOW, identity

PAYLOAD = os.urandom(3 * CHUNK_SIZE + 77)


@pytest.fixture(scope="module")
def policy_ca() -> sv.Value:
    return fedkit.ca("policy", NOW)


class Calls:
    """What the server's exchange saw: the request's digest and its pieces, per call."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bytes]] = []
        self.cut = threading.Event()  # the next payload breaks after one chunk

    def handler(self, pieces: Iterator[bytes], peer: Peer) -> Iterable[bytes]:
        counted: list[bytes] = []

        def counting() -> Iterator[bytes]:
            for piece in pieces:
                counted.append(piece)
                yield piece

        body = join(counting(), 64 << 20)
        if body.startswith(b"refuse"):
            raise FlError("protocol: refused, as asked")
        self.seen.append((peer.service, len(counted), hashlib.sha256(body).digest()))
        yield b"answer:" + hashlib.sha256(body).digest()
        for i, piece in enumerate(chunks(PAYLOAD, CHUNK_SIZE)):
            if i == 1 and self.cut.is_set():
                self.cut.clear()
                raise FlError("protocol: the payload broke off")
            yield bytes(piece)


@pytest.fixture(scope="module")
def served(policy_ca: sv.Value) -> Iterator[tuple[Server, PeerPolicy, Calls]]:
    peers = PeerPolicy(policy="p", services={"collab-1"})
    calls = Calls()
    srv = Server(identity(policy_ca, "aggregator"), peers)
    srv.exchange("Swap", calls.handler)
    srv.start()
    yield srv, peers, calls
    srv.stop()


def connect(srv: Server, policy_ca: sv.Value, service: str = "collab-1") -> Client:
    creds = identity(policy_ca, service)
    return Client(f"127.0.0.1:{srv.port}", creds, server_name="aggregator", timeout=20)


@pytest.mark.parametrize(
    "request_, pieces",
    [
        (b"small", 1),  # one message: the Whole variant
        ([b"one piece"], 1),
        (os.urandom(2 * CHUNK_SIZE + 5), 3),  # streamed in chunks
        ([b"a", b"b", b"c"], 3),  # several pieces: streamed as they are
    ],
    ids=["bytes", "one-piece", "large", "pieces"],
)
def test_the_answer_and_the_payload_come_back_on_one_call(
    served: tuple[Server, PeerPolicy, Calls],
    policy_ca: sv.Value,
    request_: bytes | list[bytes],
    pieces: int,
) -> None:
    srv, _, calls = served
    whole = request_ if isinstance(request_, bytes) else b"".join(request_)
    with connect(srv, policy_ca) as client:
        answer, payload = client.exchange("Swap", request_, 64 << 20)
    assert answer == b"answer:" + hashlib.sha256(whole).digest()
    assert payload == PAYLOAD
    assert calls.seen[-1] == ("collab-1", pieces, hashlib.sha256(whole).digest())


def test_a_refusal_before_the_answer_is_the_callers_error(
    served: tuple[Server, PeerPolicy, Calls], policy_ca: sv.Value
) -> None:
    srv, _, _ = served
    with connect(srv, policy_ca) as client:
        for request in (b"refuse me", [b"refuse", b" me"]):
            with pytest.raises(
                TransportError, match="INVALID_ARGUMENT: protocol: refused, as asked"
            ):
                client.exchange("Swap", request, 64 << 20)


def test_a_payload_cut_after_the_answer_loses_only_the_payload(
    served: tuple[Server, PeerPolicy, Calls], policy_ca: sv.Value
) -> None:
    srv, _, calls = served
    with connect(srv, policy_ca) as client:
        calls.cut.set()
        answer, payload = client.exchange("Swap", b"hello", 64 << 20)
        assert answer.startswith(b"answer:") and payload is None
        answer, payload = client.exchange("Swap", b"hello", len(PAYLOAD) - 1)  # over the limit
        assert answer.startswith(b"answer:") and payload is None
        assert client.exchange("Swap", b"hello", 64 << 20)[1] == PAYLOAD  # the channel is fine


def test_the_peer_checks_apply_to_both_variants(
    served: tuple[Server, PeerPolicy, Calls], policy_ca: sv.Value
) -> None:
    srv, peers, calls = served
    before = len(calls.seen)
    for request in (b"small", [b"a", b"b"]):
        with (
            connect(srv, policy_ca, "intruder") as client,
            pytest.raises(TransportError, match="PERMISSION_DENIED.*'intruder' may not call"),
        ):
            client.exchange("Swap", request, 64 << 20)
    creds = identity(policy_ca, "collab-1")
    serial = format(x509.load_pem_x509_certificate(creds.cert_pem).serial_number, "x")
    peers.revoked.add(serial)
    try:
        with Client(f"127.0.0.1:{srv.port}", creds, server_name="aggregator") as client:
            for request in (b"small", [b"a", b"b"]):
                with pytest.raises(TransportError, match="PERMISSION_DENIED.*revoked"):
                    client.exchange("Swap", request, 64 << 20)
    finally:
        peers.revoked.discard(serial)
    assert len(calls.seen) == before  # the handler never ran


# --- the aggregator's own exchange: SubmitNext ------------------------------------------


def test_an_accepted_update_brings_the_next_instruction_back_on_the_same_call(
    tmp_path: Path,
) -> None:
    """A real aggregator over mutual TLS: ``SubmitNext`` answers the verdict, then, on
    the same call, the next round (or ``done`` after the last) — not an error that
    leaves the collaborator to ask again with ``Next`` (the aggregator once refused
    its own verdict there, on every update of every round)."""
    fed = Federation(get_task("digits"), split("digits", 2, seed=1, out=tmp_path / "shards"))
    agg = fed.aggregator({"rounds": 2, "min_clients": 1, "train": {"epochs": 1}})
    runner = Background(agg.run, "aggregator")
    runner.start()
    raw = RawClient(fed, agg.port, site(0))
    try:
        raw.join()
        header, params, _ = raw.train()
        kinds = []
        while header["kind"] == msg.TRAIN:
            head = {
                "kind": "update", "round": header["round"], "attempt": header["attempt"],
                "epoch": raw.epoch, "samples": 10, "metrics": {"loss": 1.0},
            }  # fmt: skip
            answer, payload = raw.client.exchange(
                msg.SUBMIT_NEXT, list(msg.stream(head, to_bytes(params))), 64 << 20
            )
            verdict = msg.decode(answer)[0]
            assert verdict == {"kind": "accepted", "round": head["round"], "attempt": 1}
            assert payload is not None, "the call ended without the next instruction"
            header, model = msg.decode(payload)
            if header["kind"] == msg.WAIT:  # (a slow machine: the poll ran out first)
                raw.done = [raw.epoch, head["round"], head["attempt"]]
                header, model = raw.next()
            kinds.append(header["kind"])
            if header["kind"] == msg.TRAIN:
                params = from_bytes(read_unverified(model)[0])[0]
        assert kinds == [msg.TRAIN, msg.DONE]
        runner.outcome()
    finally:
        agg.rounds.finish(timeout=0)
        raw.close()
        agg.server.stop(None)
