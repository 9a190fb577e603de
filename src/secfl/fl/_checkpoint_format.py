"""The layout of a sealed checkpoint file, and its header read before anything opens.

File ``checkpoint-r<round:08d>-c<counter:010d>-<request[:16]>.secfl`` (version 1;
without ``-<request>`` as written before requests were named: the names are
:mod:`secfl.fl._checkpoint_names`)::

    magic    8 bytes  b"SECFLCKP"
    hlen     4 bytes  big-endian length of the header (at most 64 KiB)
    header   hlen     canonical JSON: {"format": "secfl-checkpoint/v1", "policy_digest",
                      "round", "counter", "request", "created_at", "size" (plaintext
                      bytes), "chunk_size", "chunks"}
    records  chunks × (4-byte big-endian length || AeadKey blob)

Record ``i`` is AES-256-GCM of the plaintext's ``i``-th ``chunk_size`` bytes with
associated data ``CONTEXT || header || i (8 bytes) || last (1 byte)``, so the
header (policy, round, counter) is authenticated by every record, and records
cannot be dropped, reordered or moved between files. Chunks keep each AES-GCM call
far below its size limits, whatever the model's size. The plaintext is::

    4-byte big-endian length || inner JSON {"params_size", "state_arrays_size",
    "state" (the state's JSON values)} || params (safetensors) || state arrays
    (safetensors of the state's numpy arrays)

The header is read and checked here before any record authenticates it
(:func:`read_header`); :func:`header_of` and its helpers read it without the key,
to tell which run and which increment a file says it is of.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from secfl._internal.aead import KEY_SIZE, NONCE_SIZE, AeadKey
from secfl._internal.files import open_regular
from secfl.errors import FlError
from secfl.fl._checkpoint_names import REQUEST

__all__ = [
    "AEAD_OVERHEAD",
    "CONTEXT",
    "DEFAULT_CHUNK_SIZE",
    "FORMAT",
    "KEY_LABEL",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_HEADER",
    "checkpoint_key",
    "header_of",
    "non_negative",
    "policy_of",
    "read_exact",
    "read_header",
    "record_aad",
    "request_of",
]

MAGIC = b"SECFLCKP"
FORMAT = "secfl-checkpoint/v1"
CONTEXT = b"secfl/fl-checkpoint/v1\n"
#: The sub-key label: checkpoints never share a key with other uses of the secret.
KEY_LABEL = "fl-checkpoint/v1"
DEFAULT_CHUNK_SIZE = 16 << 20
#: A record is read whole before it authenticates: its size is bounded.
MAX_CHUNK_SIZE = 64 << 20
MAX_HEADER = 64 << 10
AEAD_OVERHEAD = 1 + NONCE_SIZE + 16


def checkpoint_key(key: bytes) -> AeadKey:
    """The key that seals a checkpoint's records: a sub-key of the policy secret
    ``key`` (:data:`KEY_LABEL`)."""
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise FlError(f"checkpoint: the key must be {KEY_SIZE} bytes")
    return AeadKey(AeadKey(bytes(key), error=FlError).derive(KEY_LABEL), error=FlError)


def record_aad(header: bytes, index: int, last: bool) -> bytes:
    """The associated data of record ``index``: the header, the index, whether it is last."""
    return CONTEXT + header + struct.pack(">QB", index, 1 if last else 0)


def non_negative(value: Any, what: str) -> int:
    """``value``, refused unless it is a non-negative int (a bool is not one)."""
    if type(value) is not int or value < 0:
        raise FlError(f"checkpoint: {what} must be a non-negative integer, not {value!r}")
    return value


def read_exact(fh: Any, n: int, path: Path, what: str) -> bytes:
    """``n`` bytes of ``fh``; fewer is a truncated checkpoint (``what`` says where)."""
    data = fh.read(n)
    if len(data) != n:
        raise FlError(f"integrity: checkpoint {path.name} is truncated ({what})")
    return data


def read_header(fh: Any, path: Path) -> tuple[bytes, dict[str, Any]]:
    """The header's bytes and its checked fields, not yet authenticated (the records
    authenticate the bytes)."""
    if read_exact(fh, len(MAGIC), path, "magic") != MAGIC:
        raise FlError(f"format: {path.name} is not a secfl checkpoint")
    (hlen,) = struct.unpack(">I", read_exact(fh, 4, path, "header length"))
    if hlen > MAX_HEADER:
        raise FlError(f"format: checkpoint {path.name} declares a {hlen}-byte header")
    header = read_exact(fh, hlen, path, "header")
    try:
        doc = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FlError(f"format: the header of checkpoint {path.name} is not JSON") from None
    keys = {"format", "policy_digest", "round", "counter", "created_at", "size"}
    keys |= {"chunk_size", "chunks"}
    if not isinstance(doc, dict) or set(doc) - {"request"} != keys or doc["format"] != FORMAT:
        raise FlError(f"format: checkpoint {path.name} is not in the {FORMAT} format")
    request = doc.get("request")
    if request is not None and (not isinstance(request, str) or not REQUEST.fullmatch(request)):
        raise FlError(f"format: checkpoint {path.name} has an invalid request name")
    for name in ("round", "counter", "size", "chunks"):
        non_negative(doc[name], name)
    if type(doc["chunk_size"]) is not int or not 0 < doc["chunk_size"] <= MAX_CHUNK_SIZE:
        raise FlError(f"format: checkpoint {path.name} has an invalid chunk size")
    if not isinstance(doc["policy_digest"], str) or not isinstance(doc["created_at"], str):
        raise FlError(f"format: checkpoint {path.name} has an invalid header")
    return header, doc


def policy_of(path: Path) -> str | None:
    """The (not yet authenticated) policy digest in a checkpoint's header, or None."""
    header = header_of(path)
    return None if header is None else str(header["policy_digest"])


def request_of(path: Path) -> str | None:
    """The (not yet authenticated) increment name in a checkpoint's header, or None."""
    header = header_of(path)
    request = None if header is None else header.get("request")
    return request if isinstance(request, str) else None


def header_of(path: Path) -> dict[str, Any] | None:
    """A checkpoint's header, not yet authenticated (None if it is not one): which
    run and which increment it says it is of. Opening it checks what it says."""
    try:
        with open_regular(path) as fh:
            _, doc = read_header(fh, path)
    except (OSError, FlError):
        return None
    return doc
