"""The SPM's own TLS identity, and the measurement of its code.

The TLS key is generated inside the SPM's TEE on first start and kept sealed
under the master key, so the key (and the pin clients keep, the SHA-256 of its
SubjectPublicKeyInfo) survives restarts. The certificate is self-signed and made
anew at each start for the names the SPM listens on: clients do not trust it
through a CA but through attestation, which binds the key's digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secfl._internal.x509util import general_names, private_pem, self_signed_builder
from secfl.spm._report_data import spki_sha256

__all__ = [
    "IDENTITY_AAD",
    "IDENTITY_META",
    "SpmIdentity",
    "code_measurement",
    "new_key",
    "self_signed",
]

IDENTITY_META = "identity_key"
IDENTITY_AAD = b"secfl/spm-identity/v1"


@dataclass(frozen=True)
class SpmIdentity:
    """The SPM's TLS key and its current self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def spki_sha256(self) -> str:
        return spki_sha256(self.key.public_key())

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return private_pem(self.key)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key for the SPM's TLS identity."""
    return ec.generate_private_key(ec.SECP256R1())


def self_signed(key: ec.EllipticCurvePrivateKey, names: list[str]) -> x509.Certificate:
    """A certificate for ``names`` (DNS names or IP addresses), plus localhost."""
    sans = general_names(list(dict.fromkeys([*names, "localhost", "127.0.0.1"])))
    start = datetime.now(UTC) - timedelta(minutes=5)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secfl SPM")])
    return (
        self_signed_builder(key, subject, start, 365)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def code_measurement(command: str = "secfl spm serve") -> str:
    """The simulated TEE's measurement of this SPM: ``secfl measure`` of the
    installed ``secfl`` package and the command. Hardware measures itself."""
    from secfl.tee._measure import measure

    package = Path(__file__).resolve().parents[1]
    return measure([package], command, exclude=("__pycache__",))
