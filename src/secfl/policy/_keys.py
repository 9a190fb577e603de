"""Board keys: the signing keys of board members and their recovery keys.

A board member approves policy versions with a *signing key*: Ed25519 or ECDSA
over P-256, nothing else, so that every verifier supports every member and no
weak or exotic algorithm can slip into a board. A member may also hold a
*recovery key* (X25519, or P-256 for members whose hardware tokens only do
NIST curves): the SPM seals its master key to these, so the board can recover
the policy's secrets on a new SPM instance.

Private keys are PEM (PKCS#8), public keys PEM (SubjectPublicKeyInfo). Every
refusal is a :class:`~secfl.errors.PolicyError` whose message says which key and
why, in one line.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal, TypeAlias, get_args

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from secfl._internal import files
from secfl.errors import PolicyError

__all__ = [
    "KEY_KINDS",
    "KeyKind",
    "PrivateKey",
    "PublicKey",
    "RecoveryPrivateKey",
    "RecoveryPublicKey",
    "generate",
    "generate_recovery",
    "key_id",
    "key_kind",
    "load_private",
    "load_public",
    "load_recovery_private",
    "load_recovery_public",
    "public_pem",
    "write_private",
]

KeyKind: TypeAlias = Literal["ed25519", "ecdsa-p256"]
KEY_KINDS: tuple[KeyKind, ...] = get_args(KeyKind)

PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
RecoveryPrivateKey: TypeAlias = x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey
RecoveryPublicKey: TypeAlias = x25519.X25519PublicKey | ec.EllipticCurvePublicKey


def generate(kind: KeyKind = "ed25519") -> tuple[bytes, bytes]:
    """A new board signing key: ``(private_pem, public_pem)``."""
    key: PrivateKey
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise PolicyError(f"key kind '{kind}' is not one of {', '.join(KEY_KINDS)}")
    return _private_pem(key), public_pem(key.public_key())


def generate_recovery() -> tuple[bytes, bytes]:
    """A new X25519 recovery key pair: ``(private_pem, public_pem)``."""
    key = x25519.X25519PrivateKey.generate()
    return _private_pem(key), public_pem(key.public_key())


def load_private(pem: bytes | str, password: bytes | None = None) -> PrivateKey:
    """A board member's signing key from PEM; any other key type is refused."""
    key = _load_private(pem, password, "board signing key")
    if isinstance(key, ed25519.Ed25519PrivateKey) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and _is_p256(key)
    ):
        return key
    raise PolicyError(f"board signing key: {_describe(key)} refused (Ed25519 or ECDSA P-256 only)")


def load_public(pem: bytes | str) -> PublicKey:
    """A board member's public key from PEM; any other key type is refused, and so is
    an Ed25519 key that is not a canonical encoding of a point of large order."""
    key = _load_public(pem, "board public key")
    if isinstance(key, ed25519.Ed25519PublicKey):
        _check_ed25519(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and _is_p256(key):
        return key
    raise PolicyError(f"board public key: {_describe(key)} refused (Ed25519 or ECDSA P-256 only)")


def load_recovery_private(pem: bytes | str, password: bytes | None = None) -> RecoveryPrivateKey:
    """A recovery private key (X25519 or P-256) from PEM."""
    key = _load_private(pem, password, "recovery key")
    if isinstance(key, x25519.X25519PrivateKey) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and _is_p256(key)
    ):
        return key
    raise PolicyError(f"recovery key: {_describe(key)} refused (X25519 or P-256 only)")


def load_recovery_public(pem: bytes | str) -> RecoveryPublicKey:
    """A recovery public key (X25519 or P-256) from PEM."""
    key = _load_public(pem, "recovery public key")
    if isinstance(key, x25519.X25519PublicKey):
        _check_x25519(key)
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and _is_p256(key):
        return key
    raise PolicyError(f"recovery public key: {_describe(key)} refused (X25519 or P-256 only)")


