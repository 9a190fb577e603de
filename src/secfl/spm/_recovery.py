"""Recovery by the board: a policy's data key split among its members.

The data key is split with Shamir's scheme (threshold = the board's threshold)
and each share sealed with HPKE to one member's recovery key (X25519 or P-256).
Any threshold of members can rebuild the key on a new SPM; fewer learn nothing.
The board's ``required`` members are needed here as they are for approving a
version: the key is the Shamir secret XOR one random part per required member,
each part sealed with that member's share, so a threshold without every required
member learns nothing either. A check value tells a correct recombination from a
wrong one.

The shares document is stored in the SPM's database, which lies outside the TEE: the
host may rewrite it, or make one of its own (its own key, split with threshold 1 and
sealed to the members' public recovery keys, its own check value). Recovery therefore
takes the policy version the board signed, and refuses a document whose policy,
threshold, required members or recipients are not that board's; and the document's
SHA-256, which the SPM writes into the signed audit log (``policy.data-key``,
``shares_sha256``), so that a document the host made is refused too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from secfl._internal import shamir
from secfl._internal.aead import KEY_SIZE
from secfl._internal.canonical import canonical_json
from secfl.errors import SpmError
from secfl.policy._model import Policy

__all__ = [
    "RECOVERY_FORMAT",
    "RECOVERY_INFO",
    "RecoveryPrivateKey",
    "RecoveryPublicKey",
    "Share",
    "key_check",
    "load_recovery_public_key",
    "open_share",
    "recover_policy_key",
    "seal_shares",
    "shares_sha256",
]

RECOVERY_INFO = b"secfl/recovery-share/v1\n"
RECOVERY_FORMAT = "secfl-recovery-shares/v2"
#: Written before required members held a part of the key: still opened.
_FORMATS = (RECOVERY_FORMAT, "secfl-recovery-shares/v1")
_CHECK_LABEL = b"secfl/policy-key-check/v1"


RecoveryPublicKey = x25519.X25519PublicKey | ec.EllipticCurvePublicKey
RecoveryPrivateKey = x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey


class Share(NamedTuple):
    """One member's opened share: the Shamir point ``(x, value)`` and, for a required
    member, their ``part`` of the key (``None`` otherwise)."""

    x: int
    value: bytes
    member: str = ""
    part: bytes | None = None


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(i ^ j for i, j in zip(a, b, strict=True))


def key_check(key: bytes) -> str:
    """A 128-bit check value of a data key (HMAC, reveals nothing useful about the key),
    so recovery can tell a correct recombination from a wrong one."""
    return hmac.new(key, _CHECK_LABEL, hashlib.sha256).hexdigest()[:32]


def _suite(kem: str) -> hpke.Suite:
    return hpke.Suite(
        hpke.KEM.X25519 if kem == "X25519" else hpke.KEM.P256,
        hpke.KDF.HKDF_SHA256,
        hpke.AEAD.AES_256_GCM,
    )


def _kem_of(key: Any) -> str | None:
    if isinstance(key, x25519.X25519PublicKey | x25519.X25519PrivateKey):
        return "X25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "P256"
    return None


def _spki_sha256(key: RecoveryPublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _as_bytes(pem: bytes | str) -> bytes:
    return pem.encode("ascii") if isinstance(pem, str) else bytes(pem)


def load_recovery_public_key(pem: bytes | str, member: str) -> RecoveryPublicKey:
    """A board member's recovery key: X25519 or ECDSA/ECDH P-256, PEM SubjectPublicKeyInfo."""
    try:
        key = serialization.load_pem_public_key(_as_bytes(pem))
    except (ValueError, TypeError, UnicodeError):
        raise SpmError(
            f"recovery: the recovery key of '{member}' is not a PEM public key"
        ) from None
    if _kem_of(key) is None:
        raise SpmError(
            f"recovery: the recovery key of '{member}' is {type(key).__name__}; use X25519 or P-256"
        )
    assert isinstance(key, x25519.X25519PublicKey | ec.EllipticCurvePublicKey)
    return key


