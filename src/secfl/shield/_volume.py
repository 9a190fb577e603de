"""An open, authenticated volume: list, stream, verify and extract its files."""

from __future__ import annotations

import errno
import hmac
import io
import os
import stat
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from secfl._internal import files
from secfl.errors import ShieldError
from secfl.shield import _format as fmt
from secfl.shield._chunk_source import ChunkSource, FileEntry
from secfl.shield._extract import extract
from secfl.shield._folders import Folders
from secfl.shield._keys import load_key
from secfl.shield._reader import VolumeFile
from secfl.shield._sealed_manifest import open_manifest, pread_exact

__all__ = ["FileEntry", "Volume", "volume_tag"]

_BUFFER_SIZE = 1 << 16


class Volume:
    """A volume opened with its key; its header and manifest are authenticated.

    Files are read lazily: nothing but the manifest is decrypted until a file is
    read, and every chunk is authenticated when it is read. Use :meth:`open`.
    """

    def __init__(
        self,
        *,
        path: Path,
        fd: int,
        source: ChunkSource,
        tag: str,
        version: int,
        chunk_size: int,
        salt: bytes,
        files: list[dict[str, Any]],
    ) -> None:
        self._path = path
        self._source = source
        self._tag = tag
        self._version = version
        self._chunk_size = chunk_size
        self._salt = salt
        self._files = [FileEntry(**f) for f in files]
        self._index = {e.path: i for i, e in enumerate(self._files)}
        self._folders = Folders(e.path for e in self._files)
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(
        cls,
        path: Path | str,
        key: bytes | str,
        *,
        expected_tag: str | None = None,
        min_version: int | None = None,
        reveal_names: bool = True,
    ) -> Self:
        """Open ``path`` and authenticate its header and manifest with ``key``.

        ``expected_tag`` (what a policy or an SPM counter pins) must equal the
        volume's tag; ``min_version`` refuses a volume whose version is lower. Each
        refusal is a :class:`ShieldError` naming the check that failed.

        The manifest's names are as confidential as the files: ``reveal_names=False``
        (``secfl run``, whose errors the host reads) keeps them out of every refusal,
        which names a file by its place in the manifest instead. A host that tampers
        with one chunk at a time must learn nothing of the layout from the answers.
        """
        key = load_key(key)
        path = Path(path)
        where = f"volume '{path}'"
        expected = fmt.check_tag(expected_tag, "expected tag") if expected_tag is not None else None
        fd = _open_regular(path, where)
        try:
            return cls._authenticate(path, fd, key, where, expected, min_version, reveal_names)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _authenticate(
        cls,
        path: Path,
        fd: int,
        key: bytes,
        where: str,
        expected: str | None,
        min_version: int | None,
        reveal_names: bool,
    ) -> Self:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ShieldError(f"shield: {where} is not a regular file")
            raw = pread_exact(fd, fmt.HEADER_SIZE, 0)
            header = fmt.unpack_header(raw, where)
            end = header.manifest_offset + header.manifest_length
            if st.st_size < end:
                raise ShieldError(
                    f"shield: {where} is truncated ({st.st_size} bytes, its header says {end})"
                )
            if st.st_size > end:
                raise ShieldError(
                    f"shield: {where} has {st.st_size - end} unexpected bytes after its manifest"
                )
            keys = fmt.derive_keys(key, header.salt)
            if not hmac.compare_digest(keys.check, header.key_check):
                raise ShieldError(
                    f"shield: {where}: wrong key (the key check in the header does not match)"
                )
            plaintext = open_manifest(fd, header, keys.manifest, fmt.manifest_aad(raw), where)
        except OSError as exc:
            raise ShieldError(f"shield: cannot read {where}: {exc.strerror or exc}") from None
        version, files = fmt.check_manifest(plaintext, header, where)
        tag = fmt.tag_of(plaintext)
        if header.tag.hex() != tag or header.version != version:
            raise ShieldError(f"shield: {where}: the header's tag or version does not match")
        if expected is not None and not hmac.compare_digest(tag, expected):
            raise ShieldError(f"shield: {where}: volume tag {tag} is not the expected {expected}")
        if min_version is not None and version < min_version:
            raise ShieldError(
                f"shield: {where}: volume version {version} is older than the minimum {min_version}"
            )
        source = ChunkSource(
            fd,
            keys.chunk,
            header.salt,
            header.chunk_size,
            where,
            files=len(files),
            reveal_names=reveal_names,
        )
        return cls(
            path=path,
            fd=fd,
            source=source,
            tag=tag,
            version=version,
            chunk_size=header.chunk_size,
            salt=header.salt,
            files=files,
        )

    # -- what the manifest says -------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def tag(self) -> str:
        """Lowercase hex SHA-256 of the canonical manifest: what policies pin."""
        return self._tag

    @property
    def version(self) -> int:
        """The owner's release number of this data."""
        return self._version

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @property
    def volume_id(self) -> str:
        """The volume's random salt, hex: differs between two encryptions of the same tree."""
        return self._salt.hex()

    @property
    def files(self) -> list[FileEntry]:
        """Every file, sorted by path."""
        return list(self._files)

    @property
    def total_size(self) -> int:
        """Plaintext bytes of all files."""
        return sum(e.size for e in self._files)

    @property
    def closed(self) -> bool:
        return self._source.closed

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path in self._index

    def entry(self, path: str) -> FileEntry:
        """The manifest entry of ``path``; ShieldError when the volume has no such file."""
        try:
            return self._files[self._index[path]]
        except (KeyError, TypeError):
            raise ShieldError(
                f"shield: {self._source.where} has no file {self._asked(path)}"
            ) from None

    def is_dir(self, path: str) -> bool:
        """True for a folder implied by the files' paths ("" is the root)."""
        return self._folders.is_dir(path)

    def listdir(self, path: str = "") -> list[str]:
        """Names directly inside folder ``path``, sorted."""
        names = self._folders.entries(path) if isinstance(path, str) else None
        if names is None:
            raise ShieldError(f"shield: {self._source.where} has no folder {self._asked(path)}")
        return names

    def _asked(self, path: object) -> str:
        """A name a reader asked for, as a refusal shows it (not where names are hidden:
        what a program looks for tells about its code)."""
        return repr(path) if self._source.reveal_names else "of the name asked for"

    # -- reading ----------------------------------------------------------------

    def open_file(self, path: str, *, check_digest: bool = True) -> io.BufferedReader:
        """A lazy, seekable reader of ``path`` (see :class:`VolumeFile`).

        Memory is about two chunks, plus what is decrypted ahead on the other CPUs
        (bounded: ``secfl.shield._parallel.memory_limit``), whatever the file size.
        A tampered chunk raises ShieldError naming the file and chunk when it is reached.

        Every chunk is authenticated (AES-GCM binding the volume, the file, the chunk
        index and whether it is the last) under the authenticated manifest: against
        anyone without the key. Whoever holds the key (a data owner) can encrypt other
        bytes under the same layout, and only the file's SHA-256 in the manifest, which
        the tag a policy pins covers, tells them apart (found by a review: the default
        was off). So a file read from its start to its end is checked against it
        before its last bytes are returned, as ``read_bytes``, ``verify``, ``extract``
        and the importer check it. ``check_digest=False`` skips that (several times
        faster where SHA-256 is slower than AES-GCM) for a volume whose key holder the
        reader trusts with the content; reads that start past a part not yet read
        (random access) are never checked against the digest.
        """
        entry = self.entry(path)
        if self.closed:
            raise ShieldError(f"shield: {self._source.where} is closed")
        raw = VolumeFile(self._source, self._index[path], entry, check_digest=check_digest)
        # Smaller than a chunk on purpose: reads of a chunk or more go straight to the
        # raw file, which decrypts into the caller's buffer; small reads (readline...)
        # are served from this buffer, filled from the raw file's one-chunk cache.
        return io.BufferedReader(raw, buffer_size=_BUFFER_SIZE)

    def read_bytes(self, path: str) -> bytes:
        """The whole plaintext of ``path``, authenticated and digest-checked."""
        with self.open_file(path, check_digest=True) as f:
            return f.read()

    def verify(self) -> None:
        """Authenticate every chunk of every file and check every file's SHA-256."""
        if self.closed:
            raise ShieldError(f"shield: {self._source.where} is closed")
        buffer = bytearray(max(1, min(self._chunk_size, 1 << 24)))
        for index, entry in enumerate(self._files):
            with VolumeFile(self._source, index, entry) as raw:
                while raw.readinto(buffer):
                    pass
                if not raw.digest_checked:  # pragma: no cover - defensive
                    raise ShieldError(
                        f"shield: {self._source.where}: {self._source.label(index, entry)} was "
                        "not fully checked"
                    )

    def extract(self, dest: Path | str) -> None:
        """Decrypt every file below ``dest`` (owner side), restoring permission bits
        (read, write, execute, less the umask: never setuid, setgid or sticky).

        ``dest`` may exist; no existing file is overwritten (all targets are checked
        first) and no symbolic link is followed below it. A file appears under its
        name only once it is whole and authenticated, with its recorded mode: one
        whose chunk fails authentication, or a decryption killed half-way, leaves
        nothing under that name (see :mod:`secfl.shield._extract`)."""
        extract(self._source, self._files, self._chunk_size, Path(dest))

    # -- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Close the volume file; readers still open fail from now on."""
        self._source.close()  # waits for reads under way on the reader threads
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._files)} files"
        return f"<Volume {str(self._path)!r} tag={self._tag[:16]}… version={self._version} {state}>"


