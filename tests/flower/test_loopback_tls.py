"""The wrapper's loopback hop to its SuperLink checks the peer's chain and its
service name: a certificate of another service of the same policy CA is refused."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secfl.flower._tls import loopback_context
from secfl.policy._secrets import CaSecret
from secfl.spm import _sealing as sv
from secfl.spm.enroll import make_csr


def _issue(authority: sv.Value, service: str, folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sv.issue_service_certificate(
        authority, x509.load_pem_x509_csr(make_csr(key, service)), policy="p",
        service=service, ttl_seconds=600, now=datetime.now(UTC),
    )  # fmt: skip
    cert_file, key_file = folder / f"{service}.crt", folder / f"{service}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _handshake(server_cert: tuple[Path, Path], client: ssl.SSLContext) -> None:
    """A real TLS handshake on loopback: the server presents ``server_cert``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*server_cert)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"x")
    finally:
        listener.close()
        thread.join(10)


def test_the_loopback_hop_checks_the_superlink_service_name(tmp_path: Path) -> None:
    authority = sv.generate(
        CaSecret(name="flower", kind="x509-ca", common_name="flower CA"), {}, datetime.now(UTC)
    )
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(authority["crt"])
    superlink = _issue(authority, "superlink", tmp_path)
    site = _issue(authority, "site-1", tmp_path)
    context = loopback_context(str(ca_file), str(superlink[0]))
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    _handshake(superlink, context)  # the SuperLink's own certificate: accepted
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(site, context)  # same CA, another service: refused
