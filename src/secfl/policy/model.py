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

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from secfl.errors import PolicyError
from secfl.policy import keys, placeholders
from secfl.tee.claims import TCB_ORDER, Kind, TcbStatus

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


def key_path(key: str) -> str:
    """A mapping key as a path segment: ``.KEY``, or ``["/etc/app.conf"]`` when needed."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return f".{key}"
    quoted = json.dumps(key, ensure_ascii=False)
    try:
        quoted.encode()
    except UnicodeError:  # a lone surrogate: escape everything outside ASCII
        quoted = json.dumps(key)
    return f"[{quoted}]"


def _unique(items: list[Any], where: str) -> dict[str, int]:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            raise ValueError(f"{where}[{i}].name: duplicate name '{item.name}'")
        seen[item.name] = i
    return seen


def _distinct(values: list[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise ValueError(f"{where}[{i}]: duplicate {what} '{value}'")
        seen.add(value)


def _check_kind(secrets: dict[str, Any], name: str, kind: str, where: str) -> None:
    """``kind`` may list alternatives separated by ``|``."""
    secret = secrets.get(name)
    if secret is None:
        raise ValueError(f"{where}: unknown secret '{name}'")
    if secret.kind not in kind.split("|"):
        raise ValueError(
            f"{where}: secret '{name}' is {secret.kind}, not {kind.replace('|', ' or ')}"
        )


def _check_text(value: Any, where: str) -> None:
    texts = [(where, value)] if isinstance(value, str) else []
    if isinstance(value, dict):
        for k, v in value.items():
            texts.append((where + key_path(str(k)), k))
            _check_text(v, where + key_path(str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{where}[{i}]")
    for path, text in texts:
        if isinstance(text, str):
            try:
                text.encode()
            except UnicodeError:
                raise ValueError(
                    f"{path.removeprefix('.')}: text that is not valid Unicode"
                ) from None


def _check_finite(value: JsonValue, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, where + key_path(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


def _check_references(p: Policy) -> None:
    if p.version == 1 and p.predecessor:
        raise ValueError("predecessor: must be empty for version 1")
    if p.version > 1 and not p.predecessor:
        raise ValueError(
            f"predecessor: required for version {p.version} (the digest of version {p.version - 1})"
        )
    members = _unique(p.board.members, "board.members")
    secrets = {s.name: s for s in p.secrets}
    _unique(p.secrets, "secrets")
    volumes = _unique(p.volumes, "volumes")
    counters = _unique(p.counters, "counters")
    _unique(p.services, "services")

    if p.board.threshold > len(p.board.members):
        raise ValueError(
            f"board.threshold: {p.board.threshold} exceeds the {len(p.board.members)} members"
        )
    for i, name in enumerate(p.board.required):
        if name not in members:
            raise ValueError(f"board.required[{i}]: '{name}' is not a board member")
    _distinct(p.board.required, "board.required", "member")
    _distinct(list(p.platforms.accept), "platforms.accept", "platform")
    if len(set(p.board.required)) > p.board.threshold:
        raise ValueError("board.required: more required members than the threshold")

    if "simulated" in p.platforms.accept and not p.platforms.simulation_root:
        raise ValueError("platforms.simulation_root: required when 'simulated' is accepted")
    if TCB_ORDER.index(p.platforms.min_tcb_status) >= TCB_ORDER.index("unknown"):
        raise ValueError("platforms.min_tcb_status: use allow_unknown_tcb for 'unknown'")

    _check_kind(secrets, p.identity_ca, "x509-ca", "identity_ca")
    for i, secret in enumerate(p.secrets):
        if secret.kind == "x509":
            _check_kind(secrets, secret.issuer, "x509-ca", f"secrets[{i}].issuer")
            if secret.renew_before_days >= secret.validity_days:
                raise ValueError(
                    f"secrets[{i}].renew_before_days: must be less than validity_days "
                    f"({secret.validity_days})"
                )
    for i, volume in enumerate(p.volumes):
        # the SPM's own aes-256 key, or the data owner's key, imported (32 bytes)
        _check_kind(secrets, volume.key, "aes-256|imported", f"volumes[{i}].key")
        if volume.counter is not None and volume.counter not in counters:
            raise ValueError(f"volumes[{i}].counter: unknown counter '{volume.counter}'")

    for i, service in enumerate(p.services):
        where = f"services[{i}]"
        for kind in service.measurements:
            if kind not in p.platforms.accept:
                raise ValueError(
                    f"{where}.measurements.{kind}: platform '{kind}' is not in platforms.accept"
                )
            for j, entry in enumerate(service.measurements[kind]):
                _check_identity(kind, entry, f"{where}.measurements.{kind}[{j}]")
        for j, name in enumerate(service.volumes):
            if name not in volumes:
                raise ValueError(f"{where}.volumes[{j}]: unknown volume '{name}'")
        _distinct(service.volumes, f"{where}.volumes", "volume")
        for j, name in enumerate(service.counters):
            if name not in counters:
                raise ValueError(f"{where}.counters[{j}]: unknown counter '{name}'")
        _distinct(service.counters, f"{where}.counters", "counter")
        for j, name in enumerate(service.secrets):
            if name not in secrets:
                raise ValueError(f"{where}.secrets[{j}]: unknown secret '{name}'")
        _distinct(service.secrets, f"{where}.secrets", "secret")
        for name in service.inject.env:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(
                    f"{where}.inject.env{key_path(name)}: not a valid environment variable name"
                )
        for path in service.inject.files:
            if (
                not path.startswith("/")
                or "/../" in f"{path}/"
                or "/./" in f"{path}/"
                or "//" in path
                or "\0" in path
            ):
                raise ValueError(
                    f"{where}.inject.files{key_path(path)}: must be an absolute clean path"
                )
        fields = [
            *((f"{where}.inject.args[{j}]", t) for j, t in enumerate(service.inject.args)),
            *((f"{where}.inject.env{key_path(k)}", t) for k, t in service.inject.env.items()),
            *((f"{where}.inject.files{key_path(k)}", t) for k, t in service.inject.files.items()),
        ]
        for path, text in fields:
            try:
                found = list(placeholders.find(text))
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            for ph in found:
                secret = secrets.get(ph.name)
                if secret is None:
                    raise ValueError(f"{path}: placeholder names unknown secret '{ph.name}'")
                allowed = SELECTOR_KINDS.get(ph.selector or "")
                if allowed is not None and secret.kind not in allowed:
                    raise ValueError(
                        f"{path}: selector ':{ph.selector}' does not apply to secret "
                        f"'{ph.name}' ({secret.kind})"
                    )


def _check_identity(kind: Kind, entry: str | dict[str, str | int], where: str) -> None:
    if isinstance(entry, str):
        if not re.fullmatch(r"[0-9a-fA-F]{64,96}", entry):
            raise ValueError(f"{where}: '{entry}' is not a hex measurement")
        return
    if not entry:
        raise ValueError(f"{where}: an identity needs at least one claim field")
    for field in entry:
        if field not in MEASUREMENT_FIELDS[kind]:
            raise ValueError(
                f"{where}{key_path(field)}: '{field}' is not a {kind} claim field "
                f"(one of {', '.join(sorted(MEASUREMENT_FIELDS[kind]))})"
            )
