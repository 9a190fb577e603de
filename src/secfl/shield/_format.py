"""The on-disk format of a shielded volume, ``secfl-shield/1``.

A volume is one file::

    header (96 bytes) | chunks of file 0 | chunks of file 1 | ... | sealed manifest

Header (big-endian)::

    0   8  magic            b"SECFLVOL"
    8   2  format           1
    10  2  flags            0
    12  4  chunk_size       plaintext bytes per chunk (the last chunk of a file may be shorter)
    16  32 salt             random per volume; also the volume's identity
    48  32 key_check        HKDF(key, salt, "key-check"): tells a wrong key from tampering
    80  8  manifest_offset  where the sealed manifest starts (= end of the last chunk)
    88  8  manifest_length  its length, tag included; the volume ends right after it
    96  32 tag              the volume's tag (below), readable without the key
    128 8  version          the manifest's version, readable without the key

The tag and version in the clear let ``secfl run`` measure a code volume before
it has the key (:func:`secfl.shield.peek_tag`). They reveal only a digest and a
release number, which the policy states anyway, and are authenticated with the
manifest (the header is its associated data; opening also checks they match it).

Keys. From the owner's 256-bit key and the volume's salt, HKDF-SHA256 derives a
chunk key, a manifest key and the key check. Since every volume draws a fresh
32-byte salt, each volume has its own subkeys, so re-encrypting with the same owner
key never reuses a (key, nonce) pair even though nonces are deterministic.

Chunks. File ``i`` (its index in the sorted manifest) is cut into ``chunk_size``
pieces (an empty file has one empty chunk); chunk ``j`` is sealed with AES-256-GCM
under the chunk key with the nonce ``i (4 bytes) || j (8 bytes)``, unique within a
volume, so nothing needs to be stored with a chunk: its ciphertext is its plaintext
plus the 16-byte tag, and its position follows from the manifest. The associated
data binds the salt (the volume), the file index and path, the chunk index and
whether it is the file's last chunk, so a chunk cannot be moved to another
position, file or volume, and a file cannot be truncated at a chunk boundary.
Deterministic nonces rather than random ones: no birthday bound on the number of
chunks per key, no 12 bytes per chunk, and random access needs no lookup.

Manifest. Canonical JSON (``sort_keys``, separators ``(",", ":")``, UTF-8)::

    {"format": "secfl-shield/1", "version": V, "chunk_size": C,
     "files": [{"path": P, "mode": M, "size": N, "sha256": H, "chunks": K, "offset": O}, ...]}

sorted by path, sealed under the manifest key with a zero nonce (that key seals one
message only) and the whole header as associated data, so any header change is
refused too. ``V`` is the owner's release number of the data. The volume's tag is
the lowercase hex SHA-256 of the canonical manifest plaintext: it depends on the
content, names, modes, version and chunk size, not on the key or the salt.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import struct
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secfl._internal.canonical import canonical_json
from secfl._internal.values import describe
from secfl.errors import ShieldError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT",
    "FORMAT_NUMBER",
    "HEADER_SIZE",
    "KEY_SIZE",
    "MAGIC",
    "MANIFEST_NONCE",
    "MAX_CHUNK_SIZE",
    "MAX_FILES",
    "MAX_MANIFEST_SIZE",
    "MAX_PATH_BYTES",
    "MAX_PATH_DEPTH",
    "MAX_VERSION",
    "SALT_SIZE",
    "TAG_SIZE",
    "Header",
    "Keys",
    "canonical",
    "check_manifest",
    "check_path",
    "check_tag",
    "chunk_aad",
    "chunk_count",
    "chunk_nonce",
    "derive_keys",
    "manifest_aad",
    "sealed_length",
    "tag_of",
    "unpack_header",
]

FORMAT: Final = "secfl-shield/1"
MAGIC: Final = b"SECFLVOL"
FORMAT_NUMBER: Final = 1
HEADER_SIZE: Final = 136
TAG_SIZE: Final = 16
KEY_SIZE: Final = 32
SALT_SIZE: Final = 32
DEFAULT_CHUNK_SIZE: Final = 1 << 20
MAX_CHUNK_SIZE: Final = 1 << 26
#: A manifest entry is ~200 bytes: this allows about a million files. It is read (and
#: its plaintext made) before it can be authenticated, so it bounds what a hostile
#: header can make an opener allocate (a sparse file of a few KiB on disk).
MAX_MANIFEST_SIZE: Final = 256 << 20
MAX_FILES: Final = 1 << 32
#: The longest path in a volume (Linux's PATH_MAX, in characters: each is one byte or
#: more) and the most folders above a file: what a volume's files must be extractable
#: with, and a bound on what indexing a volume's folders costs.
MAX_PATH_BYTES: Final = 4096
MAX_PATH_DEPTH: Final = 128
MAX_VERSION: Final = (1 << 63) - 1

_HEADER: Final = struct.Struct(">8sHHI32s32sQQ32sQ")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_FILE_KEYS: Final = frozenset({"path", "mode", "size", "sha256", "chunks", "offset"})
_MANIFEST_KEYS: Final = frozenset({"format", "version", "chunk_size", "files"})


@dataclass(frozen=True)
class Header:
    chunk_size: int
    salt: bytes
    key_check: bytes
    manifest_offset: int
    manifest_length: int
    tag: bytes = bytes(32)
    version: int = 0

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            FORMAT_NUMBER,
            0,
            self.chunk_size,
            self.salt,
            self.key_check,
            self.manifest_offset,
            self.manifest_length,
            self.tag,
            self.version,
        )


@dataclass(frozen=True)
class Keys:
    chunk: bytes
    manifest: bytes
    check: bytes


def unpack_header(raw: bytes, where: str) -> Header:
    """Parse the first :data:`HEADER_SIZE` bytes; refuse anything that is not a volume."""
    if len(raw) < HEADER_SIZE:
        raise ShieldError(f"shield: {where}: truncated header ({len(raw)} bytes, not a volume)")
    magic, number, flags, chunk_size, salt, check, m_off, m_len, tag, version = _HEADER.unpack(
        raw[:HEADER_SIZE]
    )
    if magic != MAGIC:
        raise ShieldError(f"shield: {where}: not a secfl volume (bad magic)")
    if number != FORMAT_NUMBER:
        raise ShieldError(f"shield: {where}: unsupported volume format {number}")
    if flags != 0:
        raise ShieldError(f"shield: {where}: header has unknown flags {flags:#06x}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ShieldError(f"shield: {where}: header has an invalid chunk size {chunk_size}")
    if m_off < HEADER_SIZE or not TAG_SIZE < m_len <= MAX_MANIFEST_SIZE:
        raise ShieldError(f"shield: {where}: header has an invalid manifest location")
    return Header(chunk_size, salt, check, m_off, m_len, tag, version)


def derive_keys(key: bytes, salt: bytes) -> Keys:
    """The volume's subkeys: HKDF-SHA256(key, salt) expanded to 96 bytes and split."""
    okm = HKDF(
        algorithm=hashes.SHA256(), length=3 * KEY_SIZE, salt=salt, info=b"secfl-shield/1 keys"
    ).derive(key)
    return Keys(okm[:32], okm[32:64], okm[64:])


