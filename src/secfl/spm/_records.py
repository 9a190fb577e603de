"""The SPM store's records (frozen dataclasses) and the value conversions they go through.

Every ``datetime`` here is timezone-aware UTC; the database keeps integer microseconds
since the epoch (:func:`to_us`, :func:`from_us`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from secfl.errors import SpmError

__all__ = [
    "REVOCATION_KINDS",
    "CertificateRecord",
    "PolicyRecord",
    "RevocationRecord",
    "SecretRecord",
    "SessionRecord",
    "from_us",
    "normalise_serial",
    "to_us",
]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PolicyRecord:
    """One accepted version of a policy; ``document`` and ``signatures`` are JSON text."""

    name: str
    version: int
    digest: str
    predecessor: str
    document: str
    signatures: str
    created_at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class SecretRecord:
    """A secret's value, encrypted by the caller (``ciphertext``), and what it was made from."""

    policy: str
    name: str
    kind: str
    definition_digest: str
    ciphertext: bytes
    created_at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class SessionRecord:
    """A session of an attested service; the token itself is never stored, only its SHA-256."""

    token_sha256: bytes
    policy: str
    service: str
    policy_version: int
    expires_at: datetime
    #: The serial of the certificate issued with the session ("" for none).
    serial: str = ""
    #: What the workload was attested as: canonical JSON of
    #: ``{"kind", "measurements", "platform"}`` (see secfl.spm._attestation).
    identity: str = "{}"


@dataclass(frozen=True)
class CertificateRecord:
    """A certificate the policy's CA issued; ``serial`` is lowercase hex without leading zeros."""

    policy: str
    serial: str
    service: str
    fingerprint: str
    not_after: datetime


#: What a revocation can name. ``certificate``: one certificate (its serial) and the
#: sessions attested with it; ``service``: a service of the policy, until the board
#: readmits it; ``measurement``: code (a measurement) for every service;
#: ``platform``: a machine (the attested chip or platform ID).
REVOCATION_KINDS = ("certificate", "service", "measurement", "platform")


@dataclass(frozen=True)
class RevocationRecord:
    policy: str
    kind: str
    subject: str
    service: str
    reason: str
    at: datetime

    @property
    def serial(self) -> str:
        """The revoked certificate's serial ("" unless ``kind`` is certificate)."""
        return self.subject if self.kind == "certificate" else ""


def to_us(value: datetime, what: str) -> int:
    """An aware datetime as integer microseconds since the epoch."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise SpmError(f"store: {what} must be a timezone-aware datetime")
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """Integer microseconds since the epoch as an aware UTC datetime."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def normalise_serial(serial: str | int) -> str:
    """A certificate serial as lowercase hex without ``0x`` or leading zeros."""
    if isinstance(serial, int):
        value = serial
    else:
        text = serial.strip().lower().removeprefix("0x").replace(":", "")
        try:
            value = int(text, 16)
        except ValueError:
            raise SpmError(f"store: certificate serial '{serial}' is not hex") from None
    if value < 0:
        raise SpmError("store: a certificate serial cannot be negative")
    return format(value, "x")
