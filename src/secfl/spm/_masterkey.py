"""The SPM's master key, the per-policy data keys under it, and their recovery by the board.

Key hierarchy::

    master key (32 bytes, sealed by the platform: see load_or_create_master_key)
      ├─ derive("audit")                    → the audit head MAC key (secfl.spm._audit)
      └─ wraps each policy's data key (32 bytes, AES-256-GCM, aad = the policy name)
           └─ encrypts that policy's secret values at rest (seal_secret / open_secret)

Each policy's data key is also split with Shamir's scheme (threshold = the board's)
and every share sealed with HPKE to one board member's recovery public key
(:mod:`secfl.spm._recovery`). If the SPM's platform (and with it the master key) is
lost, ``threshold`` members open their shares and a new SPM instance recombines the
data key, so no secret is lost, while fewer members than the threshold learn nothing.

**Sealing is simulated here.** :func:`load_or_create_master_key` keeps the master key
in a file ``master.key`` readable only by the SPM's user, which protects it from other
users but not from root on the host. Real TEE sealing (an SGX sealing key bound to
MRENCLAVE via Gramine's ``/dev/attestation/keys``, an SEV-SNP ``MSG_KEY_REQ`` derived
key, a TDX key released by a key broker after attestation) is *not* done; that
function is the single hook where it belongs.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from secfl._internal.aead import KEY_SIZE, AeadKey
from secfl.errors import SpmError

__all__ = [
    "KEY_FILE",
    "MasterKey",
    "load_or_create_master_key",
    "new_policy_key",
    "open_secret",
    "seal_secret",
    "unwrap_policy_key",
    "wrap_policy_key",
]

KEY_FILE = "master.key"

_POLICY_KEY_AAD = b"secfl/policy-key/v1\n"
_SECRET_AAD = b"secfl/secret/v1\n"
#: HPKE ``info`` prefix of a recovery share; the policy name follows.


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
        # O_NONBLOCK: a FIFO planted as master.key must not hang the SPM at start.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise SpmError(f"secrets: cannot open the master key {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise SpmError(f"secrets: cannot read the master key {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise SpmError(
            f"secrets: the master key {path} is {kind}; it must be the SPM's 32-byte key file"
        )
    with os.fdopen(fd, "rb") as fh:
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
        try:
            data = fh.read(KEY_SIZE + 1)
        except OSError as exc:
            raise SpmError(f"secrets: cannot read the master key {path}: {exc.strerror}") from None
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
    """The value :func:`seal_secret` sealed for (policy, name); :class:`SpmError` otherwise."""
    return AeadKey(policy_key).open(ciphertext, _secret_aad(policy, name))
