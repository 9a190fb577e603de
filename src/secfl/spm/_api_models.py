"""The request and response bodies of the SPM's HTTP API (pydantic models).

Every field a client sends is bounded here (lengths, patterns, ranges), so that
FastAPI refuses an oversized or malformed body before the SPM sees it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from secfl.spm._tx_counters import MAX_COUNTER

__all__ = [
    "HEX",
    "MAX_BODY",
    "NAME",
    "AttestIn",
    "AttestOut",
    "AttestationOut",
    "AuditOut",
    "CounterOut",
    "CounterStateOut",
    "EventIn",
    "EventOut",
    "IncrementIn",
    "NonceOut",
    "PolicyOut",
    "PolicySubmission",
    "Problem",
    "RevocationIn",
    "RevocationStatement",
    "RevocationsOut",
    "SignatureIn",
    "StatusFinding",
    "StatusOut",
    "StatusPolicy",
    "StatusRound",
    "StatusService",
    "VolumeIn",
    "VolumeOut",
]

#: The largest request body the SPM reads (bigger ones are refused unread).
MAX_BODY = 1 << 20
#: A policy, service, counter or volume name in a path.
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
#: Hex digits, whole bytes.
HEX = r"^([0-9a-fA-F]{2})*$"


class Problem(BaseModel):
    """Every refusal: ``{"error": "<check>: <why>"}``."""

    error: str


class AttestationOut(BaseModel):
    evidence: str = Field(description="Evidence JSON (configfs-tsm form, base64url fields)")
    tls_spki_sha256: str
    kind: str
    amd_crls: dict[str, str] = Field(
        default_factory=dict,
        description="SEV-SNP: AMD's CRLs the SPM holds (--amd-crl), base64 DER by "
        "kind-product (vcek-Milan, ...), for the client to check its chain against",
    )


class SignatureIn(BaseModel):
    member: str = Field(max_length=128)
    algorithm: str = Field(max_length=32)
    domain: str = Field(max_length=64)
    digest: str = Field(max_length=64)
    signature: str = Field(max_length=512)
    #: Until when it counts (UTC, YYYY-MM-DDTHH:MM:SSZ), if it says so: signed with it.
    expires: str | None = Field(default=None, max_length=20)


class PolicySubmission(BaseModel):
    document: str = Field(max_length=MAX_BODY, description="The policy, YAML or JSON")
    signatures: list[SignatureIn] = Field(max_length=64)


class PolicyOut(BaseModel):
    name: str
    version: int
    digest: str
    predecessor: str
    document: str | None = None


class NonceOut(BaseModel):
    nonce: str
    expires_at: datetime


class AttestIn(BaseModel):
    nonce: str = Field(pattern=HEX, max_length=128)
    evidence: str = Field(max_length=65536, description="Evidence: hex or configfs-tsm JSON")
    hpke_public_key: str = Field(pattern=HEX, max_length=256)
    csr: str = Field(max_length=16384, description="PEM certificate signing request")
    replaces: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{16,128}$",
        description="The session token this attestation renews: that session ends",
    )
    site_signature: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9+/]{4,160}={0,2}$",
        description="The site key's signature over this enrolment (base64), for a service "
        "whose policy entry names a site_key (secfl.spm._site_key)",
    )


class AttestOut(BaseModel):
    certificate: str
    ca_certificate: str
    sealed_secrets: str = Field(description="HPKE-sealed secret values, base64")
    secrets: list[str]
    session_token: str
    session_expires: datetime
    policy_digest: str
    policy_version: int


class IncrementIn(BaseModel):
    """An increment's optional condition (the value the counter must be at) and the
    round it commits: the ``fl.round`` event's detail, logged in the same transaction
    (its ``counter`` is the value the increment gives)."""

    model_config = ConfigDict(extra="forbid")
    expect: int | None = Field(default=None, ge=0, le=MAX_COUNTER, strict=True)
    round: dict[str, JsonValue] | None = None
    #: A random name for this compare-and-increment (128 bits, hex): sent again after
    #: its answer was lost, it is answered with the value it got, not refused.
    request: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")


class CounterOut(BaseModel):
    counter: str
    value: int


class CounterStateOut(CounterOut):
    #: The name of the compare-and-increment that took the counter to ``value`` (None:
    #: an unnamed one, or none): which of two forked aggregators' checkpoints is committed.
    request: str | None = None


class EventIn(BaseModel):
    event: str = Field(pattern=r"^[a-z][a-z0-9.-]{0,63}$")
    detail: dict[str, JsonValue] = Field(default_factory=dict)


class EventOut(BaseModel):
    seq: int


class VolumeIn(BaseModel):
    version: int = Field(ge=1, le=2**62)
    tag: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    proof: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$",
        description="HMAC under the volume's key (secfl.spm._volumes.record_proof)",
    )


class VolumeOut(BaseModel):
    volume: str
    version: int
    tag: str
    counter: int | None


class AuditOut(BaseModel):
    entries: list[dict[str, Any]]
    head_seq: int
    head_hash: str
    head_signature: str = Field(description="ECDSA P-256 by the SPM's TLS key, base64")


class RevocationStatement(BaseModel):
    """What the board revokes (or readmits): ``kind`` + ``subject``, or a ``serial``.
    A field it does not know is refused, never dropped: members sign what is kept."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["certificate", "service", "measurement", "platform"] | None = None
    subject: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,256}$")
    action: Literal["revoke", "readmit"] | None = None
    serial: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{1,64}$")
    service: str = Field(default="", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$")
    reason: str = Field(default="", max_length=1024)
    #: A readmission's: the digest of the revocation statement it lifts.
    lifts: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    #: When the statement expires (UTC, YYYY-MM-DDTHH:MM:SSZ): not applied after it.
    expires: str | None = Field(default=None, pattern=r"^[0-9T:Z-]{20}$")


class RevocationIn(BaseModel):
    statement: RevocationStatement
    signatures: list[SignatureIn] = Field(max_length=64)


class RevocationsOut(BaseModel):
    sequence: int = Field(
        description="The list's sequence number: the audit log's head (its last entry's "
        "seq) when it was read. A list read from newer data has a higher one; peers never "
        "replace a list with one of a lower number"
    )
    revocations: list[dict[str, Any]]


class StatusPolicy(BaseModel):
    name: str
    version: int
    digest: str
    accepted_at: str | None = None
    approvers: list[str] = Field(description="Board members whose signatures approved it")
    run: int | None = Field(default=None, description="federation.run, if the policy sets it")


class StatusRound(BaseModel):
    """The aggregator's last ``fl.round`` event: the newest committed round."""

    seq: int
    at: str
    service: str | None = None
    round: int | None = None
    counter: int | None = None
    attempt: int | None = None
    participants: int | None = None
    dropped: int | None = None
    excluded: int | None = None
    run: int | None = None
    policy_version: int | None = None
    objective: dict[str, Any] | None = None


class StatusService(BaseModel):
    name: str
    role: str
    live_sessions: int
    attested_at: str | None = None
    attested_version: int | None = None
    kind: str | None = None
    measurement: str | None = None
    refused_at: str | None = None
    refusal: str | None = None


class StatusFinding(BaseModel):
    """A clone-audit finding: who it left out, and whether it asked for a revocation."""

    seq: int
    at: str
    round: int | None = None
    excluded: list[str]
    serials: dict[str, str]
    requested: bool
    service: str | None = None
    state: Literal["pending", "revoked", "readmitted"] | None = None


class StatusOut(BaseModel):
    policy: StatusPolicy
    head_seq: int = Field(description="The audit head this status reflects")
    counters: dict[str, int]
    round: StatusRound | None = None
    services: list[StatusService]
    findings: list[StatusFinding]
    revocations: int = Field(description="Revocations in force")
