"""Detached board signatures over a digest, and the board's approval rule.

A signature is over a *domain-separated statement*, never over raw data:

    message = domain + "\\n" + digest_hex        e.g. b"secfl/policy/v1\\n3f2a..."

The domain says what the digest is of (a policy version, a revocation...), so a
signature made for one purpose can never be replayed for another, even when the
two digests collide in value. Ed25519 signs the message directly; ECDSA P-256
signs its SHA-256 (DER-encoded signatures).

A signature may say until when it counts (``expires``, UTC): it is then signed too,

    message = domain + "\n" + digest_hex + "\nexpires " + expires

and :func:`check_approval` given the time refuses it after that. A version (or any
statement) that some members signed and the board abandoned can so not be submitted
months later with their signatures; each member chooses their own, as the digest
is unchanged. A signature without ``expires`` never expires, as before.

:func:`check_approval` applies a :class:`~secfl.policy._model.Board` rule to a
set of signatures. It is strict: every signature presented must be a valid
signature by a board member over this digest in this domain. A bad one is
refused outright rather than skipped, so that a wrong key, a stale signature or
an outsider's signature is reported to whoever submitted it instead of
silently not counting.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from secfl.errors import PolicyError
from secfl.policy import _keys as keys
from secfl.policy._canonical import digest
from secfl.policy._fields import NAME
from secfl.policy._model import Board, Policy

__all__ = [
    "EXPIRES_FORMAT",
    "POLICY_DOMAIN",
    "REVOCATION_DOMAIN",
    "Signature",
    "check_approval",
    "check_signer",
    "sign_policy",
    "sign_statement",
    "statement",
    "verify_statement",
]

#: The domain of board approvals of a policy version.
POLICY_DOMAIN = "secfl/policy/v1"
#: The domain of board-signed certificate revocations (used by the SPM).
REVOCATION_DOMAIN = "secfl/revocation/v1"

_DOMAIN = r"^[a-z0-9][a-z0-9._/-]{0,63}$"
_DIGEST = r"^[0-9a-f]{64}$"
#: A signature's ``expires``, in its one spelling.
EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_EXPIRES = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"


class Signature(BaseModel):
    """One board member's detached signature over ``domain`` and ``digest``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    member: Annotated[str, Field(pattern=NAME)]
    algorithm: keys.KeyKind
    domain: Annotated[str, Field(pattern=_DOMAIN)]
    digest: Annotated[str, Field(pattern=_DIGEST)]
    #: The signature bytes, standard base64.
    signature: Annotated[str, Field(min_length=4, max_length=256)]
    #: Until when the signature counts (UTC, ``YYYY-MM-DDTHH:MM:SSZ``); signed with it.
    expires: Annotated[str, Field(pattern=_EXPIRES)] | None = None

    @field_validator("expires")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            datetime.strptime(value, EXPIRES_FORMAT)  # a real time (no 30 February)
        return value

    @model_serializer(mode="wrap")
    def _without_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """No ``expires`` written for one that never expires: its file, and what the SPM
        stores of it, read as before."""
        data: dict[str, object] = handler(self)
        if data.get("expires") is None:
            data.pop("expires", None)
        return data

    def expired(self, now: datetime) -> bool:
        """Whether ``now`` is past this signature's ``expires``."""
        if self.expires is None:
            return False
        return now >= datetime.strptime(self.expires, EXPIRES_FORMAT).replace(tzinfo=UTC)

    @field_validator("signature")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not standard base64") from None
        return value

    @property
    def raw(self) -> bytes:
        """The signature bytes."""
        return base64.b64decode(self.signature)

    def to_json(self) -> str:
        """The signature file's text: JSON with sorted keys, one trailing newline."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Signature:
        """Parse a signature file; any problem is a one-line :class:`PolicyError`."""
        from secfl.policy._validation_text import validation_message

        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            if any(e.get("type") == "json_invalid" for e in exc.errors()):
                raise PolicyError("signature: not a JSON signature document") from None
            raise PolicyError(validation_message(exc, cls, "signature")) from None


def statement(domain: str, digest_hex: str, expires: str | None = None) -> bytes:
    """The exact bytes a board member signs: ``domain`` LF ``digest_hex`` (LF
    ``expires`` and the time, for a signature that expires)."""
    if not re.fullmatch(_DOMAIN, domain):
        raise PolicyError(f"signature domain '{domain}' is not a valid domain name")
    if not re.fullmatch(_DIGEST, digest_hex):
        raise PolicyError("signature digest: must be a SHA-256 digest (64 lowercase hex digits)")
    if expires is None:
        return f"{domain}\n{digest_hex}".encode()
    if not re.fullmatch(_EXPIRES, expires):
        raise PolicyError("signature expires: a UTC time written YYYY-MM-DDTHH:MM:SSZ")
    return f"{domain}\n{digest_hex}\nexpires {expires}".encode()


def sign_statement(
    domain: str,
    digest_hex: str,
    key: keys.PrivateKey | bytes | str,
    member: str,
    expires: str | None = None,
) -> Signature:
    """Sign ``digest_hex`` in ``domain`` as board member ``member`` (until ``expires``,
    if given: see the module docstring).

    ``key`` is a private key object or its PEM.
    """
    private = key if not isinstance(key, bytes | str) else keys.load_private(key)
    message = statement(domain, digest_hex, expires)
    algorithm = keys.key_kind(private)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = private.sign(message)
    else:
        raw = private.sign(message, ec.ECDSA(hashes.SHA256()))
    try:
        return Signature(
            member=member,
            algorithm=algorithm,
            domain=domain,
            digest=digest_hex,
            signature=base64.b64encode(raw).decode(),
            expires=expires,
        )
    except ValidationError:
        raise PolicyError(f"signature: '{member}' is not a valid member name") from None


def verify_statement(
    domain: str,
    digest_hex: str,
    signature: Signature,
    public_key: keys.PublicKey | bytes | str,
) -> None:
    """Check that ``signature`` is by ``public_key`` over ``digest_hex`` in ``domain``.

    Raises :class:`PolicyError` naming the member and what did not match.
    """
    who = f"'{signature.member}'"
    if signature.domain != domain:
        raise PolicyError(f"signature by {who} is for '{signature.domain}', not '{domain}'")
    if signature.digest != digest_hex:
        raise PolicyError(
            f"signature by {who} is over another digest ({signature.digest[:16]}…, "
            f"expected {digest_hex[:16]}…): it approves another version, an edited file or "
            f"other flags; {signature.member} signs this one again"
        )
    message = statement(domain, digest_hex, signature.expires)
    public = public_key if not isinstance(public_key, bytes | str) else keys.load_public(public_key)
    kind = keys.key_kind(public)
    if signature.algorithm != kind:
        raise PolicyError(
            f"invalid signature by {who}: made with {signature.algorithm}, "
            f"but the member's key is {kind}"
        )
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature.raw, message)
        else:
            public.verify(signature.raw, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise PolicyError(f"invalid signature by {who}") from None


def sign_policy(
    policy: Policy,
    key_pem: keys.PrivateKey | bytes | str,
    member: str,
    expires: str | None = None,
) -> Signature:
    """Approve ``policy`` as board member ``member``: a signature over its digest
    (counting until ``expires``, if given)."""
    return sign_statement(POLICY_DOMAIN, digest(policy), key_pem, member, expires)


def check_signer(
    board: Board, member: str, key: keys.PrivateKey, *, previous: bool, versions: bool = True
) -> None:
    """Refuse, before signing, to sign as ``member`` with a key that is not that member's
    on ``board``: such a signature never counts, and the member would find out only when
    the SPM refuses the version. ``previous`` says whether ``board`` is the version being
    replaced (``--board``) rather than the policy's own, for the message; ``versions``
    whether the signature is of a version (which may give the member a new key)."""
    mine = keys.public_pem(key.public_key()).decode()
    owner = next((m.name for m in board.members if m.public_key == mine), None)
    listed = next((m for m in board.members if m.name == member), None)
    which = "the board of the version it replaces" if previous else "this policy's board"
    if listed is None:
        names = ", ".join(m.name for m in board.members[:16])
        hint = f"; this key is {owner}'s: sign as --member {owner}" if owner else ""
        raise PolicyError(f"sign: '{member}' is not a member of {which} (members: {names}){hint}")
    if listed.public_key == mine:
        return
    whose = f"it is {owner}'s: sign as --member {owner}, or with {member}'s own key" if owner else (
        f"it is no member's key: sign with {member}'s own key"
    )  # fmt: skip
    rotate = "" if previous or not versions else (
        f"; if this version gives {member} a new key, sign with the key of the board it "
        "replaces and name that version with --board FILE"
    )  # fmt: skip
    raise PolicyError(f"sign: this key is not {member}'s key on {which}: {whose}{rotate}")


def check_approval(
    board: Board,
    digest_hex: str,
    signatures: Sequence[Signature],
    domain: str = POLICY_DOMAIN,
    now: datetime | None = None,
) -> list[str]:
    """Apply ``board``'s rule to ``signatures`` over ``digest_hex`` in ``domain``.

    Returns the approving members' names, in board order. Raises
    :class:`PolicyError` (prefixed ``approval:``) when a signature is by an
    unknown member, invalid, for another digest or domain; when fewer than
    ``board.threshold`` distinct members (with distinct keys) signed; or when a
    ``required`` member did not. The same member signing twice counts once. Given
    ``now`` (when the statement is applied: the SPM), a signature past its
    ``expires`` is refused too; without it (checking what was applied) it counts.
    """
    statement(domain, digest_hex)  # refuses a malformed domain or digest up front
    members = {m.name: m for m in board.members}
    approved: set[str] = set()
    for sig in signatures:
        member = members.get(sig.member)
        if member is None:
            raise PolicyError(f"approval: signature by unknown member '{sig.member}'")
        try:
            verify_statement(domain, digest_hex, sig, member.public_key)
        except PolicyError as exc:
            raise PolicyError(f"approval: {exc}") from None
        if now is not None and sig.expired(now):
            raise PolicyError(
                f"approval: the signature by '{sig.member}' expired at {sig.expires}: "
                "to approve now, they sign again"
            )
        approved.add(sig.member)
    if len(approved) < board.threshold:
        raise PolicyError(
            f"approval: {len(approved)} valid signature(s) of the {board.threshold} required"
        )
    # Keys, not names, are what sign: two members sharing a key are one approver.
    # (Validation refuses such a board; this keeps the rule whatever the board.)
    distinct = {members[name].public_key for name in approved}
    if len(distinct) < board.threshold:
        raise PolicyError(
            f"approval: {len(distinct)} distinct key(s) of the {board.threshold} required "
            "(members who share a key count once)"
        )
    for name in board.required:
        if name not in approved:
            raise PolicyError(f"approval: required member '{name}' has not signed")
    return [m.name for m in board.members if m.name in approved]
