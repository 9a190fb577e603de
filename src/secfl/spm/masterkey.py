"""The SPM's master key, the per-policy data keys under it, and their recovery by the board.

Key hierarchy::

    master key (32 bytes, sealed by the platform: see load_or_create_master_key)
      ├─ derive("audit")                    → the audit head MAC key (secfl.spm.audit)
      └─ wraps each policy's data key (32 bytes, AES-256-GCM, aad = the policy name)
           └─ encrypts that policy's secret values at rest (seal_secret / open_secret)

Each policy's data key is also split with Shamir's scheme (threshold = the board's)
and every share sealed with HPKE to one board member's recovery public key
(:func:`seal_shares`). If the SPM's platform (and with it the master key) is lost,
``threshold`` members open their shares (:func:`open_share`) and a new SPM instance
recombines the data key (:func:`recover_policy_key`), so no secret is lost, while
fewer members than the threshold learn nothing.

**Sealing is simulated here.** :func:`load_or_create_master_key` keeps the master key
in a file ``master.key`` readable only by the SPM's user, which protects it from other
users but not from root on the host. Real TEE sealing (an SGX sealing key bound to
MRENCLAVE via Gramine's ``/dev/attestation/keys``, an SEV-SNP ``MSG_KEY_REQ`` derived
key, a TDX key released by a key broker after attestation) is *not* done; that
function is the single hook where it belongs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secfl._internal import shamir
from secfl.errors import SpmError

KEY_SIZE = 32
NONCE_SIZE = 12
#: First byte of every sealed blob; bumped if the format ever changes.
FORMAT_V1 = 0x01
KEY_FILE = "master.key"

_POLICY_KEY_AAD = b"secfl/policy-key/v1\n"
_SECRET_AAD = b"secfl/secret/v1\n"
_DERIVE_INFO = b"secfl/derive/v1\n"
_CHECK_LABEL = b"secfl/policy-key-check/v1"
#: HPKE ``info`` prefix of a recovery share; the policy name follows.
RECOVERY_INFO = b"secfl/recovery-share/v1\n"
RECOVERY_FORMAT = "secfl-recovery-shares/v1"


class AeadKey:
    """A 256-bit key that seals (AES-256-GCM) and derives sub-keys (HKDF-SHA256).

    Sealed blob: ``version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)``;
    the version byte is authenticated with the caller's ``aad``.
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
            raise SpmError(f"secrets: a key must be {KEY_SIZE} bytes")
        self._key = bytes(key)
        self._aead = AESGCM(self._key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{KEY_SIZE} bytes hidden>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        header = bytes([FORMAT_V1])
        return header + nonce + self._aead.encrypt(nonce, bytes(plaintext), header + bytes(aad))

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < 1 + NONCE_SIZE + 16:
            raise SpmError(f"secrets: a sealed value of {len(blob)} bytes is truncated")
        if blob[0] != FORMAT_V1:
            raise SpmError(f"secrets: a sealed value has unknown format version {blob[0]}")
        nonce, body = blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :]
        try:
            return self._aead.decrypt(nonce, body, blob[:1] + bytes(aad))
        except InvalidTag:
            raise SpmError(
                "secrets: cannot open a sealed value (wrong key, modified data or wrong context)"
            ) from None

    def derive(self, label: str) -> bytes:
        """A 32-byte sub-key for ``label`` (e.g. "audit"), independent of every other label."""
        if not label:
            raise SpmError("secrets: a derived key needs a label")
        return HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_SIZE,
            salt=None,
            info=_DERIVE_INFO + label.encode("utf-8"),
        ).derive(self._key)


class MasterKey(AeadKey):
    """The SPM's master key: wraps the policy data keys and derives the audit MAC key."""

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_SIZE))


