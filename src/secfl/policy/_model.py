"""The policy document: typed, validated, every reference resolved.

A policy is YAML that a board agrees on. :class:`Policy` validates it with
pydantic (unknown fields refused) and then checks that every name it uses is
defined: secrets in placeholders, volume keys, certificate issuers, counters,
board members. Errors name the field path (``services[1].inject.env.KEY``).

Validation also normalises what carries no meaning, so that the canonical form
(:mod:`secfl.policy._canonical`) depends on content only: PEM keys and the
simulation root are re-encoded, hex measurements and volume tags lowercased.

Policies come from anyone who can reach the SPM, so every number, text and list
is bounded (a 10**400 or a megabyte of text is refused here, not deep inside a
consumer); the limits are far above what any real policy needs.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from secfl.errors import PolicyError
from secfl.policy import _keys as keys
from secfl.policy import _placeholders as placeholders
from secfl.tee._claims import Kind, TcbStatus

__all__ = [
    "MAX_CLAIM_INT",
    "MAX_FILE_TEXT",
    "MAX_ITEMS",
    "MAX_MEMBERS",
    "MAX_PEM",
    "MAX_TEXT",
    "MAX_VERSION",
    "MEASUREMENT_FIELDS",
    "NAME",
    "PRIMARY_MEASUREMENT",
    "PUBLIC_SELECTORS",
    "RAW_KINDS",
    "RESERVED_FOLDERS",
    "SELECTOR_KINDS",
    "AesSecret",
    "Board",
    "CaSecret",
    "CertSecret",
    "ClaimValue",
    "Counter",
    "Hex",
    "ImportedSecret",
    "Injection",
    "KeyPairSecret",
    "MeasurementPin",
    "Member",
    "Name",
    "Names",
    "Pem",
    "Platforms",
    "Policy",
    "RandomSecret",
    "Secret",
    "Service",
    "VolumeSpec",
]

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Annotated[str, Field(pattern=NAME, max_length=128)]
Hex = Annotated[str, Field(pattern=r"^[0-9a-fA-F]*$", max_length=256)]

#: Bounds of the schema: lists of names, board members, PEM text, injected text.
MAX_ITEMS = 256
MAX_MEMBERS = 64
MAX_PEM = 16384
MAX_TEXT = 65536
#: Injected files may hold whole configuration files.
MAX_FILE_TEXT = 262144
#: A claim field's integer value (SVNs, SNP policy bits): an unsigned 64-bit number.
MAX_CLAIM_INT = 2**64 - 1

Names = Annotated[list[Name], Field(max_length=MAX_ITEMS)]
Pem = Annotated[str, Field(max_length=MAX_PEM)]
ClaimValue = (
    Annotated[str, Field(max_length=256)]
    | Annotated[int, Field(strict=True, ge=0, le=MAX_CLAIM_INT)]
)
MeasurementPin = (
    Annotated[str, Field(max_length=256)]
    | Annotated[dict[Annotated[str, Field(max_length=64)], ClaimValue], Field(max_length=32)]
)

#: The claim field a bare measurement string stands for, per kind.
PRIMARY_MEASUREMENT: dict[Kind, str] = {
    "sgx": "mrenclave",
    "tdx": "mrtd",
    "snp": "measurement",
    "simulated": "measurement",
}

#: The claim fields an identity mapping may pin, per kind (see secfl.tee._claims.Claims).
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

#: Secret kinds whose value is raw bytes (rendered as hex, base64 or text).
RAW_KINDS = frozenset({"aes-256", "random", "imported"})
_X509 = frozenset({"x509", "x509-ca"})
_KEYED = _X509 | {"ed25519", "ecdsa-p256"}

#: Which secret kinds each placeholder selector applies to: exactly those for
#: which :func:`secfl.spm._sealing.render` gives text (``hex`` and ``base64``
#: encode raw bytes, which only the raw kinds have). A bare placeholder applies
#: to every kind.
SELECTOR_KINDS: dict[str, frozenset[str]] = {
    "crt": _X509,
    "chain": _X509,
    "key": _KEYED,
    "pub": _KEYED,
    "hex": RAW_KINDS,
    "base64": RAW_KINDS,
}

#: Per kind, the selectors (``None``: a bare placeholder) that render public text:
#: certificates and public keys. Anything else renders secret material, which
#: may never go on a command line (``inject.args``: every local user sees it in
#: ``ps``); there, a public part must also be named explicitly (``:crt``,
#: ``:chain``, ``:pub``), as the launcher checks without knowing the kinds.
PUBLIC_SELECTORS: dict[str, frozenset[str | None]] = {
    "x509": frozenset({None, "crt", "chain", "pub"}),
    "x509-ca": frozenset({None, "crt", "chain", "pub"}),
    "ed25519": frozenset({"pub"}),
    "ecdsa-p256": frozenset({"pub"}),
}

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: The folders of ``SECFL_FILES`` that the launcher writes itself (the service's
#: identity, its volumes' plaintext): no injected file may go inside them.
RESERVED_FOLDERS = frozenset({".secfl", "volumes"})

#: The largest policy version number (a signed 32-bit integer plus one: plenty).
MAX_VERSION = 2**31


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Member(_Strict):
    """A board member: a name and a signing key (Ed25519 or ECDSA P-256, PEM)."""

    name: Name
    public_key: Pem
    #: X25519 or P-256 public key (PEM) that a share of the policy's data key is
    #: sealed to, so the board can recover the policy's secrets on a new SPM.
    recovery_key: Pem | None = None

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

    members: list[Member] = Field(min_length=1, max_length=MAX_MEMBERS)
    threshold: int = Field(ge=1, le=MAX_MEMBERS)
    required: list[Name] = Field(default_factory=list, max_length=MAX_MEMBERS)


class Platforms(_Strict):
    """Which evidence the SPM accepts for this policy's services."""

    accept: list[Kind] = Field(min_length=1, max_length=len(PRIMARY_MEASUREMENT))
    min_tcb_status: TcbStatus = "UpToDate"
    #: Accept ``tcb_status: unknown`` (evidence verified without collateral).
    allow_unknown_tcb: bool = False
    allow_debug: bool = False
    #: PEM of the simulation root; required when ``simulated`` is accepted.
    simulation_root: Pem | None = None

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

    args: list[Annotated[str, Field(max_length=MAX_TEXT)]] = Field(
        default_factory=list, max_length=MAX_ITEMS
    )
    env: dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=MAX_TEXT)]] = (
        Field(default_factory=dict, max_length=MAX_ITEMS)
    )
    files: dict[
        Annotated[str, Field(max_length=4096)], Annotated[str, Field(max_length=MAX_FILE_TEXT)]
    ] = Field(default_factory=dict, max_length=MAX_ITEMS)


