"""Volume keys: 32 random bytes, kept as 64 hex characters in a file of mode 0600."""

from __future__ import annotations

import secrets
from pathlib import Path

from secfl._internal import files
from secfl._internal.files import TooLarge, read_bounded
from secfl.errors import ShieldError
from secfl.shield._format import KEY_SIZE

__all__ = [
    "generate_key",
    "key_from_file",
    "load_key",
    "write_key_file",
]

#: A key file is tiny; anything bigger is not a key file.
_MAX_KEY_FILE = 4096


def load_key(value: bytes | bytearray | memoryview | str) -> bytes:
    """A 256-bit key from 32 raw bytes or 64 hex characters (surrounding whitespace ignored)."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) == KEY_SIZE:
            return raw
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ShieldError(
                f"shield: a key is 32 bytes or 64 hex characters, got {len(raw)} bytes"
            ) from None
    elif isinstance(value, str):
        text = value
    else:
        raise ShieldError(f"shield: a key is bytes or a hex string, not {type(value).__name__}")
    text = "".join(text.split())
    if len(text) != 2 * KEY_SIZE:
        raise ShieldError(f"shield: a key is 64 hex characters, got {len(text)} characters")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ShieldError("shield: the key is not hexadecimal") from None


def key_from_file(path: Path | str) -> bytes:
    """Read a key file (64 hex characters, or 32 raw bytes)."""
    try:
        raw = read_bounded(path, _MAX_KEY_FILE, regular=True)  # a FIFO would hang
    except TooLarge:
        raise ShieldError(f"shield: key file '{path}' is too large to be a key") from None
    except OSError as exc:
        raise ShieldError(f"shield: cannot read key file '{path}': {exc.strerror or exc}") from None
    try:
        return load_key(raw)
    except ShieldError as exc:
        reason = str(exc).removeprefix("shield: ")
        raise ShieldError(f"shield: key file '{path}': {reason}") from None


def generate_key() -> bytes:
    """A fresh 256-bit key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


def write_key_file(path: Path | str, key: bytes | None = None) -> bytes:
    """Write ``key`` (a new one by default) as hex to a new file of mode 0600; never overwrite.

    The file is 0600 from its first byte and appears whole (see
    :func:`secfl._internal.files.write_private`); anything already at ``path``,
    a symbolic link too, is refused and left as it was."""
    key = generate_key() if key is None else load_key(key)
    try:
        files.write_private(path, (key.hex() + "\n").encode("ascii"), replace=False)
    except FileExistsError:
        raise ShieldError(f"shield: key file '{path}' already exists; not overwriting it") from None
    except OSError as exc:
        reason = exc.strerror or exc
        raise ShieldError(f"shield: cannot create key file '{path}': {reason}") from None
    return key
