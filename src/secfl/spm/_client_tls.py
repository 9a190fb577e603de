"""The SPM's address and the certificate it presents, fetched as a candidate.

An SPM's certificate is self-signed: no CA vouches for it. The client fetches it
without verification (:func:`fetch_certificate`) and trusts it only once the pin or
the SPM's evidence vouches for its key; every request after that runs over TLS that
verifies against exactly that certificate (:mod:`secfl.spm._client_transport`).
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secfl.errors import SpmError

__all__ = ["fetch_certificate", "spm_address"]


def spm_address(url: str) -> tuple[str, int]:
    """The host and port (443 if none) of an SPM's ``https://HOST:PORT`` URL (perhaps
    with a path), or :class:`SpmError` for anything else."""
    try:  # urlsplit and .port raise ValueError ('https://[::1', ':99999', ':abc')
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SpmError(f"spm: '{url}' is not a URL: give https://HOST:PORT") from None
    if parts.scheme != "https" or not parts.hostname:
        raise SpmError(f"spm: '{url}' is not an https:// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SpmError(f"spm: '{url}' has parts an SPM URL has not: give https://HOST:PORT")
    return parts.hostname, port or 443


def fetch_certificate(url: str, timeout: float) -> tuple[str, x509.Certificate]:
    """The certificate the SPM presents: a candidate, trusted only once checked."""
    host, port = spm_address(url)
    # not verified here (the pin is checked next); no TLS key log (SSLKEYLOGFILE)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # as get_server_certificate: the pin is the check
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise SpmError(f"spm: cannot reach {url}: {exc.strerror or exc}") from None
    if not der:
        raise SpmError(f"spm: {url} presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), cert
