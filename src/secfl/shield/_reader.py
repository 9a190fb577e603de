"""Reading one file of a volume lazily, chunk by chunk, with bounded memory."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
from typing import TYPE_CHECKING

from secfl.errors import ShieldError
from secfl.shield import _format as fmt
from secfl.shield import _parallel, _threads
from secfl.shield._chunk_source import ChunkSource, FileEntry

__all__ = ["VolumeFile"]

#: The most chunks of a file whose digest state is kept for a seek back (about 250
#: bytes each: 64 GiB of 1 MiB chunks; a key holder chooses the chunk size, down to
#: one byte). Past them each chunk gets a mark instead (:data:`MAX_MARKS`).
MAX_STATES = 1 << 16
#: The most chunks past :data:`MAX_STATES` whose mark is kept: a keyed 16-byte
#: SHA-256 of the chunk as the digest took it in (16 MiB at most, in one buffer). A
#: chunk read again must match its mark before any of it is returned (a comparison
#: deferred to a later state let a key holder's chunk through: found by a review).
#: Past them a chunk read again is refused.
MAX_MARKS = 1 << 20
_MARK = 16
_NO_STATE = (
    "was read again past the chunks whose digest is kept (open the file again to read it again)"
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class VolumeFile(io.RawIOBase):
    """A read-only, seekable view of one file of a volume.

    Every chunk is authenticated before any of its bytes are returned. When the
    file's chunks are decrypted in order (sequential reading), the whole-file SHA-256
    is compared with the manifest as the last chunk is decrypted, before its bytes are
    returned, and a chunk read again after a seek back must hash as it did the first
    time; random access beyond the next unread chunk skips that second check. The GCM
    tags stop anyone without the key; only the digest stops a key holder's other
    content under the same manifest (and tag). ``check_digest=False`` turns it off:
    reading is then several times faster where SHA-256 is slower than AES-GCM (most
    CPUs with AES-NI).

    Chunks are decrypted on all CPUs (:mod:`secfl.shield._parallel`): a read of
    several whole chunks (from :data:`~secfl.shield._parallel.RANGE_MIN_BYTES`) is
    split among threads, each decrypting straight into its part of the caller's
    buffer; with ``SECFL_SHIELD_THREADS`` set, once the file is read chunk after
    chunk, the next chunks are also decrypted ahead (bounded). A chunk that fails
    authentication raises the ShieldError the sequential path would, and leaves no
    plaintext in this file's buffers or in the part of the caller's buffer that the
    failed read was filling.
    """

    def __init__(
        self, source: ChunkSource, index: int, entry: FileEntry, *, check_digest: bool = True
    ):
        super().__init__()
        self._source = source
        self._index = index
        self._entry = entry
        self.name = entry.path
        self._pos = 0
        self._chunk_size = source.chunk_size
        self._cached = -1
        first = min(self._chunk_size, entry.size)
        self._cache = bytearray()  # one decrypted chunk, allocated on the first partial read
        self._cache_size = first
        self._scratch = bytearray(first + fmt.TAG_SIZE)
        self._hash = hashlib.sha256() if check_digest else None
        self._hashed = 0  # chunks [0, _hashed) went through the digest, in order
        #: The digest's state before each chunk hashed: a chunk read again (a seek back)
        #: must hash to what it did the first time.
        self._states: list[hashlib._Hash] = []  # before chunks [0, MAX_STATES]
        #: Past them, each chunk's mark (see :data:`MAX_MARKS`), under a key of this reader.
        self._marks = bytearray()
        self._mark_key = os.urandom(32)
        self._failed: str | None = None  # why the digest refused this file, once it did
        self._verified_empty = False
        self._last = -1  # the chunk decrypted last (a read of the next one is sequential)
        self._pipeline: _parallel.Pipeline | None = None
        self._depth = _parallel.depth_for(first)

    @property
    def entry(self) -> FileEntry:
        return self._entry

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._entry.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def _plain_length(self, chunk: int) -> int:
        if chunk == self._entry.chunks - 1:
            return self._entry.size - chunk * self._chunk_size
        return self._chunk_size

    def _account(self, chunk: int, data: memoryview) -> None:
        """Feed the whole-file digest with chunks decrypted in order; check it at the last.

        A chunk decrypted again after its first time (a seek back) is read from the
        disk again: what it holds now must hash as it did then, or a host working with a
        key holder could swap it between the two reads (found by a hostile review)."""
        if self._hash is None:
            return
        if self._failed is not None:  # refused once: refused for good (a retry passed)
            self._mismatch(data, self._failed)
        if chunk < self._hashed:
            self._check_again(chunk, data)
            return
        if chunk != self._hashed:
            return
        if self._hashed <= MAX_STATES:  # (the one before MAX_STATES: the state after it)
            self._states.append(self._hash.copy())
        if MAX_STATES <= self._hashed < MAX_STATES + MAX_MARKS:
            self._marks += self._mark(data)
        self._hash.update(data)
        self._hashed += 1
        if self._hashed == self._entry.chunks and not hmac.compare_digest(
            self._hash.hexdigest(), self._entry.sha256
        ):
            self._mismatch(data, "does not match its SHA-256 in the manifest")

    def _mark(self, data: memoryview) -> bytes:
        return hmac.digest(self._mark_key, data, "sha256")[:_MARK]

    def _check_again(self, chunk: int, data: memoryview) -> None:
        """``chunk``, read again, against what the digest took in the first time, before
        any of it is returned: by the digest's states around it, or past them by its
        mark; past the marks it is refused."""
        assert self._hash is not None
        if chunk < MAX_STATES:
            again = self._states[chunk].copy()
            again.update(data)
            # the digest's state after the chunk, the first time
            after = self._states[chunk + 1] if chunk + 1 < len(self._states) else self._hash
            same = hmac.compare_digest(again.digest(), after.digest())
        else:
            at = (chunk - MAX_STATES) * _MARK
            if at + _MARK > len(self._marks):
                self._mismatch(data, _NO_STATE)
            same = hmac.compare_digest(self._mark(data), bytes(self._marks[at : at + _MARK]))
        if not same:
            self._mismatch(data, "changed since it was first read")

    def _mismatch(self, data: memoryview, why: str) -> None:
        data[:] = bytes(len(data))
        if why != _NO_STATE:
            self._failed = why
        raise ShieldError(
            f"shield: {self._source.where}: {self._source.label(self._index, self._entry)} {why}"
        )

    def _decrypt_here(self, chunk: int, out: memoryview) -> None:
        self._source.open_chunk(self._index, self._entry, chunk, self._scratch, out)

    def _whole_chunks(self, chunk: int, room: int) -> int:
        """How many whole chunks from ``chunk`` on fit in ``room`` bytes."""
        left = self._entry.chunks - chunk
        count = min(room // self._chunk_size, left)
        if count == left - 1 and room - count * self._chunk_size >= self._plain_length(
            self._entry.chunks - 1
        ):
            count += 1  # the file's last chunk is shorter and fits too
        return count

    def _pipeline_for(self, chunk: int, count: int) -> _parallel.Pipeline | None:
        """The pipeline to read ``count`` chunks from ``chunk`` with, or None to decrypt
        them here: what was read ahead, several chunks at once, or reading on from the
        chunk before with more to read ahead. A single chunk read at random is
        decrypted here, and sets nothing going in the background."""
        if not self._depth:
            return None
        pipe = self._pipeline
        if pipe is not None and pipe.head is not None:
            if pipe.head == chunk:
                return pipe
            pipe.abort(wipe=False)  # a seek: what was read ahead is not needed
        reading_on = 0 <= self._last == chunk - 1 and chunk + 1 < self._entry.chunks
        if count < 2 and not reading_on:
            return None
        if pipe is None:
            pipe = self._pipeline = _parallel.Pipeline(
                self._source, self._index, self._entry, self._depth, self._cache_size, self._scratch
            )
        return pipe

    def _range_pipeline(self, chunk: int, count: int, total: int) -> _parallel.Pipeline | None:
        """The pipeline to split a read of ``count`` whole chunks from ``chunk`` (``total``
        bytes) among threads, or None: one CPU, a small read, or chunks decrypted ahead
        from ``chunk`` on (taken first, by :meth:`_pipeline_for`'s pipeline)."""
        if count < 2 or total < _parallel.RANGE_MIN_BYTES or _threads.WORKERS < 2:
            return None
        pipe = self._pipeline
        if pipe is not None and pipe.head is not None:
            if pipe.head == chunk:
                return None
            pipe.abort(wipe=False)  # a seek: what was read ahead is not needed
        if pipe is None:
            pipe = self._pipeline = _parallel.Pipeline(
                self._source, self._index, self._entry, self._depth, self._cache_size, self._scratch
            )
        return pipe

    def _read_chunks(self, chunk: int, count: int, out: memoryview) -> int:
        """Decrypt the whole chunks ``[chunk, chunk + count)`` into ``out``, in order."""
        end = chunk + count
        total = (count - 1) * self._chunk_size + self._plain_length(end - 1)
        ranged = self._range_pipeline(chunk, count, total)
        pipe = ranged if ranged is not None else self._pipeline_for(chunk, count)
        sequential = chunk == self._last + 1
        try:
            if ranged is not None:
                # Split among threads, each straight into its part of the caller's buffer.
                ranged.decrypt_chunks(chunk, count, out)
            for c in range(chunk, end):
                start = (c - chunk) * self._chunk_size
                target = out[start : start + self._plain_length(c)]
                if ranged is None:
                    self._fetch(pipe, c, chunk, end, out)
                self._account(c, target)
                self._last = c
        except BaseException:
            if pipe is not None:
                pipe.abort(wipe=True)  # no job writes into ``out`` any more
            out[:total] = bytes(total)
            self._wipe_cache()
            raise
        if chunk <= self._cached < end:
            # decrypted afresh (and accounted) here: a copy cached by an earlier read
            # at random may not be what the digest took in (found by a review)
            self._wipe_cache()
        if pipe is not None and sequential:
            pipe.fill(end)
        return total

    def _fetch(
        self, pipe: _parallel.Pipeline | None, c: int, chunk: int, end: int, out: memoryview
    ) -> None:
        """Chunk ``c`` of a read of ``[chunk, end)`` into its place in ``out``, here or
        from the read-ahead (which also starts on the chunks after it)."""
        start = (c - chunk) * self._chunk_size
        target = out[start : start + self._plain_length(c)]
        if pipe is None:
            self._decrypt_here(c, target)
            return
        # Chunks not read ahead yet go straight into the caller's buffer.
        nxt = c if pipe.tail is None else pipe.tail
        while pipe.has_room() and nxt < end:
            at = (nxt - chunk) * self._chunk_size
            pipe.submit(nxt, out[at : at + self._plain_length(nxt)])
            nxt += 1
        job = pipe.take(c, target)
        if job.buffer is not None:
            target[:] = job.out
        pipe.release(job)

    def _load_cache(self, chunk: int) -> None:
        """Decrypt ``chunk`` into the one-chunk cache (or take it from the read-ahead)."""
        self._cached = -1
        length = self._plain_length(chunk)
        pipe = self._pipeline_for(chunk, 1)
        try:
            if pipe is None:
                if not self._cache:
                    self._cache = bytearray(self._cache_size)
                view = memoryview(self._cache)[:length]
                self._decrypt_here(chunk, view)
            else:
                if pipe.head is None:
                    pipe.submit(chunk)
                job = pipe.take(chunk)
                # Swap buffers: the read-ahead's becomes the cache, without a copy.
                assert job.buffer is not None
                self._cache, job.buffer = job.buffer, self._cache or None
                pipe.release(job)
                view = memoryview(self._cache)[:length]
            self._account(chunk, view)
        except BaseException:
            if pipe is not None:
                pipe.abort(wipe=True)
            self._wipe_cache()
            raise
        self._cached = chunk
        self._last = chunk
        if pipe is not None:
            pipe.fill(chunk + 1)

    def _wipe_cache(self) -> None:
        self._cached = -1
        self._cache[:] = bytes(len(self._cache))

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._check_open()
        if self._source.closed:  # nothing decrypted ahead comes out after the volume closed
            raise ShieldError(f"shield: {self._source.where} is closed")
        out = memoryview(buffer).cast("B")
        size = self._entry.size
        if self._pos >= size:
            if size == 0 and not self._verified_empty:
                # An empty file still has one (empty) chunk: authenticate it.
                empty = memoryview(self._scratch)[:0]
                self._decrypt_here(0, empty)
                self._account(0, empty)
                self._verified_empty = True
            return 0
        if not out:
            return 0
        chunk, within = divmod(self._pos, self._chunk_size)
        if within == 0 and chunk != self._cached:
            count = self._whole_chunks(chunk, len(out))
            if count:
                # Whole chunks go straight into the caller's buffer, as many as fit.
                done = self._read_chunks(chunk, count, out)
                self._pos += done
                return done
        if chunk != self._cached:
            self._load_cache(chunk)
        elif chunk == self._hashed:
            # decrypted earlier out of order, served now in order: the digest takes it
            # in here, or every chunk after it went unchecked (found by a review)
            try:
                self._account(chunk, memoryview(self._cache)[: self._plain_length(chunk)])
            except BaseException:
                self._wipe_cache()
                raise
        n = min(len(out), self._plain_length(chunk) - within)
        out[:n] = memoryview(self._cache)[within : within + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        self._check_open()
        remaining = max(0, self._entry.size - self._pos)
        data = bytearray(remaining)
        view = memoryview(data)
        got = 0
        while got < remaining:
            n = self.readinto(view[got:])
            if not n:
                break
            got += n
        self.readinto(bytearray(1))  # at EOF: authenticates an empty file's chunk
        return bytes(data) if got == remaining else bytes(data[:got])

    @property
    def digest_checked(self) -> bool:
        """True once the whole-file SHA-256 was compared (and matched)."""
        return self._hash is not None and self._hashed == self._entry.chunks and not self._failed

    def close(self) -> None:
        if not self.closed:
            if self._pipeline is not None:
                self._pipeline.abort(wipe=False)
                self._pipeline = None
            self._cache = bytearray()
            self._scratch = bytearray()
            self._cached = -1
        super().close()

    def __repr__(self) -> str:
        return f"<VolumeFile {self._entry.path!r} size={self._entry.size}>"
