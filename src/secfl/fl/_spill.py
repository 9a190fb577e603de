"""Where a streamed update's folded stretches wait, encrypted, in case it must be taken out.

A stream folded into the round's sum while it comes in (:mod:`secfl.fl._incoming`)
must be taken out again, exactly, if it fails half-way; that needs the very bytes
that were folded. Keeping them in memory costs a whole update per aggregator (a
model's worth of RAM at its peak). :class:`Spill` keeps them on disk instead, in
a form nobody else can read or alter unnoticed:

- the file is **unlinked from birth**: ``O_TMPFILE`` in ``directory`` (else, on a
  file system without it, ``mkstemp`` (0600) and ``unlink`` at once); it has no
  name anyone could open, and it vanishes with its last descriptor (closed by
  :meth:`Spill.close` on every path, and by the kernel when the process dies);
- each stretch is sealed with **AES-256-GCM** under a key drawn for this stream
  alone, that lives only in this object (never logged, never written), with the
  stretch's number as its nonce (a counter: no nonce ever repeats under a key) and
  its place (offset, length) as associated data. The ciphertext is written at the
  stretch's own offset (the file is at most the update's size); the 16-byte tags
  and places stay in memory. So a process killed with SIGKILL leaves no plaintext
  anywhere on disk, and a host that alters the file makes :meth:`Spill.read` fail
  (:class:`FlError`: the caller then treats the sum as unusable, fail closed);
- a write that fails (``ENOSPC``, ``EFBIG``, I/O error) raises :class:`FlError`
  before the stretch is recorded: the caller spills a stretch *before* folding it,
  so a stretch that could not be spilled was never added.

``directory`` should be on disk (the aggregator's checkpoint folder, else the
host's temporary folder: ``SECFL_HOST_TMPDIR``, which ``secfl run`` sets because it
points the workload's ``TMPDIR`` into its RAM folder, else ``TMPDIR``); on a RAM
file system (tmpfs) the file's pages would be memory again, only not the process's
own.

Not the project's :mod:`secfl._internal.aead` format on purpose: that one puts a
random nonce and the tag beside each ciphertext, and a counter nonce with the tag in
memory lets each stretch's ciphertext sit at its plaintext's offset.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import struct
import tempfile
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secfl.errors import FlError

__all__ = ["Spill", "SpillFile", "host_tempdir"]

TAG = 16
_AAD = b"secfl/spill/v1\n"


def host_tempdir() -> str:
    """Where a spill goes without a checkpoint folder: the host's temporary folder, on
    disk (what it holds is sealed), not the RAM folder ``secfl run`` gives as TMPDIR."""
    return os.environ.get("SECFL_HOST_TMPDIR") or tempfile.gettempdir()


class SpillFile:
    """The unlinked file the streams of one receiver spill to, one stream at a time,
    each from offset 0 under a key of its own (a stream's ciphertext is unreadable
    once it ended, and the next overwrites it).

    Kept open between streams, so its pages stay in the page cache: a fresh file per
    stream made the kernel allocate, and then drop, a page for every 4 KiB spilled (a
    fifth of the aggregator's CPU on a 100M model). :meth:`empty` gives them back when
    the round closes. On disk: at most the largest update's size, ciphertext only."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory or host_tempdir())
        self._fd = -1
        self._lock = threading.Lock()

    def descriptor(self) -> int:
        """The open file (made on first use, again after :meth:`close`)."""
        with self._lock:
            if self._fd < 0:
                self._fd = _open_unlinked(self.directory)
            return self._fd

    def empty(self) -> None:
        """Give its pages back (truncated to nothing) while no stream uses it: between
        rounds it holds no page cache, and nothing of it reaches the disk."""
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, 0)

    def close(self) -> None:
        """Close it (it vanishes: it never had a name); idempotent. No stream may be
        using it."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:  # a receiver dropped without close(): no fd outlives it
        self.close()


class Spill:
    """One stream's spilled stretches: ``write`` them in order (one writer: the fold
    worker), ``read`` any back (after the writer is done), ``close`` once. In a file of
    its own, or in ``file`` (a receiver's, which only one stream uses at a time)."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        limit: int,
        sender: str,
        *,
        file: SpillFile | None = None,
    ) -> None:
        self.sender = sender
        self.limit = limit
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._owned = file is None
        self._fd = (  # last: no leak
            _open_unlinked(Path(directory or host_tempdir())) if file is None else file.descriptor()
        )
        self._count = 0
        self._starts: list[int] = []
        self._records: list[tuple[int, int, bytes]] = []  # (length, nonce number, tag)
        self._cache: tuple[int, bytes] | None = None
        self._out = bytearray()  # the ciphertext of the stretch being written
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Spill(<key hidden>, {len(self._starts)} stretches)"

    def write(self, offset: int, data: memoryview) -> None:
        """Seal and write ``data`` (the stretch of values starting ``offset`` bytes into
        the update's values); it is recorded only once wholly written."""
        with self._lock:
            if self._fd < 0:
                raise FlError("aggregate: the spill file of the update is closed")
            end = self._starts[-1] + self._records[-1][0] if self._starts else 0
            if offset < end or offset + len(data) > self.limit:  # cannot happen: fail closed
                raise FlError(f"aggregate: a spilled stretch at {offset} is out of place")
            number = self._count
            self._count += 1  # never reused, even if this write fails
            if len(self._out) < len(data) + TAG:
                self._out = bytearray(len(data) + TAG)  # one per stream, reused
            sealed = memoryview(self._out)[: len(data) + TAG]
            self._aead.encrypt_into(_nonce(number), data, _aad(offset, len(data)), sealed)
            try:
                _pwrite_all(self._fd, sealed[: len(data)], offset)
            except OSError as exc:
                raise FlError(
                    f"aggregate: cannot spill the update from '{self.sender}' to disk: "
                    f"{exc.strerror or exc}"
                ) from None
            self._starts.append(offset)
            self._records.append((len(data), number, bytes(sealed[len(data) :])))

    def read(self, offset: int) -> tuple[int, bytes]:
        """The stretch holding byte ``offset``: (its start, its plaintext), read back and
        authenticated (:class:`FlError` if the file was altered or cut)."""
        with self._lock:
            at = bisect.bisect_right(self._starts, offset) - 1
            if at < 0 or offset >= self._starts[at] + self._records[at][0]:
                raise FlError(f"aggregate: no spilled stretch holds byte {offset}")
            start = self._starts[at]
            if self._cache is not None and self._cache[0] == start:
                return self._cache
            if self._fd < 0:
                raise FlError("aggregate: the spill file of the update is closed")
            length, number, tag = self._records[at]
            try:
                body = os.pread(self._fd, length, start) if length else b""
            except OSError as exc:  # an I/O error: as unusable as an altered file
                raise FlError(
                    f"aggregate: cannot read back the spilled update from '{self.sender}': "
                    f"{exc.strerror or exc}"
                ) from None
            try:
                plain = self._aead.decrypt(_nonce(number), body + tag, _aad(start, length))
            except InvalidTag:
                raise FlError(
                    f"aggregate: the spilled stretch at {start} of the update from "
                    f"'{self.sender}' fails authentication (the file was altered on disk)"
                ) from None
            self._cache = (start, plain)
            return self._cache

    def close(self) -> None:
        """Close the file (it vanishes: it never had a name), or leave a receiver's
        file to the next stream; idempotent."""
        with self._lock:
            fd, self._fd = self._fd, -1
            self._cache = None
            self._out = bytearray()
        if fd >= 0 and self._owned:
            # the file is unlinked: a failed close (EIO on a network disk) loses nothing
            # of ours, and must not turn an accepted update into an error
            with contextlib.suppress(OSError):
                os.close(fd)


def _nonce(number: int) -> bytes:
    return number.to_bytes(12, "big")


def _aad(offset: int, length: int) -> bytes:
    return _AAD + struct.pack(">QQ", offset, length)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        if done <= 0:  # cannot happen (an error raises): fail closed
            raise OSError(errno.EIO, "short write")
        data, offset = data[done:], offset + done


def _open_unlinked(directory: Path) -> int:
    """A read-write descriptor of a new file in ``directory`` that has no name."""
    flags = os.O_RDWR | os.O_CLOEXEC
    tmpfile = getattr(os, "O_TMPFILE", 0)
    try:
        if tmpfile:
            try:
                return os.open(directory, tmpfile | flags, 0o600)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
            # a file system without O_TMPFILE: a private name, gone at once
        fd, name = tempfile.mkstemp(prefix=".secfl-spill-", dir=directory)
        try:
            os.unlink(name)
        except BaseException:
            os.close(fd)
            raise
        return fd
    except OSError as exc:
        raise FlError(
            f"aggregate: cannot make a spill file in {directory}: {exc.strerror or exc}"
        ) from None
