"""TLS for the loopback hops inside the TEE (the wrapper to its own SuperLink; a
SuperNode to its relay, :func:`tls_files`).

The SuperLink serves its TLS certificate (issued by the policy's Flower CA, its key
released only to the attested ``superlink`` service); the wrapper holds that very
file. A hop to ``127.0.0.1`` cannot check the name ``127.0.0.1`` against it, so
:func:`loopback_context` checks the certificate's first DNS name instead: every
handshake is made with that name as the server name (SNI and hostname check), the
chain is verified against the policy's Flower CA, and nothing is switched off.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from cryptography import x509

from secfl.errors import FlowerError

__all__ = ["loopback_context", "tls_files"]


class _NamedPeer(ssl.SSLContext):
    """An SSLContext whose handshakes always name ``peer_name``, whatever the URL says."""

    peer_name = ""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_hostname"] = self.peer_name
        return super().wrap_socket(sock, *args, **kwargs)

    def wrap_bio(self, incoming: Any, outgoing: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("server_hostname", None)
        if len(args) >= 2:  # (server_side, server_hostname, ...) given by position
            args = (args[0], self.peer_name, *args[2:])
        else:
            kwargs["server_hostname"] = self.peer_name
        return super().wrap_bio(incoming, outgoing, *args, **kwargs)


def service_name(cert_file: str) -> str:
    """The first DNS name of a certificate (the name its holder is checked by)."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        raise FlowerError(f"flower: {cert_file} is not a service certificate with a name") from None
    if not names:
        raise FlowerError(f"flower: {cert_file} names no service")
    return str(names[0])


def loopback_context(ca_file: str, cert_file: str) -> ssl.SSLContext:
    """A client context for the loopback hop to the SuperLink that serves ``cert_file``:
    its chain checked against ``ca_file`` and its name against the service's."""
    context = _NamedPeer(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname on
    context.load_verify_locations(cafile=ca_file)
    context.peer_name = service_name(cert_file)
    return context


def tls_files(folder: Path, names: list[str], days: int = 30) -> dict[str, Path]:
    """A CA and a server certificate for ``names`` (with its key, 0600), valid ``days``,
    as PEM files in ``folder``: the relay's loopback hop inside a SuperNode's TEE (its
    key never leaves the wrapper's private folder, and the CA's key is never written),
    and plain Flower's TLS for baselines and tests."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from secfl._internal import files
    from secfl._internal.x509util import general_names, private_pem, self_signed_ca

    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = self_signed_ca(ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]),
                        now, days)  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(general_names(names)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    folder.mkdir(parents=True, exist_ok=True)
    out = {"ca": folder / "ca.pem", "crt": folder / "server.pem", "key": folder / "server.key"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.write_private(out["key"], private_pem(key), fsync=False)
    return out