def chunk_nonce(file_index: int, chunk_index: int) -> bytes:
    return file_index.to_bytes(4, "big") + chunk_index.to_bytes(8, "big")


def chunk_aad(salt: bytes, file_index: int, path: str, chunk_index: int, last: bool) -> bytes:
    return b"".join(
        (
            b"secfl-shield/1 chunk\x00",
            salt,
            file_index.to_bytes(4, "big"),
            chunk_index.to_bytes(8, "big"),
            b"\x01" if last else b"\x00",
            path.encode("utf-8"),
        )
    )


MANIFEST_NONCE: Final = bytes(12)


def manifest_aad(header: bytes) -> bytes:
    return b"secfl-shield/1 manifest\x00" + header


def chunk_count(size: int, chunk_size: int) -> int:
    """Chunks of a file: at least one (an empty file has one empty chunk)."""
    return max(1, -(-size // chunk_size))


def sealed_length(size: int, chunk_size: int) -> int:
    """Bytes a file of ``size`` takes in the volume."""
    return size + TAG_SIZE * chunk_count(size, chunk_size)


def canonical(manifest: dict[str, Any]) -> bytes:
    return canonical_json(manifest)


def tag_of(manifest_plaintext: bytes) -> str:
    return hashlib.sha256(manifest_plaintext).hexdigest()


#: What a new volume's file names may not hold: control characters (C0, DEL, C1), line
#: and paragraph separators, and bidi controls. A name holding ``ESC[8m`` or a newline
#: could forge or hide lines of a listing another key holder reviews (``secfl shield
#: ls`` also shows every name escaped, whoever wrote the volume).
_HIDING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def check_path(path: object, where: str, *, new: bool = False) -> str:
    """A relative "/"-separated NFC path without empty, "." or ".." parts; with
    ``new`` (a volume being written), without the characters of :data:`_HIDING`
    (volumes written before that rule still open)."""
    if not isinstance(path, str) or not path:
        raise ShieldError(f"shield: {where}: invalid path {path!r}")
    if len(path) > MAX_PATH_BYTES or path.count("/") >= MAX_PATH_DEPTH:
        raise ShieldError(
            f"shield: {where}: path {path[:80]!r}... is longer than {MAX_PATH_BYTES} characters or "
            f"deeper than {MAX_PATH_DEPTH} folders"
        )
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\x00" in path:
        raise ShieldError(f"shield: {where}: invalid path {path!r}")
    if new and _HIDING.search(path):
        raise ShieldError(
            f"shield: {where}: path {path!r} holds a control or invisible character; "
            "rename the file"
        )
    if unicodedata.normalize("NFC", path) != path:
        raise ShieldError(f"shield: {where}: path {path!r} is not NFC-normalised")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ShieldError(f"shield: {where}: path {path!r} is not valid UTF-8") from None
    return path


def _int(value: object, low: int, high: int, what: str, where: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ShieldError(f"shield: {where}: manifest has an invalid {what}: {describe(value)}")
    return value


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def check_manifest(
    plaintext: bytes, header: Header, where: str
) -> tuple[int, list[dict[str, Any]]]:
    """Validate an authenticated manifest fully; return its version and files.

    The manifest was sealed by the key holder, so a failure here means a bug or a
    forgery by a key holder; it is still refused cleanly rather than trusted.
    """
    try:
        doc = json.loads(plaintext.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):  # NaN; nesting past the stack
        raise ShieldError(f"shield: {where}: manifest is not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) != _MANIFEST_KEYS:
        raise ShieldError(f"shield: {where}: manifest has unexpected fields")
    if doc["format"] != FORMAT:
        raise ShieldError(f"shield: {where}: unsupported manifest format {doc['format']!r}")
    try:
        same = canonical(doc) == plaintext
    # nesting json.loads took, a level or two past json.dumps's; a number past a float
    # (1e400), a lone surrogate: values with no canonical form (ValueError and its
    # UnicodeEncodeError), refused in one line rather than as a traceback
    except (RecursionError, ValueError):
        same = False
    if not same:
        raise ShieldError(f"shield: {where}: manifest is not in canonical form")
    version = _int(doc["version"], 0, MAX_VERSION, "version", where)
    if _int(doc["chunk_size"], 1, MAX_CHUNK_SIZE, "chunk size", where) != header.chunk_size:
        raise ShieldError(f"shield: {where}: manifest and header disagree on the chunk size")
    files = doc["files"]
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise ShieldError(f"shield: {where}: manifest has an invalid file list")
    offset, previous = HEADER_SIZE, None
    for entry in files:
        if not isinstance(entry, dict) or set(entry) != _FILE_KEYS:
            raise ShieldError(f"shield: {where}: manifest has an invalid file entry")
        path = check_path(entry["path"], where)
        if previous is not None and path <= previous:
            raise ShieldError(f"shield: {where}: manifest paths are not sorted and distinct")
        previous = path
        _int(entry["mode"], 0, 0o7777, "mode", where)
        size = _int(entry["size"], 0, 1 << 62, "size", where)
        sha = entry["sha256"]
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            raise ShieldError(f"shield: {where}: manifest has an invalid digest for {path!r}")
        chunks = _int(entry["chunks"], 0, 1 << 62, "chunk count", where)
        if chunks != chunk_count(size, header.chunk_size):
            raise ShieldError(f"shield: {where}: manifest has a wrong chunk count for {path!r}")
        if _int(entry["offset"], 0, 1 << 62, "offset", where) != offset:
            raise ShieldError(f"shield: {where}: manifest has a wrong offset for {path!r}")
        offset += sealed_length(size, header.chunk_size)
    # Every path is a prefix-free leaf: "a" and "a/b" cannot both be files. Ordered with
    # "/" as the lowest character (NUL: no path holds one), the paths below a file come
    # right after it: one pass, where every prefix of every path cost time and memory
    # quadratic in a path's depth (found by a review).
    ordered = sorted(e["path"].replace("/", "\x00") for e in files)
    for here, after in itertools.pairwise(ordered):
        if after.startswith(here + "\x00"):
            below = after.replace("\x00", "/")
            raise ShieldError(f"shield: {where}: {below[:200]!r} is below a file")
    if offset != header.manifest_offset:
        raise ShieldError(f"shield: {where}: manifest and header disagree on the layout")
    return version, files


def check_tag(text: str, what: str) -> str:
    tag = text.strip().lower()
    if not _HEX64.fullmatch(tag):
        raise ShieldError(f"shield: {what} {text!r} is not 64 hex characters")
    return tag
