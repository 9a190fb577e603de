"""A peer with a valid certificate cannot take every thread of the aggregator by
holding calls open without sending: past ``MAX_CALLS_PER_PEER`` calls under way its
next one is refused at once, another peer is still served, and a call that ends gives
its place back. Real gRPC over mutual TLS on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from secfl.fl._transport import (
    MAX_CALLS_PER_PEER,
    SERVICE,
    Client,
    PeerPolicy,
    Server,
    TransportError,
    join,
    pool_size,
)
from secfl.spm import _sealing as sv
from tests.fl import fedkit

from .test_transport import NOW, identity

#: More threads than one peer may hold, fewer than a peer could take without the cap.
WORKERS = MAX_CALLS_PER_PEER + 2


@pytest.fixture
def served() -> Iterator[tuple[Server, sv.Value]]:
    authority = fedkit.ca("policy", NOW)
    srv = Server(
        identity(authority, "aggregator"),
        PeerPolicy(policy="p", services={"collab-1", "collab-2"}),
        workers=WORKERS,
    )
    srv.unary("Echo", lambda req, peer: peer.service.encode())
    srv.upload("Put", lambda it, peer: str(len(join(it, 1 << 20))).encode())
    srv.start()
    yield srv, authority
    srv.stop(None)


def connect(srv: Server, authority: sv.Value, service: str) -> Client:
    creds = identity(authority, service)
    return Client(f"127.0.0.1:{srv.port}", creds, server_name="aggregator", timeout=10)


def test_a_peer_holding_calls_open_cannot_starve_the_others(
    served: tuple[Server, sv.Value],
) -> None:
    srv, authority = served
    release = threading.Event()

    def silent() -> Iterator[bytes]:  # opens the upload, then sends nothing
        release.wait(30)
        yield b"x"

    hog = connect(srv, authority, "collab-1")
    refused: list[str] = []

    def hold() -> None:
        try:
            hog.upload("Put", silent(), timeout=30)
        except TransportError as exc:
            refused.append(str(exc))

    held = [threading.Thread(target=hold, daemon=True) for _ in range(WORKERS)]
    try:
        for thread in held:
            thread.start()
        # the calls past the cap are refused at once; the others hold their threads
        fedkit.wait_for(lambda: len(refused) == WORKERS - MAX_CALLS_PER_PEER, "refusals", 20)
        assert all("RESOURCE_EXHAUSTED: peer: 'collab-1' has 4" in r for r in refused)
        with connect(srv, authority, "collab-2") as other:
            assert other.unary("Echo", b"", timeout=5) == b"collab-2"  # still served
        with pytest.raises(TransportError, match=r"RESOURCE_EXHAUSTED: peer: 'collab-1' has 4"):
            hog.unary("Echo", b"", timeout=5)
    finally:
        release.set()
        for thread in held:
            thread.join(30)
    assert hog.unary("Echo", b"", timeout=5) == b"collab-1"  # the places were given back
    hog.close()


def test_peers_holding_their_share_together_cannot_starve_another() -> None:
    """Five colluding peers each hold their full share of calls open; a sixth is still
    served, by a server with the pool the aggregator has (a pool of 16 threads queued
    the sixth's call behind the twenty held ones until its deadline)."""
    authority = fedkit.ca("policy", NOW)
    services = {f"collab-{k}" for k in range(1, 7)}
    srv = Server(identity(authority, "aggregator"), PeerPolicy(policy="p", services=services))
    entered = threading.Semaphore(0)
    release = threading.Event()

    def put(pieces: Iterator[bytes], _peer: object) -> bytes:
        entered.release()
        return str(len(join(pieces, 1 << 20))).encode()

    srv.unary("Echo", lambda req, peer: peer.service.encode())
    srv.upload("Put", put)
    srv.start()

    def silent() -> Iterator[bytes]:
        release.wait(30)
        yield b"x"

    hogs = [connect(srv, authority, f"collab-{k}") for k in range(1, 6)]
    held = [
        threading.Thread(target=hog.upload, args=("Put", silent()), kwargs={"timeout": 30})
        for hog in hogs
        for _ in range(MAX_CALLS_PER_PEER)
    ]
    try:
        for thread in held:
            thread.start()
        for _ in range(16):  # as many held calls as the old pool had threads
            assert entered.acquire(timeout=20), "the colluders' calls did not start"
        with connect(srv, authority, "collab-6") as honest:
            assert honest.unary("Echo", b"", timeout=5) == b"collab-6"
    finally:
        release.set()
        for thread in held:
            thread.join(30)
        for hog in hogs:
            hog.close()
        srv.stop(None)


@pytest.mark.parametrize("hog", ["collab-1", "not-a-peer"])
def test_calls_opened_without_their_one_message_hold_no_thread_past_the_share(hog: str) -> None:
    """A unary method called as a stream whose message never comes: counted (or refused)
    as it arrives, like any call (gRPC held a thread for each such call before any
    handler ran: 36 of them, by a peer or a certificate of the policy for a service the
    aggregator refuses, starved an honest peer's call)."""
    authority = fedkit.ca("policy", NOW)
    services = {f"collab-{k}" for k in range(1, 7)}
    srv = Server(identity(authority, "aggregator"), PeerPolicy(policy="p", services=services))
    srv.unary("Echo", lambda req, peer: peer.service.encode())
    srv.download("Next", lambda req, peer: [peer.service.encode()])
    srv.start()
    release = threading.Event()

    def silent() -> Iterator[bytes]:
        release.wait(30)
        yield from ()

    held = []
    with connect(srv, authority, hog) as client:
        try:
            for k in range(pool_size(len(services)) + 4):
                method = client._channel.stream_unary(f"/{SERVICE}/{('Echo', 'Next')[k % 2]}")
                held.append(method.future(silent(), timeout=30))
            time.sleep(1)  # the calls are in
            with connect(srv, authority, "collab-6") as honest:
                assert honest.unary("Echo", b"", timeout=5) == b"collab-6"
        finally:
            release.set()
            for call in held:
                call.cancel()
            srv.stop(None)
