"""The policy document: typed, validated, every reference resolved.

A policy is YAML that a board agrees on. :class:`Policy` validates it with
pydantic (unknown fields refused) and then checks that every name it uses is
defined: secrets in placeholders, volume keys, certificate issuers, counters,
board members. Errors name the field path (``services[1].inject.env.KEY``).

Validation also normalises what carries no meaning, so that the canonical form
(:mod:`secfl.policy.canonical`) depends on content only: PEM keys and the
simulation root are re-encoded, hex measurements and volume tags lowercased.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from secfl.errors import PolicyError
from secfl.policy import keys, placeholders
from secfl.tee.claims import Kind, TcbStatus

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Annotated[str, Field(pattern=NAME)]
Hex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]*$")]

#: The claim field a bare measurement string stands for, per kind.
PRIMARY_MEASUREMENT: dict[Kind, str] = {
    "sgx": "mrenclave",
    "tdx": "mrtd",
    "snp": "measurement",
    "simulated": "measurement",
}

#: The claim fields an identity mapping may pin, per kind (see secfl.tee.claims.Claims).
MEASUREMENT_FIELDS: dict[Kind, frozenset[str]] = {
    "sgx": frozenset({"mrenclave", "mrsigner", "isv_prod_id", "isv_svn"}),
    "tdx": frozenset(
        {"mrtd", "mrseam", "mrconfigid", "mrowner", "mrownerconfig"}
        | {f"rtmr{i}" for i in range(4)}
    ),
    "snp": frozenset(
        {"measurement", "host_data", "policy", "vmpl", "id_key_digest", "author_key_digest"}
    ),
    "simulated": frozenset({"measurement"}),
}

#: Which secret kinds each placeholder selector applies to (``hex`` and
#: ``base64`` apply to every kind: they encode the secret's raw bytes).
SELECTOR_KINDS: dict[str, frozenset[str]] = {
    "crt": frozenset({"x509", "x509-ca"}),
    "chain": frozenset({"x509", "x509-ca"}),
    "key": frozenset({"x509", "x509-ca", "ed25519", "ecdsa-p256"}),
    "pub": frozenset({"x509", "x509-ca", "ed25519", "ecdsa-p256"}),
}

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Member(_Strict):
    """A board member: a name and a signing key (Ed25519 or ECDSA P-256, PEM)."""

    name: Name
    public_key: str
    #: X25519 or P-256 public key (PEM) that a share of the policy's data key is
    #: sealed to, so the board can recover the policy's secrets on a new SPM.
    recovery_key: str | None = None

    @field_validator("public_key")
    @classmethod
    def _signing_key(cls, value: str) -> str:
        # Stored re-encoded: the same key always has the same text, whatever
        # line endings or YAML block style the author used, so the canonical
        # form (and the digest the board signs) depends only on the key.
        try:
            return keys.public_pem(keys.load_public(value)).decode()
        except PolicyError as exc:
            raise ValueError(str(exc).removeprefix("board public key: ")) from None

    @field_validator("recovery_key")
    @classmethod
    def _recovery_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return keys.public_pem(keys.load_recovery_public(value)).decode()
        except PolicyError as exc:
            raise ValueError(str(exc).removeprefix("recovery public key: ")) from None


class Board(_Strict):
    """Who approves a policy's next version: ``threshold`` of ``members``,
    always including every ``required`` member."""

    members: list[Member] = Field(min_length=1)
    threshold: int = Field(ge=1)
    required: list[Name] = Field(default_factory=list)


class Platforms(_Strict):
    """Which evidence the SPM accepts for this policy's services."""

    accept: list[Kind] = Field(min_length=1)
    min_tcb_status: TcbStatus = "UpToDate"
    #: Accept ``tcb_status: unknown`` (evidence verified without collateral).
    allow_unknown_tcb: bool = False
    allow_debug: bool = False
    #: PEM of the simulation root; required when ``simulated`` is accepted.
    simulation_root: str | None = None

    @field_validator("simulation_root")
    @classmethod
    def _one_certificate(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            certs = x509.load_pem_x509_certificates(value.encode())
        except (ValueError, UnicodeError):
            raise ValueError("not a PEM certificate") from None
        if len(certs) != 1:
            raise ValueError(f"must be one certificate, not {len(certs)}")
        # Re-encoded for the same reason as board keys: a stable canonical form.
        return certs[0].public_bytes(serialization.Encoding.PEM).decode()


class Injection(_Strict):
    """How a service receives secrets: arguments, environment, files (path -> content)."""

    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)