def load_or_create_master_key(data_dir: Path) -> MasterKey:
    """The master key from ``data_dir/master.key``, created (mode 0600) on first use.

    This is the simulated platform's sealing and the hook for real TEE sealing (see
    the module docstring): the key is only as safe as the file permissions. A key
    file that its group or others may access, that another user owns, or that is a
    symlink is refused (:class:`SpmError`), as is one of the wrong size.
    """
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SpmError(f"secrets: cannot create {data_dir}: {exc.strerror}") from None
    path = data_dir / KEY_FILE
    if not os.path.lexists(path):
        try:
            _create_key_file(path)
        except OSError as exc:
            raise SpmError(f"secrets: cannot create the master key {path}: {exc}") from None
    return MasterKey(_read_key_file(path))


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SpmError(f"secrets: cannot open the master key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SpmError(f"secrets: the master key {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise SpmError(
                f"secrets: the master key {path} has mode {mode:04o}; group and others "
                "must have no access (chmod 600)"
            )
        if info.st_uid != os.geteuid():
            raise SpmError(
                f"secrets: the master key {path} is owned by uid {info.st_uid}, "
                f"not by this process's uid {os.geteuid()}"
            )
        data = fh.read(KEY_SIZE + 1)
    if len(data) != KEY_SIZE:
        raise SpmError(
            f"secrets: the master key {path} holds {len(data)} bytes, expected {KEY_SIZE}"
        )
    return data


def _create_key_file(path: Path) -> None:
    """Write a new key atomically: a private temp file, fsynced, then linked into place
    (``link`` fails if another process won the race; its key is then used)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".master.key.")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, os.urandom(KEY_SIZE))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)


# --- policy data keys -----------------------------------------------------------------------


def new_policy_key() -> bytes:
    """A fresh 32-byte data key for one policy's secrets."""
    return os.urandom(KEY_SIZE)


def wrap_policy_key(master: MasterKey, policy_name: str, key: bytes) -> bytes:
    """``key`` sealed under the master key, bound to ``policy_name``."""
    if len(key) != KEY_SIZE:
        raise SpmError(f"secrets: a policy key must be {KEY_SIZE} bytes")
    return master.seal(key, _POLICY_KEY_AAD + policy_name.encode("utf-8"))


def unwrap_policy_key(master: MasterKey, policy_name: str, wrapped: bytes) -> bytes:
    """The data key of ``policy_name``; :class:`SpmError` if wrapped for another policy
    or under another master key, or modified."""
    key = master.open(wrapped, _POLICY_KEY_AAD + policy_name.encode("utf-8"))
    if len(key) != KEY_SIZE:
        raise SpmError(f"secrets: the data key of policy '{policy_name}' has the wrong size")
    return key


def _secret_aad(policy: str, name: str) -> bytes:
    return _SECRET_AAD + policy.encode("utf-8") + b"\n" + name.encode("utf-8")


def seal_secret(policy_key: bytes, policy: str, name: str, value: bytes) -> bytes:
    """A secret's value encrypted at rest under its policy's data key, bound to
    (policy, name) so a ciphertext cannot be moved to another secret."""
    return AeadKey(policy_key).seal(value, _secret_aad(policy, name))


def open_secret(policy_key: bytes, policy: str, name: str, ciphertext: bytes) -> bytes:
    return AeadKey(policy_key).open(ciphertext, _secret_aad(policy, name))


# --- recovery by the board ------------------------------------------------------------------

RecoveryPublicKey = x25519.X25519PublicKey | ec.EllipticCurvePublicKey
RecoveryPrivateKey = x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey


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
    key: bytes, policy_name: str, recovery_keys: Mapping[str, bytes | str], threshold: int
) -> str:
    """Split ``key`` for the board and seal each member's share to their recovery key.

    Returns JSON: ``{"format", "policy", "scheme", "threshold", "check", "shares":
    {member: {"x", "kem", "recipient_sha256", "sealed" (base64 HPKE)}}}``. HPKE suite:
    the member key's KEM (X25519 or P-256), HKDF-SHA256, AES-256-GCM; ``info`` =
    :data:`RECOVERY_INFO` + policy name; the plaintext is ``x (1 byte) || share``.
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
    members = sorted(recovery_keys)
    public = {m: load_recovery_public_key(recovery_keys[m], m) for m in members}
    info = RECOVERY_INFO + policy_name.encode("utf-8")
    shares: dict[str, dict[str, Any]] = {}
    for member, (x, share) in zip(members, shamir.split(key, threshold, len(members)), strict=True):
        pub = public[member]
        kem = _kem_of(pub)
        assert kem is not None
        sealed = _suite(kem).encrypt(bytes([x]) + share, pub, info=info)
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
        "check": key_check(key),
        "shares": shares,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _parse_shares(shares_json: str) -> dict[str, Any]:
    try:
        doc = json.loads(shares_json)
    except (TypeError, ValueError):
        raise SpmError("recovery: the recovery shares are not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != RECOVERY_FORMAT:
        raise SpmError(f"recovery: the recovery shares are not in the {RECOVERY_FORMAT} format")
    if not isinstance(doc.get("shares"), dict) or not isinstance(doc.get("policy"), str):
        raise SpmError("recovery: the recovery shares are malformed")
    threshold = doc.get("threshold")
    if not isinstance(threshold, int) or threshold < 1:
        raise SpmError("recovery: the recovery shares have no valid threshold")
    return doc


def open_share(shares_json: str, member: str, private_pem: bytes | str) -> tuple[int, bytes]:
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
    return plain[0], plain[1:]


def recover_policy_key(shares: list[tuple[int, bytes]], shares_json: str | None = None) -> bytes:
    """Recombine opened shares into the policy's data key.

    With ``shares_json`` (the document :func:`seal_shares` made), fewer shares than its
    threshold, or shares that do not recombine to the key it was made for, are an
    :class:`SpmError`; without it, too few shares silently give a wrong key.
    """
    doc = _parse_shares(shares_json) if shares_json is not None else None
    if doc is not None and len(shares) < doc["threshold"]:
        raise SpmError(
            f"recovery: {len(shares)} share(s) given, the board's threshold is {doc['threshold']}"
        )
    try:
        key = shamir.combine(list(shares))
    except ValueError as exc:
        raise SpmError(f"recovery: {exc}") from None
    if len(key) != KEY_SIZE:
        raise SpmError(f"recovery: the shares hold {len(key)} bytes, not a {KEY_SIZE}-byte key")
    if doc is not None and not hmac.compare_digest(key_check(key), str(doc.get("check"))):
        raise SpmError(
            "recovery: the shares do not recombine to the policy key (a share is wrong "
            "or belongs to another key)"
        )
    return key
