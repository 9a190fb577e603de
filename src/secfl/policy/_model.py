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

The bounded building blocks are in :mod:`secfl.policy._fields`, the secret kinds in
:mod:`secfl.policy._secrets`, the cross-reference checks in
:mod:`secfl.policy._references`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from secfl.errors import PolicyError
from secfl.policy import _keys as keys
from secfl.policy import _placeholders as placeholders
from secfl.policy._fields import (
    MAX_CLAIM_INT,
    MAX_FILE_TEXT,
    MAX_ITEMS,
    MAX_MEMBERS,
    MAX_TEXT,
    Name,
    Names,
    Pem,
    StrictModel,
)
from secfl.policy._platforms import Platforms
from secfl.policy._secrets import Secret
from secfl.tee._claims import Kind

__all__ = [
    "CODE_ALL",
    "CODE_FIELDS",
    "MAX_VERSION",
    "MEASUREMENT_FIELDS",
    "PRIMARY_MEASUREMENT",
    "RESERVED_FOLDERS",
    "Board",
    "ClaimValue",
    "Counter",
    "Injection",
    "MeasurementPin",
    "Member",
    "Platforms",
    "Policy",
    "Service",
    "VolumeSpec",
    "code_fields_text",
    "no_code_text",
    "pins_code",
]

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

#: The claim fields that name code, per kind, and their length in hex digits: an
#: identity must pin one of them (one that pins only ``vmpl``, ``isv_svn`` or an empty
#: ``mrsigner`` accepts any code at all), or, for the kinds in :data:`CODE_ALL`, all.
CODE_FIELDS: dict[Kind, dict[str, int]] = {
    "sgx": {"mrenclave": 64, "mrsigner": 64},
    "tdx": {"mrtd": 96, "rtmr1": 96, "rtmr2": 96},
    "snp": {"measurement": 96, "id_key_digest": 96, "author_key_digest": 96},
    "simulated": {"measurement": 96},
}
#: Kinds whose code is named by all of their :data:`CODE_FIELDS` together. A TD's
#: MRTD measures only its virtual firmware; the kernel is in RTMR1 and its command line
#: (the root file system's hash, with dm-verity) in RTMR2. An identity pinning MRTD
#: alone accepted any guest booted on that firmware (found by a review).
CODE_ALL: frozenset[Kind] = frozenset({"tdx"})


#: Code fields whose value of all zeros names no code, and which workloads report it
#: whatever they run: every SEV-SNP guest launched without an ID block (or author key);
#: no SGX signer has it; a TD's RTMR1 and RTMR2 stay zero when its boot extends nothing
#: into them (its kernel, its command line and so the root file system's hash go
#: unmeasured). Pinned, each accepted any such workload (found by reviews).
ZEROS_MEAN: dict[str, str] = {
    "id_key_digest": "launched without that key",
    "author_key_digest": "launched without that key",
    "mrsigner": "launched without that key",
    "rtmr1": "whose boot extended nothing into it",
    "rtmr2": "whose boot extended nothing into it",
}
ZEROS_NAME_NO_CODE: frozenset[str] = frozenset(ZEROS_MEAN)


def pins_code(kind: Kind, identity: dict[str, str | int]) -> bool:
    """Whether ``identity`` (as :meth:`Service.identities` gives it) names code: one of
    :data:`CODE_FIELDS` (all of them for :data:`CODE_ALL`) as hex of the right length,
    not all zeros where :data:`ZEROS_NAME_NO_CODE` says that names nothing."""
    pinned = [
        _is_hex(value := identity.get(name), digits)
        and not (name in ZEROS_NAME_NO_CODE and not str(value).strip("0"))
        for name, digits in CODE_FIELDS[kind].items()
    ]
    return all(pinned) if kind in CODE_ALL else any(pinned)


def no_code_text(kind: Kind, identity: dict[str, str | int], where: str) -> str:
    """Why ``identity`` (at ``where``) does not pin code, for a one-line refusal."""
    for name, digits in CODE_FIELDS[kind].items():
        value = identity.get(name)
        if name in ZEROS_NAME_NO_CODE and _is_hex(value, digits) and not str(value).strip("0"):
            return (
                f"{where}.{name} is all zeros, which every workload {ZEROS_MEAN[name]} "
                f"reports whatever code it runs: pin {code_fields_text(kind)} by a real value"
            )
    return f"{where} pins no code: it accepts any {kind} workload; pin {code_fields_text(kind)}"


def code_fields_text(kind: Kind) -> str:
    """What an identity of ``kind`` must pin to name code, for messages."""
    fields = [f"{k} ({n} hex digits)" for k, n in CODE_FIELDS[kind].items()]
    if kind not in CODE_ALL:
        return " or ".join(fields)
    return ", ".join(fields[:-1]) + " and " + fields[-1]


def _is_hex(value: object, digits: int) -> bool:
    if not isinstance(value, str) or len(value) != digits:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


#: The folders of ``SECFL_FILES`` that the launcher writes itself (the service's
#: identity, its volumes' plaintext): no injected file may go inside them.
RESERVED_FOLDERS = frozenset({".secfl", "volumes"})

#: The largest policy version number (a signed 32-bit integer plus one: plenty).
MAX_VERSION = 2**31


class Member(StrictModel):
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


class Board(StrictModel):
    """Who approves a policy's next version: ``threshold`` of ``members``,
    always including every ``required`` member."""

    members: list[Member] = Field(min_length=1, max_length=MAX_MEMBERS)
    threshold: int = Field(ge=1, le=MAX_MEMBERS)
    required: list[Name] = Field(default_factory=list, max_length=MAX_MEMBERS)


class Injection(StrictModel):
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


class Service(StrictModel):
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
    #: The site's enrolment key (Ed25519 or ECDSA P-256 public key, PEM): set, the SPM
    #: attests a workload as this service only with a signature by the site's private
    #: key over that attestation (:mod:`secfl.spm._site_key`). Services that share a
    #: measurement (every site of a federation runs the same collaborator) need it: the
    #: name a workload enrols under is its host's choice, and without it one site's host
    #: enrols its genuine TEE as another site. Left out of the canonical form while
    #: unset, so that every digest computed before it stands.
    site_key: Pem | None = None

    @model_serializer(mode="wrap")
    def _unset_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.site_key is None:
            data.pop("site_key", None)
        return data

    @field_validator("site_key")
    @classmethod
    def _site_key(cls, value: str | None) -> str | None:
        # re-encoded, as a board member's key: the canonical form depends on the key only
        if value is None:
            return None
        try:
            return keys.public_pem(keys.load_public(value)).decode()
        except PolicyError as exc:
            raise ValueError(str(exc).removeprefix("board public key: ")) from None

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


class VolumeSpec(StrictModel):
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


class Counter(StrictModel):
    name: Name


class Policy(StrictModel):
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