def volume_tag(path: Path | str, key: bytes | str) -> str:
    """The tag of the volume at ``path`` (its header and manifest are authenticated)."""
    with Volume.open(path, key) as volume:
        return volume.tag


def peek_tag(path: Path | str) -> str:
    """The tag a volume's header states, read without the key (not yet authenticated:
    :meth:`Volume.open` checks it against the manifest). ``secfl run`` uses it to
    measure code volumes before the SPM releases their keys."""
    where = f"volume '{path}'"
    fd = _open_regular(Path(path), where)
    try:
        raw = os.pread(fd, fmt.HEADER_SIZE, 0)
    except OSError as exc:
        raise ShieldError(f"shield: cannot read {where}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return fmt.unpack_header(raw, where).tag.hex()


def _open_regular(path: Path, where: str) -> int:
    """A descriptor of the regular file ``path``: a FIFO or a device given as a volume
    is refused at once (opened blocking, a FIFO hung ``secfl run`` for ever, after the
    SPM released the keys: found by a review)."""
    try:
        with files.open_regular(path) as fh:
            fd = os.dup(fh.fileno())
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # files.open_regular: not a regular file
            what = f"shield: {where} is not a regular file (a volume is one file)"
            raise ShieldError(what) from None
        raise ShieldError(f"shield: cannot open {where}: {exc.strerror or exc}") from None
    os.set_blocking(fd, True)
    return fd