def seal_shares(
    key: bytes,
    policy_name: str,
    recovery_keys: Mapping[str, bytes | str],
    threshold: int,
    required: Collection[str] = (),
) -> str:
    """Split ``key`` for the board and seal each member's share to their recovery key.

    Every ``required`` member must have a recovery key: the key is the Shamir secret
    XOR a random part of each of them, so recovery needs them all, as approval does.

    Returns JSON: ``{"format", "policy", "scheme", "threshold", "required", "check",
    "shares": {member: {"x", "kem", "recipient_sha256", "sealed" (base64 HPKE)}}}``.
    HPKE suite: the member key's KEM (X25519 or P-256), HKDF-SHA256, AES-256-GCM;
    ``info`` = :data:`RECOVERY_INFO` + policy name; the plaintext is ``x (1 byte) ||
    share``, followed by the member's part for a required member.
    """
    if not recovery_keys:
        raise SpmError(f"recovery: policy '{policy_name}' names no recovery keys")
    if not isinstance(threshold, int) or not 1 <= threshold <= len(recovery_keys):
        raise SpmError(
            f"recovery: threshold {threshold} must be between 1 and the "
            f"{len(recovery_keys)} recovery keys"
        )
    if len(recovery_keys) > 255:
        raise SpmError("recovery: at most 255 recovery keys")
    if len(key) != KEY_SIZE:
        raise SpmError(f"recovery: a data key is {KEY_SIZE} bytes, not {len(key)}")
    missing = sorted(set(required) - set(recovery_keys))
    if missing:
        raise SpmError(
            f"recovery: required member '{missing[0]}' has no recovery key, so the board "
            "could recover without them; give every required member a recovery key, or "
            "no member"
        )
    members = sorted(recovery_keys)
    public = {m: load_recovery_public_key(recovery_keys[m], m) for m in members}
    info = RECOVERY_INFO + policy_name.encode("utf-8")
    parts = {m: secrets.token_bytes(KEY_SIZE) for m in sorted(set(required))}
    secret = key
    for part in parts.values():
        secret = _xor(secret, part)
    shares: dict[str, dict[str, Any]] = {}
    points = shamir.split(secret, threshold, len(members))
    for member, (x, share) in zip(members, points, strict=True):
        pub = public[member]
        kem = _kem_of(pub)
        assert kem is not None
        plain = bytes([x]) + share + parts.get(member, b"")
        try:
            sealed = _suite(kem).encrypt(plain, pub, info=info)
        except ValueError:  # a point of small order: nothing sealed to it stays secret
            raise SpmError(
                f"recovery: member '{member}''s recovery key is not a usable public key "
                "(a point of small order): generate it with `secfl policy keygen`"
            ) from None
        shares[member] = {
            "x": x,
            "kem": kem,
            "recipient_sha256": _spki_sha256(pub),
            "sealed": base64.b64encode(sealed).decode("ascii"),
        }
    document = {
        "format": RECOVERY_FORMAT,
        "policy": policy_name,
        "scheme": "shamir-gf256",
        "threshold": threshold,
        "required": sorted(parts),
        "check": key_check(key),
        "shares": shares,
    }
    return canonical_json(document).decode("utf-8")


def _parse_shares(shares_json: str) -> dict[str, Any]:
    try:
        doc = json.loads(shares_json)
    except (TypeError, ValueError, RecursionError):
        raise SpmError("recovery: the recovery shares are not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") not in _FORMATS:
        raise SpmError(f"recovery: the recovery shares are not in the {RECOVERY_FORMAT} format")
    if not isinstance(doc.get("shares"), dict) or not isinstance(doc.get("policy"), str):
        raise SpmError("recovery: the recovery shares are malformed")
    required = doc.setdefault("required", [])
    if not isinstance(required, list) or not all(isinstance(m, str) for m in required):
        raise SpmError("recovery: the recovery shares' required members are malformed")
    threshold = doc.get("threshold")
    if not isinstance(threshold, int) or not 1 <= threshold <= 255:  # Shamir over GF(256)
        raise SpmError("recovery: the recovery shares have no valid threshold")
    return doc


def open_share(shares_json: str, member: str, private_pem: bytes | str) -> Share:
    """Board member ``member`` opens their share with their recovery private key (PEM,
    unencrypted). :class:`SpmError` if the key is not the one the share was sealed to,
    or the share was modified."""
    doc = _parse_shares(shares_json)
    entry = doc["shares"].get(member)
    if not isinstance(entry, dict):
        raise SpmError(f"recovery: there is no share for member '{member}'")
    try:
        private = serialization.load_pem_private_key(_as_bytes(private_pem), password=None)
    except (ValueError, TypeError, UnicodeError):
        raise SpmError(
            f"recovery: the key given for '{member}' is not an unencrypted PEM private key"
        ) from None
    kem = _kem_of(private)
    if kem is None:
        raise SpmError(f"recovery: the key given for '{member}' is not X25519 or P-256")
    assert isinstance(private, x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey)
    want = entry.get("recipient_sha256")
    got = _spki_sha256(private.public_key())
    if want != got:
        raise SpmError(
            f"recovery: the share of '{member}' is sealed to key sha256:{str(want)[:16]}..., "
            f"not to the key given (sha256:{got[:16]}...)"
        )
    if entry.get("kem") != kem:
        raise SpmError(f"recovery: the share of '{member}' names KEM {entry.get('kem')!r}")
    try:
        sealed = base64.b64decode(str(entry.get("sealed")), validate=True)
        plain = _suite(kem).decrypt(
            sealed, private, info=RECOVERY_INFO + doc["policy"].encode("utf-8")
        )
    except (InvalidTag, ValueError, binascii.Error):
        raise SpmError(
            f"recovery: the share of '{member}' does not open (modified, or for another policy)"
        ) from None
    if len(plain) < 2 or plain[0] != entry.get("x"):
        raise SpmError(f"recovery: the share of '{member}' is malformed")
    if len(plain) == 1 + 2 * KEY_SIZE:  # a required member's share and part
        return Share(plain[0], plain[1 : 1 + KEY_SIZE], member, plain[1 + KEY_SIZE :])
    return Share(plain[0], plain[1:], member)