def key_kind(key: PrivateKey | PublicKey) -> KeyKind:
    """``ed25519`` or ``ecdsa-p256``: the signature algorithm a board key makes."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if _is_p256(key):
        return "ecdsa-p256"
    raise PolicyError(f"{_describe(key)} refused (Ed25519 or ECDSA P-256 only)")


def public_pem(key: PublicKey | RecoveryPublicKey) -> bytes:
    """The canonical PEM (SubjectPublicKeyInfo) of a public key."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PublicKey | RecoveryPublicKey) -> str:
    """SHA-256 (hex) of the DER SubjectPublicKeyInfo: a short, stable name for a key."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def write_private(path: str | os.PathLike[str], pem: bytes, *, overwrite: bool = False) -> Path:
    """Write a private key readable by its owner only (mode 0600).

    The file is created with mode 0600 from the start (no window where it is
    world-readable) under a fresh name, and appears whole at ``path`` (see
    :func:`secfl._internal.files.write_private`): a symbolic link planted there is
    replaced, never followed. An existing file is refused unless ``overwrite``:
    losing a board key by accident means the board must rotate it.
    """
    target = Path(path)
    try:
        files.write_private(target, pem, replace=overwrite)
    except FileExistsError:
        raise PolicyError(f"refusing to overwrite the existing key '{target}'") from None
    except OSError as exc:
        raise PolicyError(f"cannot write '{target}': {exc.strerror or exc}") from None
    return target


def _private_pem(key: PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _as_bytes(pem: bytes | str) -> bytes:
    return pem.encode() if isinstance(pem, str) else bytes(pem)


def _load_private(pem: bytes | str, password: bytes | None, what: str) -> object:
    try:
        return serialization.load_pem_private_key(_as_bytes(pem), password=password)
    except TypeError:
        if password is None:
            raise PolicyError(f"{what}: the key is encrypted; a password is needed") from None
        raise PolicyError(f"{what}: the key is not encrypted; no password is needed") from None
    except (ValueError, UnsupportedAlgorithm, UnicodeError):
        raise PolicyError(f"{what}: not a PEM private key (or a wrong password)") from None


def _load_public(pem: bytes | str, what: str) -> object:
    try:
        return serialization.load_pem_public_key(_as_bytes(pem))
    except (ValueError, UnsupportedAlgorithm, UnicodeError):
        raise PolicyError(f"{what}: not a PEM public key") from None


#: The field prime of Curve25519 (RFC 8032, 5.1).
_P25519 = 2**255 - 19
#: Encodings of the points of small order (the 8-torsion), as libsodium blocks them,
#: with both sign bits where x = 0: with such a key a signature with R the identity and
#: S = 0 verifies for any message, and nobody holds a private key for it.
_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000080",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
)


def _check_ed25519(raw: bytes) -> None:
    """Refuse a weak Ed25519 public key: a point of small order (signatures that verify
    for any message, made without a key: found by a review) or a non-canonical
    encoding (y >= p: a second spelling of another member's key, counted as another
    member)."""
    if raw in _SMALL_ORDER:
        raise PolicyError(
            "board public key: an Ed25519 point of small order, for which signatures are "
            "forged without a private key; generate the key with `secfl policy keygen`"
        )
    if int.from_bytes(raw, "little") & ((1 << 255) - 1) >= _P25519:
        raise PolicyError(
            "board public key: a non-canonical Ed25519 encoding (y >= p); generate the key "
            "with `secfl policy keygen`"
        )


def _check_x25519(key: x25519.X25519PublicKey) -> None:
    """Refuse a weak X25519 recovery key: a point of small order (every share sealed to
    it would be sealed under a secret anyone knows; the SPM failed on it after the
    board's signatures were accepted: found by a review) or a non-canonical u >= p."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # the top bit is ignored by the exchange: set, the same key has a second spelling,
    # which counted as another member's (found by a review)
    if raw[31] & 0x80 or int.from_bytes(raw, "little") >= _P25519:
        raise PolicyError(
            "recovery public key: a non-canonical X25519 encoding (u >= p, or the top bit set)"
        )
    try:
        x25519.X25519PrivateKey.generate().exchange(key)
    except ValueError:  # the shared secret is all zeros: a point of small order
        raise PolicyError(
            "recovery public key: an X25519 point of small order, which protects nothing; "
            "generate the key with `secfl policy keygen`"
        ) from None


def _is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    )


def _describe(key: object) -> str:
    """``RSA key``, ``EC key on secp384r1``...: what a refused key is, for messages."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"EC key on {key.curve.name}"
    name = type(key).__name__.lstrip("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return f"{name} key"
