"""Turn a directory, or files held in memory, into one volume file (see
:mod:`secfl.shield._format`)."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secfl._internal import files
from secfl._internal.names import nfc_name
from secfl.errors import ShieldError
from secfl.shield import _format as fmt
from secfl.shield._keys import load_key

__all__ = ["encrypt_directory", "encrypt_files"]

#: Seals one file into the sink: (aead, salt, index, path, chunk_size, sink) to its
#: manifest entry, without the offset.
Sealer = Callable[[AESGCM, bytes, int, str, int, BinaryIO], dict[str, Any]]


def encrypt_directory(
    src: Path | str,
    out: Path | str,
    key: bytes,
    *,
    version: int = 1,
    chunk_size: int = fmt.DEFAULT_CHUNK_SIZE,
    overwrite: bool = True,
) -> str:
    """Encrypt every regular file below ``src`` into the volume ``out``; return its tag.

    Files are streamed chunk by chunk, so memory stays at a few chunks whatever the
    file sizes. Symbolic links, devices, FIFOs and sockets are refused (a volume
    holds regular files only; empty folders are not recorded), and so is a folder or
    file swapped for one after the listing: each file is opened below ``src`` one name
    at a time, following no link. ``version`` is the
    owner's release number of this data (raise it for every new release: it is in
    the manifest, hence in the tag, and an SPM counter can pin it). ``out`` is
    written to a temporary file next to it and renamed into place when complete,
    so it either holds a whole volume or is left as it was; it is created with
    mode 0600 and replaces an existing file of that name (never a link, folder,
    device, FIFO or socket), unless ``overwrite`` is
    false: then an existing ``out`` (even one created while encrypting) is left
    alone and the call fails.

    Nonces are never reused under one key: chunks are sealed with AES-256-GCM
    under a per-volume subkey HKDF-SHA256(key, salt) where the salt is 32 fresh
    random bytes per call, and the nonce of chunk ``j`` of file ``i`` is
    ``i || j`` (4 + 8 bytes), unique within the volume. Re-encrypting the same
    tree with the same key gets a new salt, hence new subkeys. Deterministic nonces
    need no per-chunk storage and have no birthday bound on the number of chunks.
    The associated data binds salt, file index and path, chunk index and a "last
    chunk" flag (see :mod:`secfl.shield._format`).
    """
    key = _check_settings(key, version, chunk_size)
    src, out = Path(src), Path(out)
    try:
        if not stat.S_ISDIR(os.stat(src).st_mode):
            raise ShieldError(f"shield: '{src}' is not a directory")
    except OSError as exc:
        raise ShieldError(f"shield: cannot read '{src}': {exc.strerror or exc}") from None
    top, target = Path(os.path.realpath(src)), Path(os.path.realpath(out))  # (no raise on a loop)
    if target == top or top in target.parents:
        raise ShieldError(f"shield: the volume '{out}' must not be inside '{src}'")
    try:
        # every file is opened below this folder, one name at a time (see _open_below)
        top_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ShieldError(f"shield: cannot read '{src}': {exc.strerror or exc}") from None
    try:
        paths = _walk(src)
        sealers = [
            (rel, functools.partial(_seal_file, top_fd, path, path.relative_to(src).parts))
            for rel, path in paths
        ]
        return _write(out, overwrite, key, f"'{src}'", sealers, version, chunk_size)
    finally:
        os.close(top_fd)


def encrypt_files(
    contents: Mapping[str, bytes | bytearray | memoryview],
    out: Path | str,
    key: bytes,
    *,
    version: int = 1,
    chunk_size: int = fmt.DEFAULT_CHUNK_SIZE,
    overwrite: bool = True,
) -> str:
    """:func:`encrypt_directory` of files held in memory (``contents``: a ``/``-separated
    path below the volume's top, to its bytes); return the volume's tag.

    No plaintext is written to any file on the way, so a process killed while it seals
    leaves none behind (a folder staged for :func:`encrypt_directory`, even in RAM,
    outlives a SIGKILL). The files get mode 0600."""
    key = _check_settings(key, version, chunk_size)
    named: dict[str, bytes | bytearray | memoryview] = {}
    for path, data in contents.items():
        rel = _path(path)
        if rel in named:
            raise ShieldError(f"shield: two files are named '{rel}' after normalisation")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ShieldError(f"shield: the content of '{rel}' is not bytes")
        named[rel] = data
    for rel in named:  # a file is not also a folder
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in named:
                raise ShieldError(f"shield: '{rel}' is below the file '{'/'.join(parts[:i])}'")
    sealers = [(rel, functools.partial(_seal_bytes, named[rel])) for rel in sorted(named)]
    return _write(Path(out), overwrite, key, "the files", sealers, version, chunk_size)


def _check_settings(key: bytes, version: int, chunk_size: int) -> bytes:
    key = load_key(key)
    if type(version) is not int or not 0 <= version <= fmt.MAX_VERSION:
        raise ShieldError(f"shield: version must be an integer from 0 to 2^63-1, not {version!r}")
    if type(chunk_size) is not int or not 1 <= chunk_size <= fmt.MAX_CHUNK_SIZE:
        raise ShieldError(
            f"shield: chunk size must be from 1 to {fmt.MAX_CHUNK_SIZE} bytes, not {chunk_size!r}"
        )
    return key


def _write(
    out: Path,
    overwrite: bool,
    key: bytes,
    what: str,
    sealers: Sequence[tuple[str, Sealer]],
    version: int,
    chunk_size: int,
) -> str:
    """The volume of ``sealers`` written to ``out`` (atomically, mode 0600); its tag.
    A symbolic link at ``out`` is refused, never followed: the folder may be the host's,
    and its target anything this process may write (one planted while the volume is
    written is replaced)."""
    if len(sealers) > fmt.MAX_FILES:
        raise ShieldError(f"shield: {what} hold more than 2^32 files")
    try:
        # neither followed (the host's folder) nor replaced unannounced; `Path.is_symlink`
        # raised on a name too long or a folder that cannot be searched (a traceback)
        mode = os.lstat(out).st_mode
        if stat.S_ISLNK(mode):
            raise ShieldError(f"shield: '{out}' is a symbolic link; name the file itself")
        # a device, FIFO or socket is no volume to replace: `-o /dev/null --force` run as
        # root replaced the system's /dev/null with a file of mode 0600 (found by a review)
        if not stat.S_ISREG(mode):
            what = "folder" if stat.S_ISDIR(mode) else _kind(mode)
            raise ShieldError(f"shield: '{out}' is a {what}, not a volume file; name a file")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ShieldError(f"shield: cannot write '{out}': {exc.strerror or exc}") from None
    try:
        with files.atomic_open(out, mode=0o600, replace=overwrite) as sink:
            return _seal_volume(sink, key, what, sealers, version, chunk_size)
    except FileExistsError:
        raise ShieldError(f"shield: '{out}' exists; not replacing it") from None
    except OSError as exc:
        raise ShieldError(f"shield: cannot write '{out}': {exc.strerror or exc}") from None


def _seal_volume(
    sink: BinaryIO,
    key: bytes,
    what: str,
    sealers: Sequence[tuple[str, Sealer]],
    version: int,
    chunk_size: int,
) -> str:
    """Write the volume of ``sealers`` into ``sink`` (header, chunks, manifest); its tag."""
    salt = os.urandom(fmt.SALT_SIZE)
    keys = fmt.derive_keys(key, salt)
    sink.write(bytes(fmt.HEADER_SIZE))
    entries: list[dict[str, Any]] = []
    offset = fmt.HEADER_SIZE
    aead = AESGCM(keys.chunk)
    for index, (rel, seal) in enumerate(sealers):
        entry = seal(aead, salt, index, rel, chunk_size, sink)
        entry["offset"] = offset
        offset += fmt.sealed_length(entry["size"], chunk_size)
        entries.append(entry)
    manifest = {"format": fmt.FORMAT, "version": version, "chunk_size": chunk_size}
    plaintext = fmt.canonical({**manifest, "files": entries})
    if len(plaintext) + fmt.TAG_SIZE > fmt.MAX_MANIFEST_SIZE:
        raise ShieldError(f"shield: {what} hold too many files for one volume")
    header = fmt.Header(
        chunk_size,
        salt,
        keys.check,
        offset,
        len(plaintext) + fmt.TAG_SIZE,
        bytes.fromhex(fmt.tag_of(plaintext)),
        version,
    ).pack()
    aad = fmt.manifest_aad(header)
    sink.write(AESGCM(keys.manifest).encrypt(fmt.MANIFEST_NONCE, plaintext, aad))
    sink.seek(0)
    sink.write(header)
    return fmt.tag_of(plaintext)


def _walk(top: Path) -> list[tuple[str, Path]]:
    """Regular files below ``top`` as (manifest path, filesystem path), sorted by path."""
    found: dict[str, Path] = {}

    def visit(directory: Path, prefix: str) -> None:
        try:
            with os.scandir(directory) as it:
                children = list(it)
        except OSError as exc:
            raise ShieldError(f"shield: cannot list '{directory}': {exc.strerror or exc}") from None
        for child in children:
            name = _name(child.name, directory)
            # what encrypt_files refuses in a new volume, refused here too (a name
            # with terminal escapes or a line break: found by a review)
            rel = fmt.check_path(f"{prefix}{name}", f"'{directory}'", new=True)
            path = directory / child.name
            try:
                mode = child.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                raise ShieldError(f"shield: cannot read '{path}': {exc.strerror or exc}") from None
            if stat.S_ISDIR(mode):
                visit(path, rel + "/")
            elif stat.S_ISREG(mode):
                if rel in found:
                    raise ShieldError(f"shield: two files are named '{rel}' after normalisation")
                found[rel] = path
            else:
                raise ShieldError(
                    f"shield: '{path}' is a {_kind(mode)}; a volume holds regular files only"
                )

    visit(top, "")
    return sorted(found.items())


#: The longest name of one file or folder (Linux's NAME_MAX): what a volume's files
#: must be extractable with.
_NAME_MAX = 255


def _path(path: str) -> str:
    """A volume path given by a caller, as :func:`_walk` would have recorded a file of
    that name below a folder: ``/``-separated names, each valid UTF-8 of at most 255
    bytes and not empty, ``.`` or ``..``, without NUL; NFC-normalised."""
    parts = path.split("/") if isinstance(path, str) else []
    names = [nfc_name(part) for part in parts]
    if (
        not names
        or any(n is None or n in ("", ".", "..") or "\x00" in n for n in names)
        or any(len(n.encode("utf-8")) > _NAME_MAX for n in names if n is not None)
    ):
        raise ShieldError(f"shield: {path!r} is not a path below the volume's top")
    return fmt.check_path("/".join(n for n in names if n is not None), "the files", new=True)


def _name(name: str, directory: Path) -> str:
    recorded = nfc_name(name)
    if recorded is None:
        raise ShieldError(f"shield: a name in '{directory}' is not valid UTF-8: {name!r}")
    return recorded


def _kind(mode: int) -> str:
    for test, what in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return what
    return "special file"


def _read_full(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    have = len(data)
    while have < n and (more := f.read(n - have)):
        parts.append(more)
        have += len(more)
    return b"".join(parts)


def _seal_bytes(
    data: bytes | bytearray | memoryview,
    aead: AESGCM,
    salt: bytes,
    index: int,
    rel: str,
    chunk_size: int,
    sink: BinaryIO,
) -> dict[str, Any]:
    """Encrypt ``data`` into ``sink`` as file ``rel``; its manifest entry (mode 0600)."""
    view = memoryview(data).cast("B")
    pieces = (bytes(view[i : i + chunk_size]) for i in range(0, len(view), chunk_size))
    size, digest, count = _seal_chunks(
        aead, salt, index, rel, lambda: next(pieces, b""), chunk_size, sink
    )
    return {"path": rel, "mode": 0o600, "size": size, "sha256": digest, "chunks": count}


def _seal_chunks(
    aead: AESGCM,
    salt: bytes,
    index: int,
    rel: str,
    read: Callable[[], bytes],
    chunk_size: int,
    sink: BinaryIO,
) -> tuple[int, str, int]:
    """Seal what ``read()`` gives (``chunk_size`` bytes a call, fewer only at the end)
    into ``sink`` as file ``index``; its size, SHA-256 and number of chunks."""
    digest = hashlib.sha256()
    size, chunk = 0, 0
    current = read()
    while True:
        following = read() if len(current) == chunk_size else b""
        last = not following
        digest.update(current)
        sink.write(
            aead.encrypt(
                fmt.chunk_nonce(index, chunk), current, fmt.chunk_aad(salt, index, rel, chunk, last)
            )
        )
        size += len(current)
        chunk += 1
        if last:
            return size, digest.hexdigest(), chunk
        current = following


def _open_below(top: int, names: Sequence[str], flags: int) -> int:
    """The file ``names`` below the folder ``top``, opened one name at a time with no
    link followed on the way: a folder swapped for a link after the folder was listed
    (by a user who may write in it) cannot lead outside it (found by a review: the
    owner's files the link led to were sealed into the volume)."""
    fd = top
    try:
        for name in names[:-1]:
            below = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            if fd != top:
                os.close(fd)
            fd = below
        return os.open(names[-1], flags, dir_fd=fd)
    finally:
        if fd != top:
            os.close(fd)


def _seal_file(
    top: int,
    path: Path,
    names: Sequence[str],
    aead: AESGCM,
    salt: bytes,
    index: int,
    rel: str,
    chunk_size: int,
    sink: BinaryIO,
) -> dict[str, Any]:
    """Encrypt the file ``names`` below ``top`` (``path``, for messages) into ``sink``;
    return its manifest entry (without the offset)."""
    try:
        # without blocking: a FIFO swapped in after the folder was listed is refused below,
        # not waited on (found by a review)
        flags = (
            os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)
        )
        fd = _open_below(top, names, flags | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ShieldError(
                f"shield: '{path}' changed while its folder was encrypted (a link or a file "
                "now stands where a folder or file was); encrypt the folder again"
            ) from None
        raise ShieldError(f"shield: cannot read '{path}': {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ShieldError(
                f"shield: '{path}' is a {_kind(st.st_mode)}; a volume holds regular files only"
            )
        os.set_blocking(fd, True)

        def read() -> bytes:
            try:
                return _read_full(f, chunk_size)
            except OSError as exc:
                raise ShieldError(f"shield: cannot read '{path}': {exc.strerror or exc}") from None

        size, digest, count = _seal_chunks(aead, salt, index, rel, read, chunk_size, sink)
    return {
        "path": rel,
        "mode": stat.S_IMODE(st.st_mode),
        "size": size,
        "sha256": digest,
        "chunks": count,
    }