def shares_sha256(shares_json: str) -> str:
    """The SHA-256 (hex) of a shares document as stored: what the SPM's audit log names
    (``policy.data-key``, ``shares_sha256``) and :func:`recover_policy_key` compares."""
    return hashlib.sha256(shares_json.encode("utf-8")).hexdigest()


def _check_board(doc: dict[str, Any], policy: Policy) -> None:
    """Refuse a shares document that is not ``policy``'s board's split: another policy,
    a threshold or required members other than the board's (a lowered threshold would
    let fewer members recover a key), or shares for anyone but the members' recovery
    keys. The document is read from the database, which the host may write."""
    board = policy.board
    if doc["policy"] != policy.name:
        raise SpmError(
            f"recovery: the shares document is for policy '{doc['policy'][:64]}', "
            f"not '{policy.name}'"
        )
    if doc["threshold"] != board.threshold:
        raise SpmError(
            f"recovery: the shares document's threshold is {doc['threshold']}, the board's "
            f"(version {policy.version}) is {board.threshold}: the database was altered"
        )
    # a split made before required members held a part of the key has none (v1)
    required = sorted(board.required) if doc["format"] == RECOVERY_FORMAT else []
    if sorted(doc["required"]) != required:
        raise SpmError(
            "recovery: the shares document's required members are not the board's "
            f"(version {policy.version}): the database was altered"
        )
    recipients = {
        m.name: _spki_sha256(load_recovery_public_key(m.recovery_key, m.name))
        for m in board.members
        if m.recovery_key
    }
    if sorted(doc["shares"]) != sorted(recipients):
        raise SpmError(
            "recovery: the shares document's members are not the board members with a "
            f"recovery key (version {policy.version}): the database was altered"
        )
    for member, entry in doc["shares"].items():
        if not isinstance(entry, dict) or entry.get("recipient_sha256") != recipients[member]:
            raise SpmError(
                f"recovery: the share of '{member}' is not sealed to their recovery key in "
                f"version {policy.version}: the database was altered"
            )


def recover_policy_key(
    shares: Sequence[Share | tuple[int, bytes]],
    shares_json: str | None = None,
    policy: Policy | None = None,
    *,
    audited: str | None = None,
) -> bytes:
    """Recombine opened shares into the policy's data key.

    With ``shares_json`` (the document :func:`seal_shares` made, as the database holds
    it), give ``policy``, the version the board signed (the current one: a version that
    changes the board splits a new key), and ``audited``, the document's SHA-256 from
    the policy's last ``policy.data-key`` entry of the SPM's verified audit log (an
    earlier one names an earlier key's split, which the host could put back): a document that is
    not that board's split (a lowered threshold, say), or not the one the SPM logged
    (one the host made, for a key of its own), fewer shares than the threshold from
    distinct members, a required member's share missing, or shares that do not
    recombine to the key it was made for, are an :class:`SpmError`. ``audited=""``
    accepts a document no entry names (split before the log named them): bounded by
    the board only, it may be the host's. Without ``shares_json``, too few shares
    silently give a wrong key.
    """
    doc = _parse_shares(shares_json) if shares_json is not None else None
    opened = [s if isinstance(s, Share) else Share(*s) for s in shares]
    if doc is not None:
        assert shares_json is not None
        if policy is None or audited is None:
            raise SpmError(
                "recovery: give the policy version the board signed and the shares "
                "document's digest from the audit log, to check the document against"
            )
        if audited and not hmac.compare_digest(shares_sha256(shares_json), audited):
            raise SpmError(
                "recovery: the shares document is not the one the SPM's audit log names "
                "(policy.data-key): the database was altered"
            )
        _check_board(doc, policy)
        members = {s.member for s in opened if s.member in doc["shares"]}
        if len(members) < doc["threshold"] or len(members) < len(opened):
            raise SpmError(
                f"recovery: {len(members)} share(s) of distinct members given, the board's "
                f"threshold is {doc['threshold']}"
            )
        given = {s.member for s in opened if s.part is not None}
        for member in sorted(doc["required"]):
            if member not in given:
                raise SpmError(
                    f"recovery: the share of required member '{member}' is missing; the "
                    "board needs every required member to recover, as to approve"
                )
    try:
        key = shamir.combine([(s.x, s.value) for s in opened])
    except ValueError as exc:
        raise SpmError(f"recovery: {exc}") from None
    if len(key) != KEY_SIZE:
        raise SpmError(f"recovery: the shares hold {len(key)} bytes, not a {KEY_SIZE}-byte key")
    for share in opened:
        if share.part is not None:
            if len(share.part) != KEY_SIZE:
                raise SpmError(f"recovery: the part of '{share.member}' is malformed")
            key = _xor(key, share.part)
    if doc is not None and not hmac.compare_digest(key_check(key), str(doc.get("check"))):
        raise SpmError(
            "recovery: the shares do not recombine to the policy key (a share is wrong "
            "or belongs to another key)"
        )
    return key
