"""The transport's fast paths keep every check: payloads round-trip at and around chunk
boundaries, the size bounds still refuse, and a cached peer certificate is still
checked for expiry, policy, service and revocation on every call."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509

from secfl.fl import _peers
from secfl.fl._chunks import DEFAULT_CHUNK_SIZE, chunks
from secfl.fl._transport import (
    CHUNK_SIZE,
    MESSAGE_LIMIT,
    SERVICE,
    Client,
    Credentials,
    Peer,
    PeerPolicy,
    Server,
    TransportError,
    join,
)
from secfl.spm import _sealing as sv
from tests.fl import fedkit

NOW = datetime.now(UTC)
BIG = os.urandom(16 * CHUNK_SIZE + 5)  # a 16 MiB update, not a whole number of chunks
SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, len(BIG)]


def serial_of(creds: Credentials) -> str:
    return format(x509.load_pem_x509_certificate(creds.cert_pem).serial_number, "x")


@pytest.fixture(scope="module")
def policy_ca() -> sv.Value:
    return fedkit.ca("policy", NOW)


@pytest.fixture(scope="module")
def server(policy_ca: sv.Value) -> Iterator[tuple[Server, PeerPolicy, list[list[int]]]]:
    peers = PeerPolicy(policy="p", services={"collab-1"})
    received: list[list[int]] = []  # the piece sizes of each upload

    def put(pieces: Iterator[bytes], limit: int) -> bytes:
        sizes: list[int] = []
        received.append(sizes)

        def counted() -> Iterator[bytes]:
            for piece in pieces:
                sizes.append(len(piece))
                yield piece

        return hashlib.sha256(join(counted(), limit)).digest()

    srv = Server(fedkit.identity(policy_ca, "aggregator", policy="p", now=NOW), peers)
    srv.unary("Caller", lambda req, peer: f"{peer.service}:{peer.serial}".encode())
    srv.upload("Put", lambda it, peer: put(it, len(BIG)))
    srv.upload("PutBounded", lambda it, peer: put(it, 3 * CHUNK_SIZE))
    srv.download("Get", lambda req, peer: chunks(BIG[: int(req)]))
    srv.start()
    yield srv, peers, received
    srv.stop()


def connect(srv: Server, creds: Credentials) -> Client:
    return Client(f"127.0.0.1:{srv.port}", creds, server_name="aggregator", timeout=20)


def test_chunks_cut_at_the_chunk_size_and_pass_small_bytes_without_a_copy() -> None:
    assert CHUNK_SIZE == DEFAULT_CHUNK_SIZE and MESSAGE_LIMIT > CHUNK_SIZE
    small = os.urandom(CHUNK_SIZE)
    assert next(chunks(small)) is small  # fits in one piece: no copy
    assert list(chunks(b"")) == [b""]
    for data in (BIG, bytearray(BIG), memoryview(BIG)):
        pieces = list(chunks(data))
        assert [len(p) for p in pieces] == [CHUNK_SIZE] * 16 + [5]
        assert all(type(p) is bytes for p in pieces) and b"".join(pieces) == BIG


@pytest.mark.parametrize("size", SIZES)
def test_payloads_round_trip_at_chunk_boundaries(
    server: tuple[Server, PeerPolicy, list[list[int]]], policy_ca: sv.Value, size: int
) -> None:
    srv, _, received = server
    data = BIG[:size]
    with connect(srv, fedkit.identity(policy_ca, "collab-1", policy="p", now=NOW)) as client:
        assert client.upload("Put", data) == hashlib.sha256(data).digest()
        pieces = received[-1]
        assert sum(pieces) == size and all(p == CHUNK_SIZE for p in pieces[:-1])
        assert 0 < pieces[-1] <= CHUNK_SIZE or size == 0
        assert client.download("Get", str(size).encode(), limit=size) == data


def test_the_size_bounds_still_refuse_an_oversized_stream(
    server: tuple[Server, PeerPolicy, list[list[int]]], policy_ca: sv.Value
) -> None:
    srv = server[0]
    with connect(srv, fedkit.identity(policy_ca, "collab-1", policy="p", now=NOW)) as client:
        exact = BIG[: 3 * CHUNK_SIZE]
        assert client.upload("PutBounded", exact) == hashlib.sha256(exact).digest()
        with pytest.raises(TransportError, match="INVALID_ARGUMENT.*passes its limit"):
            client.upload("PutBounded", BIG[: 3 * CHUNK_SIZE + 1])
        with pytest.raises(TransportError, match="passes its limit"):
            client.download("Get", str(len(BIG)).encode(), limit=len(BIG) - 1)
        # one message above gRPC's per-message limit is refused before any handler,
        # by the client's own limit and, from a sender without one, by the server's
        with pytest.raises(TransportError, match="RESOURCE_EXHAUSTED"):
            client.upload("Put", [b"x" * (MESSAGE_LIMIT + 1)])
    creds = fedkit.identity(policy_ca, "collab-1", policy="p", now=NOW)
    tls = grpc.ssl_channel_credentials(creds.ca_pem, creds.key_pem, creds.cert_pem)
    options = [
        ("grpc.ssl_target_name_override", "aggregator"),
        ("grpc.max_send_message_length", -1),
    ]
    with grpc.secure_channel(f"127.0.0.1:{srv.port}", tls, options=options) as channel:
        put: grpc.StreamUnaryMultiCallable[bytes, bytes]
        put = channel.stream_unary(f"/{SERVICE}/Put")
        with pytest.raises(grpc.RpcError) as refused:
            put(iter([b"x" * (MESSAGE_LIMIT + 1)]), timeout=20)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_cached_certificate_gives_the_same_peer_and_is_parsed_once(
    policy_ca: sv.Value, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[bytes] = []
    real = _peers._read

    def counted(pem: bytes) -> _peers._Certificate:
        reads.append(pem)
        return real(pem)

    monkeypatch.setattr(_peers, "_read", counted)
    peers = PeerPolicy("p", {"collab-1", "collab-2"})
    one = fedkit.identity(policy_ca, "collab-1", policy="p", now=NOW)
    first = peers.check(one.cert_pem)
    assert first == peers.check(one.cert_pem) == Peer("p", "collab-1", serial_of(one))
    assert len(reads) == 1
    two = fedkit.identity(policy_ca, "collab-2", policy="p", now=NOW)
    assert peers.check(two.cert_pem).service == "collab-2"  # another certificate: its own entry
    assert len(reads) == 2 and len(peers.parsed) == 2
    for _ in range(2):  # an unreadable certificate is refused each time, never cached
        with pytest.raises(TransportError, match="names no secfl service"):
            peers.check(b"not a certificate")
    assert len(peers.parsed) == 2


def test_every_check_still_runs_after_a_certificate_is_cached(policy_ca: sv.Value) -> None:
    peers = PeerPolicy("p", {"collab-1"})
    creds = fedkit.identity(policy_ca, "collab-1", policy="p", now=NOW, ttl=3600)
    pem, serial = creds.cert_pem, serial_of(creds)
    assert peers.check(pem).serial == serial  # now cached
    peers.revoked.add(serial)
    with pytest.raises(TransportError, match=f"certificate {serial} of 'collab-1' is revoked"):
        peers.check(pem)
    peers.revoked = {"service:collab-1"}  # replaced, as the aggregator refreshes it
    with pytest.raises(TransportError, match="'collab-1' is revoked by the board"):
        peers.check(pem)
    peers.revoked = set()
    assert peers.check(pem).serial == serial
    with pytest.raises(TransportError, match="expired at .*: attest again"):
        peers.check(pem, now=NOW + timedelta(hours=2))
    peers.services.discard("collab-1")
    with pytest.raises(TransportError, match="service 'collab-1' may not call here"):
        peers.check(pem)
    peers.services.add("collab-1")
    peers.policy = "q"
    with pytest.raises(TransportError, match="policy 'p', not 'q'"):
        peers.check(pem)
    other = fedkit.identity(policy_ca, "intruder", policy="p", now=NOW)
    peers.policy = "p"
    with pytest.raises(TransportError, match="service 'intruder' may not call here"):
        peers.check(other.cert_pem)


def test_the_cache_is_bounded() -> None:
    cache = _peers._Parsed(size=2)
    authority = fedkit.ca("small", NOW)
    certs = [fedkit.identity(authority, f"c{i}", policy="p", now=NOW).cert_pem for i in range(3)]
    for pem in certs:
        cache(pem)
    assert len(cache) == 2
    assert cache(certs[0]).service == "c0"  # evicted, parsed again
    assert len(cache) == 2


def test_a_connection_whose_certificate_is_revoked_is_refused_on_its_next_call(
    server: tuple[Server, PeerPolicy, list[list[int]]], policy_ca: sv.Value
) -> None:
    srv, peers, _ = server
    creds = fedkit.identity(policy_ca, "collab-1", policy="p", now=NOW)
    serial = serial_of(creds)
    with connect(srv, creds) as client:
        assert client.unary("Caller", b"") == f"collab-1:{serial}".encode()
        assert client.unary("Caller", b"") == f"collab-1:{serial}".encode()  # from the cache
        peers.revoked.add(serial)
        try:
            with pytest.raises(TransportError, match="PERMISSION_DENIED.*revoked"):
                client.unary("Caller", b"")  # the same connection, the same certificate
        finally:
            peers.revoked.discard(serial)
        assert client.unary("Caller", b"") == f"collab-1:{serial}".encode()