class Service(_Strict):
    """A workload the SPM may attest: its role, accepted measurements and what it gets."""

    name: Name
    role: Literal["aggregator", "collaborator", "any"]
    #: Per kind, accepted identities: a bare hex string (the kind's primary
    #: measurement) or a mapping of claim fields that must all match.
    measurements: dict[Kind, list[str | dict[str, str | int]]] = Field(default_factory=dict)
    volumes: list[Name] = Field(default_factory=list)
    inject: Injection = Field(default_factory=Injection)
    #: Secrets released besides those named by placeholders in ``inject``.
    secrets: list[Name] = Field(default_factory=list)
    #: Counters this service's session may increment.
    counters: list[Name] = Field(default_factory=list)
    #: Lifetime of the certificate issued on attestation (seconds).
    certificate_ttl: int = Field(default=86400, ge=60, le=366 * 86400)

    @field_validator("measurements")
    @classmethod
    def _lowercase(
        cls, value: dict[Kind, list[str | dict[str, str | int]]]
    ) -> dict[Kind, list[str | dict[str, str | int]]]:
        # Hex digests compare case-insensitively; storing them lowercase keeps
        # the canonical form (and the digest) independent of how they were typed.
        return {
            kind: [
                e.lower()
                if isinstance(e, str)
                else {k: v.lower() if isinstance(v, str) else v for k, v in e.items()}
                for e in entries
            ]
            for kind, entries in value.items()
        }

    def identities(self, kind: Kind) -> list[dict[str, str | int]]:
        """The accepted identities for ``kind``, bare strings expanded."""
        out: list[dict[str, str | int]] = []
        for entry in self.measurements.get(kind, []):
            if isinstance(entry, str):
                out.append({PRIMARY_MEASUREMENT[kind]: entry.lower()})
            else:
                out.append({k: v.lower() if isinstance(v, str) else v for k, v in entry.items()})
        return out

    def placeholder_names(self) -> set[str]:
        texts = [*self.inject.args, *self.inject.env.values(), *self.inject.files.values()]
        return {p.name for text in texts for p in placeholders.find(text)}

    def released_secrets(self) -> list[str]:
        """Every secret this service receives, sorted."""
        return sorted(self.placeholder_names() | set(self.secrets))

    def released_parts(self) -> dict[str, set[str | None]]:
        """Per released secret, the selectors it is used with; ``"*"`` for a secret
        listed in ``secrets`` (released whole). Parts never asked for stay in the SPM,
        so ``$$SECFL::ca:crt$$`` releases a CA's certificate, never its key."""
        texts = [*self.inject.args, *self.inject.env.values(), *self.inject.files.values()]
        parts: dict[str, set[str | None]] = {name: {"*"} for name in self.secrets}
        for text in texts:
            for ph in placeholders.find(text):
                parts.setdefault(ph.name, set()).add(ph.selector)
        return parts


class _SecretBase(_Strict):
    name: Name


class AesSecret(_SecretBase):
    kind: Literal["aes-256"]


class RandomSecret(_SecretBase):
    kind: Literal["random"]
    size: int = Field(ge=1, le=65536)


class KeyPairSecret(_SecretBase):
    kind: Literal["ed25519", "ecdsa-p256"]


class CaSecret(_SecretBase):
    kind: Literal["x509-ca"]
    common_name: str = Field(min_length=1, max_length=64)
    validity_days: int = Field(default=3650, ge=1, le=36500)


class CertSecret(_SecretBase):
    kind: Literal["x509"]
    issuer: Name
    common_name: str = Field(min_length=1, max_length=64)
    sans: list[str] = Field(default_factory=list)
    usage: list[Literal["server", "client"]] = Field(
        default_factory=lambda: ["server", "client"], min_length=1
    )
    validity_days: int = Field(default=365, ge=1, le=3650)
    renew_before_days: int = Field(default=30, ge=0)


class ImportedSecret(_SecretBase):
    """A value given by a board member, sealed to the SPM (``secfl policy seal-secret``)."""

    kind: Literal["imported"]
    sealed: str = Field(min_length=1)


Secret = Annotated[
    AesSecret | RandomSecret | KeyPairSecret | CaSecret | CertSecret | ImportedSecret,
    Field(discriminator="kind"),
]


class Volume(_Strict):
    """A shielded volume: its key secret and its expected tag or rollback counter."""

    name: Name
    key: Name
    #: ``code`` volumes count in a workload's measurement (their tags are part of
    #: what ``secfl run`` measures); ``data`` volumes do not, so new data needs no
    #: new measurement.
    kind: Literal["code", "data"] = "data"
    tag: Annotated[str, Field(pattern=r"^[0-9a-fA-F]+$")] | None = None
    counter: Name | None = None

    @field_validator("tag")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _one_anchor(self) -> Volume:
        if (self.tag is None) == (self.counter is None):
            raise ValueError("give exactly one of 'tag' or 'counter'")
        return self


class Counter(_Strict):
    name: Name


class Policy(_Strict):
    """One version of a policy document."""

    name: Name
    version: int = Field(ge=1)
    #: SHA-256 digest (hex) of the previous version's canonical form; empty for version 1.
    predecessor: str = ""
    board: Board
    platforms: Platforms
    #: The x509-ca secret that signs the certificates of attested services.
    identity_ca: Name
    services: list[Service] = Field(min_length=1)
    secrets: list[Secret] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)
    counters: list[Counter] = Field(default_factory=list)
    #: Free-form settings for the FL runtime: JSON values only (no dates, no
    #: NaN), so that the canonical form is plain JSON.
    federation: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("predecessor")
    @classmethod
    def _digest(cls, value: str) -> str:
        if value and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be a SHA-256 digest (64 lowercase hex digits) or empty")
        return value

    @model_validator(mode="after")
    def _references(self) -> Policy:
        from secfl.policy.references import _check_finite, _check_references, _check_text

        _check_references(self)
        _check_finite(self.federation, "federation")
        # The canonical form is UTF-8: refuse text that has none (lone surrogates
        # from a YAML "\ud800" escape) here rather than when it is signed.
        _check_text(self.model_dump(), "")
        return self

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def secret(self, name: str) -> Secret | None:
        return next((s for s in self.secrets if s.name == name), None)

    def volume(self, name: str) -> Volume | None:
        return next((v for v in self.volumes if v.name == name), None)

    def counter_names(self) -> set[str]:
        return {c.name for c in self.counters}
