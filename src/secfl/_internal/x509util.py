"""Certificate helpers shared by the Intel, AMD and simulated verifiers."""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from secfl._internal import der
from secfl._internal.values import one_line
from secfl.errors import VerificationError


def session_name(serial: int, service: str) -> str:
    """The DNS name only the certificate of serial ``serial`` (hex, lowercase) for
    ``service`` carries. A peer that learns which serial to expect connects to this
    name, so TLS checks at every handshake, reconnections included, that the far end
    holds that very certificate and no other of the same service: see
    :mod:`secfl.fl._pin`."""
    return f"s{serial:x}.{service}"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, as lowercase hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_der(data: bytes, what: str) -> x509.Certificate:
    """Load one DER certificate; AMD's serial-number-0 warning is expected and muted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise VerificationError(f"{what}: not a DER certificate ({exc})") from None


def load_pem_chain(data: bytes, what: str) -> list[x509.Certificate]:
    """Load every certificate of a PEM bundle, in order; at least one is required."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise VerificationError(f"{what}: not a PEM certificate chain ({exc})") from None
    if not certs:
        raise VerificationError(f"{what}: no certificate found")
    return certs


def load_any(data: bytes, what: str) -> list[x509.Certificate]:
    """Load PEM (one or more) or a single DER certificate."""
    if b"-----BEGIN" in data:
        return load_pem_chain(data, what)
    return [load_der(data, what)]


def common_name(cert: x509.Certificate) -> str:
    """The subject's CN for messages; never fails (cryptography parses names lazily).
    On one line and bounded (:func:`~secfl._internal.values.one_line`): whoever made the
    certificate chose it, and refusals quote it."""
    return _name_of(cert, "subject")


def issuer_common_name(cert: x509.Certificate) -> str:
    """The issuer's CN, as :func:`common_name` gives the subject's."""
    return _name_of(cert, "issuer")


def _name_of(cert: x509.Certificate, what: str) -> str:
    try:  # the name is parsed here, when first read: a malformed one raises ValueError
        name = cert.subject if what == "subject" else cert.issuer
        names = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return one_line(str(names[0].value) if names else name.rfc4514_string())
    except ValueError:
        return f"<malformed {what}>"


def check_validity(cert: x509.Certificate, at: datetime, what: str) -> None:
    """Refuse a certificate outside its validity window at time ``at``."""
    try:
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    except ValueError as exc:
        raise VerificationError(f"chain: {what} has a malformed validity ({exc})") from None
    if at < not_before:
        raise VerificationError(
            f"expired: {what} '{common_name(cert)}' is not valid before "
            f"{not_before.isoformat()} (verification time {at.isoformat()})"
        )
    if at > not_after:
        raise VerificationError(
            f"expired: {what} '{common_name(cert)}' expired on "
            f"{not_after.isoformat()} (verification time {at.isoformat()})"
        )


def check_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """Refuse unless ``issuer`` signed ``cert`` (names and signature; ECDSA or RSA-PSS).

    Also refuses a signature BIT STRING with unused bits, which ``cryptography``
    tolerates: otherwise one certificate would have several accepted encodings.
    """
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    try:
        der.certificate_signature(cert_der, "certificate")
    except VerificationError as exc:
        raise VerificationError(f"chain: {what} '{common_name(cert)}': {exc}") from None
    key = hashlib.sha256(cert_der + issuer.public_bytes(serialization.Encoding.DER)).digest()
    if key in _ISSUED:
        return
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        raise VerificationError(
            f"chain: signature of {what} '{common_name(cert)}' does not verify under "
            f"'{common_name(issuer)}'"
        ) from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise VerificationError(
            f"chain: {what} '{common_name(cert)}' is not issued by '{common_name(issuer)}' ({exc})"
        ) from None
    _remember(key)


#: Pairs (certificate, issuer) whose signature verified, by SHA-256 of both DER
#: encodings. A signature's validity depends only on those bytes, so verifiers
#: that see the same chain again (a PCK chain, an ASK, a simulated platform
#: certificate) skip the public-key operation; dates are still checked every time.
_ISSUED: dict[bytes, None] = {}
_ISSUED_MAX = 4096
_ISSUED_LOCK = threading.Lock()


def _remember(key: bytes) -> None:
    with _ISSUED_LOCK:
        if len(_ISSUED) >= _ISSUED_MAX:
            _ISSUED.pop(next(iter(_ISSUED)))
        _ISSUED[key] = None


def check_chain(
    chain: Sequence[x509.Certificate],
    *,
    pinned_roots: Sequence[str],
    at: datetime,
    what: str,
) -> x509.Certificate:
    """Verify ``chain`` (leaf first, root last) up to a pinned, self-signed root.

    Returns the root. Every certificate must be valid at ``at`` and signed by the
    next one; the root must sign itself and its fingerprint must be pinned.
    """
    if not chain:
        raise VerificationError(f"chain: {what} is empty")
    root = chain[-1]
    if fingerprint(root) not in pinned_roots:
        raise VerificationError(
            f"chain: root '{common_name(root)}' of {what} is not a pinned vendor root "
            f"(sha256 {fingerprint(root)})"
        )
    check_issued_by(root, root, f"{what} root")
    for i, cert in enumerate(chain):
        check_validity(cert, at, f"{what} certificate {i}")
        if i + 1 < len(chain):
            check_issued_by(cert, chain[i + 1], f"{what} certificate {i}")
    return root


def force_parse(cert: x509.Certificate, what: str) -> None:
    """Parse every lazily decoded part now, so a malformed field fails here, by name."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ = (cert.subject, cert.issuer, cert.extensions, cert.public_key())
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
            _ = cert.signature_hash_algorithm
    except Exception as exc:
        raise VerificationError(
            f"chain: {what} is malformed ({type(exc).__name__}: {exc})"
        ) from None


def private_pem(key: PrivateKeyTypes) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (it stays inside the TEE or a 0600 file)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def general_names(names: list[str]) -> list[x509.GeneralName]:
    """Subject alternative names: an IP address where the text is one, else a DNS name."""
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def self_signed_builder(
    key: ec.EllipticCurvePrivateKey, subject: x509.Name, not_before: datetime, days: float
) -> x509.CertificateBuilder:
    """The start of every self-signed certificate: subject = issuer, a random serial."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=days))
    )


def self_signed_ca(
    key: ec.EllipticCurvePrivateKey, subject: x509.Name, not_before: datetime, days: int
) -> x509.Certificate:
    """A self-signed CA certificate that may issue end-entity certificates only."""
    return (
        self_signed_builder(key, subject, not_before, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
