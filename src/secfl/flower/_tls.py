"""TLS for the loopback hops inside the TEE (the wrapper to its own SuperLink).

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

__all__ = ["loopback_context"]


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
