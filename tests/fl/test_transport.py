"""gRPC over mutual TLS on loopback: only peers with a certificate from the policy's
CA, not revoked, naming an allowed service, get through; data of any size streams."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secfl.fl._transport import (
    CHUNK_SIZE,
    MESSAGE_LIMIT,
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
PAYLOAD = os.urandom(5 * CHUNK_SIZE + 123)  # well above gRPC's message limit here


def ca(name: str) -> sv.Value:
    return fedkit.ca(name, NOW)


def identity(authority: sv.Value, service: str, *, policy: str = "p", now: datetime = NOW,
             ttl: int = 3600) -> Credentials:  # fmt: skip
    return fedkit.identity(authority, service, policy=policy, now=now, ttl=ttl)


@pytest.fixture(scope="module")
def policy_ca() -> sv.Value:
    return ca("policy")


@pytest.fixture(scope="module")
def server(policy_ca: sv.Value) -> Iterator[tuple[Server, PeerPolicy]]:
    peers = PeerPolicy(policy="p", services={"collab-1", "collab-2"})
    srv = Server(identity(policy_ca, "aggregator"), peers)
    srv.unary("Echo", lambda req, peer: f"{peer.service}:{peer.serial}:".encode() + req)
    srv.upload("Put", lambda it, peer: hashlib.sha256(join(it, 64 << 20)).digest())
    srv.upload("PutSmall", lambda it, peer: hashlib.sha256(join(it, 1000)).digest())
    srv.download(
        "Get",
        lambda req, peer: iter(
            [PAYLOAD[i : i + CHUNK_SIZE] for i in range(0, len(PAYLOAD), CHUNK_SIZE)]
        ),
    )
    srv.start()
    yield srv, peers
    srv.stop()


def connect(srv: Server, creds: Credentials, name: str = "aggregator") -> Client:
    return Client(f"127.0.0.1:{srv.port}", creds, server_name=name, timeout=20)


def test_an_attested_collaborator_is_identified(
    server: tuple[Server, PeerPolicy], policy_ca: sv.Value
) -> None:
    creds = identity(policy_ca, "collab-1")
    serial = format(x509.load_pem_x509_certificate(creds.cert_pem).serial_number, "x")
    with connect(server[0], creds) as client:
        assert client.unary("Echo", b"hi") == f"collab-1:{serial}:hi".encode()


def test_payloads_larger_than_a_message_stream_both_ways(
    server: tuple[Server, PeerPolicy], policy_ca: sv.Value
) -> None:
    assert len(PAYLOAD) > MESSAGE_LIMIT
    with connect(server[0], identity(policy_ca, "collab-2")) as client:
        assert client.upload("Put", PAYLOAD) == hashlib.sha256(PAYLOAD).digest()
        assert client.download("Get", b"", limit=64 << 20) == PAYLOAD
        with pytest.raises(TransportError, match="passes its limit of 10 bytes"):
            client.download("Get", b"", limit=10)
        with pytest.raises(
            TransportError, match="INVALID_ARGUMENT.*passes its limit of 1000 bytes"
        ):
            client.upload("PutSmall", b"x" * 5000)


def test_an_upload_takes_any_iterable_of_pieces(
    server: tuple[Server, PeerPolicy], policy_ca: sv.Value
) -> None:
    # gRPC calls next() on what it streams: a list, not only a generator, must work
    pieces = [PAYLOAD[i : i + CHUNK_SIZE] for i in range(0, len(PAYLOAD), CHUNK_SIZE)]
    with connect(server[0], identity(policy_ca, "collab-1")) as client:
        assert client.upload("Put", pieces) == hashlib.sha256(PAYLOAD).digest()
        assert client.upload("Put", tuple(pieces)) == hashlib.sha256(PAYLOAD).digest()


@pytest.mark.parametrize("case", ["another CA", "self-signed", "expired"])
def test_bad_client_certificates_fail_the_handshake(
    server: tuple[Server, PeerPolicy], policy_ca: sv.Value, case: str
) -> None:
    if case == "another CA":
        creds = identity(ca("rogue"), "collab-1")
        creds = Credentials(creds.key_pem, creds.cert_pem, policy_ca["crt"].encode())
    elif case == "self-signed":
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collab-1")])
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("secfl://p/collab-1")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(1)
                .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
                .add_extension(san, False)
                .sign(key, hashes.SHA256()))  # fmt: skip
        creds = Credentials(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM), policy_ca["crt"].encode())  # fmt: skip
    else:
        creds = identity(policy_ca, "collab-1", now=NOW - timedelta(days=2), ttl=3600)
    with connect(server[0], creds) as client, pytest.raises(TransportError, match="UNAVAILABLE"):
        client.unary("Echo", b"hi")


def test_revoked_and_unlisted_peers_are_refused(
    server: tuple[Server, PeerPolicy], policy_ca: sv.Value
) -> None:
    srv, peers = server
    creds = identity(policy_ca, "collab-1")
    serial = format(x509.load_pem_x509_certificate(creds.cert_pem).serial_number, "x")
    peers.revoked.add(serial)
    try:
        with (
            connect(srv, creds) as client,
            pytest.raises(TransportError, match="PERMISSION_DENIED.*revoked"),
        ):
            client.unary("Echo", b"hi")
    finally:
        peers.revoked.discard(serial)
    peers.revoked.add("service:collab-1")  # the board revoked the service itself
    try:
        with (
            connect(srv, identity(policy_ca, "collab-1")) as client,
            pytest.raises(TransportError, match="PERMISSION_DENIED.*'collab-1' is revoked"),
        ):
            client.unary("Echo", b"hi")
    finally:
        peers.revoked.discard("service:collab-1")
    with (
        connect(srv, identity(policy_ca, "intruder")) as client,
        pytest.raises(
            TransportError, match="PERMISSION_DENIED.*service 'intruder' may not call here"
        ),
    ):
        client.unary("Echo", b"hi")
    with (
        connect(srv, identity(policy_ca, "collab-1", policy="other")) as client,
        pytest.raises(TransportError, match="PERMISSION_DENIED.*policy 'other'"),
    ):
        client.unary("Echo", b"hi")


def test_the_client_checks_the_server(
    server: tuple[Server, PeerPolicy], policy_ca: sv.Value
) -> None:
    rogue_ca = ca("rogue")
    rogue = Server(identity(rogue_ca, "aggregator"), PeerPolicy("p", {"collab-1"}))
    rogue.unary("Echo", lambda req, peer: b"stolen")
    rogue.start()
    try:
        with (
            connect(rogue, identity(policy_ca, "collab-1")) as client,
            pytest.raises(TransportError, match="UNAVAILABLE"),
        ):
            client.unary("Echo", b"secret update")
    finally:
        rogue.stop()
    with (
        connect(server[0], identity(policy_ca, "collab-1"), name="someone-else") as client,
        pytest.raises(TransportError, match="UNAVAILABLE"),
    ):
        client.unary("Echo", b"hi")


def test_peer_policy_parses_only_secfl_service_certificates(policy_ca: sv.Value) -> None:
    peers = PeerPolicy("p", {"collab-1"})
    assert peers.check(identity(policy_ca, "collab-1").cert_pem).service == "collab-1"
    assert isinstance(peers.check(identity(policy_ca, "collab-1").cert_pem), Peer)
    with pytest.raises(TransportError, match="no client certificate"):
        peers.check(None)
    with pytest.raises(TransportError, match="names no secfl service"):
        peers.check(b"not a certificate")


def test_a_rotated_server_certificate_is_presented_from_the_next_handshake(
    policy_ca: sv.Value,
) -> None:
    srv = Server(identity(policy_ca, "aggregator"), PeerPolicy(policy="p", services={"c"}))
    srv.unary("Echo", lambda req, peer: req)
    srv.start()
    try:
        creds = identity(policy_ca, "c")
        with connect(srv, creds) as client:
            assert client.unary("Echo", b"before") == b"before"
        srv.rotate(identity(ca("elsewhere"), "aggregator"))  # no longer under our CA
        with connect(srv, creds) as client, pytest.raises(TransportError, match="UNAVAILABLE"):
            client.unary("Echo", b"x")
        srv.rotate(identity(policy_ca, "aggregator"))  # renewed under our CA again
        with connect(srv, creds) as client:
            assert client.unary("Echo", b"after") == b"after"
    finally:
        srv.stop()


def test_the_other_sides_error_text_stays_on_one_line(policy_ca: sv.Value) -> None:
    """A hostile server's refusal with a newline and a terminal escape in it: the
    TransportError (which the collaborator logs) holds them escaped, on one line."""
    srv = Server(identity(policy_ca, "aggregator"), PeerPolicy(policy="p", services={"collab-1"}))

    def refuse(req: bytes, peer: object) -> bytes:
        from secfl.errors import FlError

        raise FlError("protocol: x\n2026-12-06 CRITICAL secfl: forged \x1b[2J")

    srv.unary("Refuse", refuse)
    srv.start()
    try:
        with (
            connect(srv, identity(policy_ca, "collab-1")) as client,
            pytest.raises(TransportError) as caught,
        ):
            client.unary("Refuse", b"")
    finally:
        srv.stop()
    text = str(caught.value)
    assert "\n" not in text and "\x1b" not in text
    assert text == r"rpc: INVALID_ARGUMENT: protocol: x\n2026-12-06 CRITICAL secfl: forged \x1b[2J"