class Service(_Strict):
    """A workload the SPM may attest: its role, accepted measurements and what it gets."""

    name: Name
    role: Literal["aggregator", "collaborator", "any"]
    #: Per kind, accepted identities: a bare hex string (the kind's primary
    #: measurement) or a mapping of claim fields that must all match.
    measurements: dict[Kind, Annotated[list[MeasurementPin], Field(max_length=MAX_ITEMS)]] = Field(
        default_factory=dict
    )
    volumes: Names = Field(default_factory=list)
    inject: Injection = Field(default_factory=Injection)
    #: Secrets released besides those named by placeholders in ``inject``.
    secrets: Names = Field(default_factory=list)
    #: Counters this service's session may increment.
    counters: Names = Field(default_factory=list)
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


_CertUsage = Literal["server", "client"]
_CERT_USAGES: tuple[_CertUsage, ...] = ("server", "client")


class CertSecret(_SecretBase):
    kind: Literal["x509"]
    issuer: Name
    common_name: str = Field(min_length=1, max_length=64)
    sans: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list, max_length=MAX_ITEMS
    )
    usage: list[_CertUsage] = Field(default_factory=lambda: list(_CERT_USAGES), min_length=1)
    validity_days: int = Field(default=365, ge=1, le=3650)
    renew_before_days: int = Field(default=30, ge=0, le=3650)


class ImportedSecret(_SecretBase):
    """A value given by a board member, sealed to the SPM (``secfl policy seal-secret``)."""

    kind: Literal["imported"]
    sealed: str = Field(min_length=1, max_length=1 << 17)


Secret = Annotated[
    AesSecret | RandomSecret | KeyPairSecret | CaSecret | CertSecret | ImportedSecret,
    Field(discriminator="kind"),
]


class VolumeSpec(_Strict):
    """A shielded volume: its key secret and its expected tag or rollback counter."""

    name: Name
    key: Name
    #: ``code`` volumes count in a workload's measurement (their tags are part of
    #: what ``secfl run`` measures); ``data`` volumes do not, so new data needs no
    #: new measurement.
    kind: Literal["code", "data"] = "data"
    tag: Annotated[str, Field(pattern=r"^[0-9a-fA-F]+$", max_length=128)] | None = None
    counter: Name | None = None

    @field_validator("tag")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _one_anchor(self) -> VolumeSpec:
        if (self.tag is None) == (self.counter is None):
            raise ValueError("give exactly one of 'tag' or 'counter'")
        return self


class Counter(_Strict):
    name: Name


class Policy(_Strict):
    """One version of a policy document."""

    name: Name
    version: int = Field(ge=1, le=MAX_VERSION)
    #: SHA-256 digest (hex) of the previous version's canonical form; empty for version 1.
    predecessor: str = Field(default="", max_length=64)
    board: Board
    platforms: Platforms
    #: The x509-ca secret that signs the certificates of attested services.
    identity_ca: Name
    services: list[Service] = Field(min_length=1, max_length=MAX_ITEMS)
    secrets: list[Secret] = Field(default_factory=list, max_length=1024)
    volumes: list[VolumeSpec] = Field(default_factory=list, max_length=MAX_ITEMS)
    counters: list[Counter] = Field(default_factory=list, max_length=MAX_ITEMS)
    #: Free-form settings for the FL runtime: JSON values only (no dates, no
    #: NaN), so that the canonical form is plain JSON; integers fit in 64 bits,
    #: texts and keys are bounded (see ``references._check_json``).
    federation: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("predecessor")
    @classmethod
    def _digest(cls, value: str) -> str:
        if value and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be a SHA-256 digest (64 lowercase hex digits) or empty")
        return value

    @model_validator(mode="after")
    def _references(self) -> Policy:
        from secfl.policy._references import _check_json, _check_references, _check_text

        _check_json(self.federation, "federation")
        _check_references(self)
        # The canonical form is UTF-8: refuse text that has none (lone surrogates
        # from a YAML "\ud800" escape) here rather than when it is signed.
        _check_text(self.model_dump(), "")
        return self

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def service_list(self, limit: int = 20) -> str:
        """The service names for a message ("has no service 'x' (its services: ...)"),
        at most ``limit`` of them."""
        names = [s.name for s in self.services]
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return ", ".join(names[:limit]) + more

    def secret(self, name: str) -> Secret | None:
        return next((s for s in self.secrets if s.name == name), None)

    def volume(self, name: str) -> VolumeSpec | None:
        return next((v for v in self.volumes if v.name == name), None)

    def counter_names(self) -> set[str]:
        return {c.name for c in self.counters}
