"""Tests of secfl.shield; helpers shared by its test modules."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secfl.shield import _format as fmt

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def write_tree(root: Path, files: dict[str, bytes | tuple[bytes, int]]) -> Path:
    """Create ``files`` (path -> content, or (content, mode)) below ``root``."""
    for rel, value in files.items():
        content, mode = value if isinstance(value, tuple) else (value, 0o644)
        path = root.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode)
    root.mkdir(parents=True, exist_ok=True)
    return root


def read_tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every regular file below ``root`` as path -> (content, permission bits)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o7777)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def reseal_manifest(volume: Path, key: bytes, mutate, body=None) -> None:  # type: ignore[no-untyped-def]
    """Rewrite a volume's manifest with ``mutate(plaintext) -> plaintext``, sealed properly.

    ``body(chunks) -> chunks`` may also rewrite the chunk region between header and
    manifest. This is what only a key holder (or a bug) could do; it tests the
    checks that come after authentication.
    """
    raw = bytearray(volume.read_bytes())
    header = fmt.unpack_header(bytes(raw[: fmt.HEADER_SIZE]), "test")
    keys = fmt.derive_keys(key, header.salt)
    sealed = bytes(raw[header.manifest_offset :])
    aead = AESGCM(keys.manifest)
    plaintext = aead.decrypt(
        fmt.MANIFEST_NONCE, sealed, fmt.manifest_aad(bytes(raw[: fmt.HEADER_SIZE]))
    )
    new = mutate(plaintext)
    chunks = bytes(raw[fmt.HEADER_SIZE : header.manifest_offset])
    if body is not None:
        chunks = body(chunks)
    new_header = fmt.Header(
        header.chunk_size,
        header.salt,
        keys.check,
        fmt.HEADER_SIZE + len(chunks),
        len(new) + 16,
        bytes.fromhex(fmt.tag_of(new)),
        header.version,
    ).pack()
    resealed = aead.encrypt(fmt.MANIFEST_NONCE, new, fmt.manifest_aad(new_header))
    volume.write_bytes(new_header + chunks + resealed)


def forge_chunk(
    volume_file: Path, k: int, text: bytes, key: bytes = KEY
) -> tuple[bytes, bytes, int]:
    """A key holder's other ciphertext for chunk ``k`` of a one-file volume: a valid
    AES-GCM encryption of ``text`` (padded with ``!`` or cut to the chunk's length) under
    the volume's own chunk key, salt, file, path and chunk index. Returns (the honest
    ciphertext, the forged one, their offset in the volume file)."""
    from secfl.shield import Volume

    raw = volume_file.read_bytes()
    header = fmt.unpack_header(raw[: fmt.HEADER_SIZE], "test")
    keys = fmt.derive_keys(key, header.salt)
    with Volume.open(volume_file, key) as volume:
        (entry,) = volume.files
    size = header.chunk_size
    last = k == entry.chunks - 1
    n = entry.size - k * size if last else size
    aad = fmt.chunk_aad(header.salt, 0, entry.path, k, last)
    forged = AESGCM(keys.chunk).encrypt(fmt.chunk_nonce(0, k), text.ljust(n, b"!")[:n], aad)
    at = entry.offset + k * (size + fmt.TAG_SIZE)
    return raw[at : at + len(forged)], forged, at


def put_bytes(volume_file: Path, at: int, data: bytes) -> None:
    """The host writes ``data`` at ``at`` in ``volume_file``, in place (between reads)."""
    fd = os.open(volume_file, os.O_WRONLY)
    try:
        os.pwrite(fd, data, at)
    finally:
        os.close(fd)
