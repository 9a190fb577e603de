"""Decrypting a file's chunks on several threads, with bounded memory.

Why: reading a chunk is a positional read out of the page cache (a copy into
private memory, so that the bytes authenticated are the bytes decrypted) and an
AES-256-GCM decryption, each a few GB/s on one core, and both release the GIL
(``os.preadv`` and OpenSSL). One thread leaves the other cores idle.

Two ways, both through a :class:`Pipeline` and one process-wide pool:

- One read of many whole chunks (``readinto`` of a large buffer: a whole model
  file, or streaming with blocks of several chunks), :meth:`Pipeline.decrypt_chunks`.
  The chunks are split into one contiguous range per thread (the reader is one of
  them); each thread reads a chunk's ciphertext into its own scratch buffer and
  decrypts it straight into its slice of the caller's buffer, so no byte is
  copied twice, and a thread that is done takes chunks from the back of the
  largest range left (a busy machine delays no read for a thread that has not
  started). On by default from :data:`RANGE_MIN_BYTES` with two CPUs or more:
  it costs no more CPU per GB than one thread, and is faster when a core is free.
- Reading on chunk after chunk (reads of a chunk or less), the next chunks are
  decrypted ahead into buffers of the pipeline and copied into the reader's.
  That copy across cores costs about as much as the decryption, so it was slower
  than the reader alone on two cores: off unless ``SECFL_SHIELD_THREADS`` asks for
  it (:data:`~secfl.shield._threads.READ_AHEAD`), and the reader decrypts a chunk
  itself whenever no thread of the pool has started it yet.

Bounds. One pool for the process (:mod:`secfl.shield._threads`), of
:data:`~secfl.shield._threads.WORKERS` threads (the CPUs this process may use, at
most :data:`~secfl.shield._threads.MAX_WORKERS`). A pipeline has at most ``depth``
jobs in flight or decrypted ahead of its reader (:func:`depth_for`), so it holds
at most ``depth`` chunks of plaintext (within :data:`READ_AHEAD_BYTES`), and one
chunk of ciphertext scratch per thread working for it, whatever the file's size:
:func:`memory_limit`.

Order and failure. The reader sees the bytes, the digest and the first error
that the sequential path would: read-ahead jobs are taken in chunk order, and a
range read raises the error of the lowest chunk that failed (after one fails, no
chunk above it is started). A chunk that fails authentication has zeroed its own
output (:meth:`ChunkSource.open_chunk`); :meth:`Pipeline.decrypt_chunks` returns
or raises only once no thread writes into the caller's buffer any more, and
:meth:`Pipeline.abort` with ``wipe=True`` waits for every read-ahead job still
running and zeroes every plaintext buffer of the pipeline; the reader then
zeroes what the failed read was filling, before the one-line ShieldError goes up.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from secfl.shield import _threads
from secfl.shield._ranges import Ranges

if TYPE_CHECKING:
    from secfl.shield._chunk_source import ChunkSource, FileEntry

__all__ = [
    "RANGE_MIN_BYTES",
    "READ_AHEAD_BYTES",
    "Job",
    "Pipeline",
    "depth_for",
    "memory_limit",
]

#: Plaintext one reader's pipeline may hold, at most.
READ_AHEAD_BYTES: Final = 16 << 20
_TAG_SIZE: Final = 16

#: The smallest read that is split among threads: waking a thread costs ~50 us, 5%
#: of the ~1 ms one core takes for 4 MiB. Measured on 2 cores under heavy load
#: (bench_shield.py and paired trials, 2026-12-05): best runs 1.2-1.4x one thread
#: at 8-256 MiB, same CPU per GB; medians from 0.83x (8 MiB) to 1.14x (64 MiB).
RANGE_MIN_BYTES: Final = 4 << 20


def depth_for(buffer_size: int) -> int:
    """Jobs one pipeline may have in flight: enough to keep every worker busy while
    the reader takes the next chunk, within :data:`READ_AHEAD_BYTES`; 0 means none
    (read-ahead off, one CPU, or chunks too large to decrypt ahead)."""
    if _threads.WORKERS < 2 or not _threads.READ_AHEAD:
        return 0
    return min(2 * _threads.WORKERS, READ_AHEAD_BYTES // max(1, buffer_size))


def memory_limit(buffer_size: int) -> int:
    """The most bytes of buffers a pipeline of chunks of ``buffer_size`` allocates:
    the read-ahead's plaintext, and a ciphertext scratch per thread working for it
    (besides the one the reader lends)."""
    scratch = _threads.WORKERS + 1 if _threads.WORKERS >= 2 else 0
    return depth_for(buffer_size) * buffer_size + scratch * (buffer_size + _TAG_SIZE)


_NOTHING: Final = memoryview(b"")


@dataclass(slots=True)
class Job:
    """One chunk being decrypted into ``out``: a pipeline buffer, or the caller's."""

    chunk: int
    future: Future[None]
    buffer: bytearray | None  # set when the job reads ahead into a buffer of the pipeline
    out: memoryview


class Pipeline:
    """Chunks of one file decrypted by the pool, taken by its reader in order.

    Not thread-safe: one reader drives it (as with any file object). The jobs are
    consecutive chunks ``[head, tail)``; :meth:`submit` appends ``tail``, and
    :meth:`take` waits for ``head``.
    """

    def __init__(
        self,
        source: ChunkSource,
        index: int,
        entry: FileEntry,
        depth: int,
        buffer_size: int,
        scratch: bytearray | None = None,
    ):
        self._source = source
        self._index = index
        self._entry = entry
        self.depth = depth
        self._buffer_size = buffer_size
        self._jobs: deque[Job] = deque()
        self._tail = 0
        self._lock = threading.Lock()  # guards the scratch list, used by the workers
        # Free ciphertext buffers; the reader may lend its own (it uses it only when
        # no job is in flight).
        self._scratch: list[bytearray] = [scratch] if scratch is not None else []
        self._buffers: list[bytearray] = []  # free plaintext buffers
        self.scratch_made = 0
        self.buffers_made = 0

    @property
    def head(self) -> int | None:
        """The chunk :meth:`take` returns next, or None when nothing is in flight."""
        return self._jobs[0].chunk if self._jobs else None

    @property
    def tail(self) -> int | None:
        """The chunk :meth:`submit` takes next, or None when nothing is in flight."""
        return self._tail if self._jobs else None

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def has_room(self) -> bool:
        return len(self._jobs) < self.depth

    def submit(self, chunk: int, out: memoryview | None = None) -> None:
        """Start decrypting ``chunk`` into ``out``, or into a buffer of the pipeline.

        ``out`` (the caller's memory) must stay untouched until the job is taken or
        the pipeline aborted. ``chunk`` must follow the last job.
        """
        if self._jobs and chunk != self._tail:
            raise ValueError(f"chunk {chunk} does not follow chunk {self._tail - 1}")
        if not self.has_room():
            raise ValueError("the pipeline is full")
        buffer = None
        if out is None:
            if self._buffers:
                buffer = self._buffers.pop()
            else:
                buffer = bytearray(self._buffer_size)
                self.buffers_made += 1
            out = memoryview(buffer)[: self._plain_length(chunk)]
        job = Job(chunk, Future(), buffer, out)
        try:
            job.future = _threads.executor().submit(self._run, job)
        except RuntimeError:  # the interpreter is shutting down: decrypt here
            try:
                self._run(job)
                job.future.set_result(None)
            except Exception as exc:
                job.future.set_exception(exc)
        self._jobs.append(job)
        self._tail = chunk + 1

    def fill(self, start: int) -> None:
        """Read ahead: submit the chunks from ``start`` (or after the last job) on, up to
        the depth or the file's end."""
        chunk = self._tail if self._jobs else start
        while self.has_room() and chunk < self._entry.chunks:
            self.submit(chunk)
            chunk += 1

    def take(self, chunk: int, into: memoryview | None = None) -> Job:
        """Wait for ``chunk`` (the head) and return its job; hand it back with :meth:`release`.

        A job no thread has started yet is decrypted here instead, into ``into`` (the
        caller's memory, then ``job.buffer`` is None) when given: the bytes need not
        cross to another core, and a busy machine costs no wait. Raises the job's
        error (the pipeline is then aborted and wiped).
        """
        if self.head != chunk:
            raise ValueError(f"chunk {chunk} is not the next in the pipeline")
        job = self._jobs[0]
        try:
            if job.future.cancel():
                if into is not None and job.buffer is not None:
                    self._buffers.append(job.buffer)
                    job.buffer, job.out = None, into
                self._decrypt(job.chunk, job.out)
            else:
                job.future.result()
        except BaseException:
            self.abort(wipe=True)
            raise
        self._jobs.popleft()
        return job

    def decrypt_chunks(self, first: int, count: int, out: memoryview) -> None:
        """Decrypt the whole chunks ``[first, first + count)`` into ``out``, on every thread.

        Chunk ``c`` goes to ``out[(c - first) * chunk_size:]``, decrypted by whichever
        thread takes it; the reader is one of them, and does all of them if the pool
        is busy. Returns, or raises the error of the lowest chunk that failed, only
        once no thread writes into ``out`` any more. Nothing may be in flight.
        """
        if self._jobs:
            raise ValueError("chunks are being decrypted ahead")
        parts = max(1, min(_threads.WORKERS, count))
        work = Ranges(first, first + count, parts, out)
        helpers: list[Future[None]] = []
        try:
            try:
                pool = _threads.executor()
                for part in range(1, parts):
                    helpers.append(pool.submit(self._work, work, part))
            except RuntimeError:  # the interpreter is shutting down: the reader does all
                pass
            self._work(work, 0)
        finally:
            # waits for the helpers at work only: a cancelled one counts as done for
            # concurrent.futures only once a thread of a busy pool dequeues it
            work.settle(helpers)
        if work.error is not None:
            raise work.error

    def _work(self, work: Ranges, part: int) -> None:
        size = self._source.chunk_size
        while (chunk := work.next(part)) is not None:
            at = (chunk - work.first) * size
            try:
                self._decrypt(chunk, work.out[at : at + self._plain_length(chunk)])
            except BaseException as exc:
                work.fail(chunk, exc)  # the read fails, whichever thread this is
                if not isinstance(exc, Exception):
                    raise  # an interrupt of the reader goes up at once
            finally:
                if part != 0:  # a helper (no Ctrl-C reaches it): see Ranges.settle
                    work.done()

    def release(self, job: Job) -> None:
        """Give back a taken job's buffers for later jobs."""
        self._recycle(job)

    def abort(self, *, wipe: bool) -> None:
        """Cancel what has not started, wait for what has, and drop every job.

        Nothing writes into any job's ``out`` after this returns. ``wipe`` zeroes
        every plaintext buffer of the pipeline (on failure: no plaintext is left).
        """
        jobs, self._jobs = list(self._jobs), deque()
        _cancel_and_wait([job.future for job in jobs])
        for job in jobs:
            self._recycle(job)
        if wipe:
            for buffer in self._buffers:
                buffer[:] = bytes(len(buffer))

    def _run(self, job: Job) -> None:
        self._decrypt(job.chunk, job.out)

    def _decrypt(self, chunk: int, out: memoryview) -> None:
        # On a worker (or the reader): the ciphertext scratch is taken only while the
        # job runs, so a pipeline has at most one per thread of the pool, and one more.
        with self._lock:
            scratch = self._scratch.pop() if self._scratch else None
            if scratch is None:
                self.scratch_made += 1
        if scratch is None:
            scratch = bytearray(self._buffer_size + _TAG_SIZE)
        try:
            self._source.open_chunk(self._index, self._entry, chunk, scratch, out)
        finally:
            with self._lock:
                self._scratch.append(scratch)

    def _recycle(self, job: Job) -> None:
        if job.buffer is not None:
            self._buffers.append(job.buffer)
        # A cancelled job stays in the pool's queue until a thread skips it: it must
        # not keep a view of the caller's memory (which could not be resized then).
        job.out = _NOTHING

    def _plain_length(self, chunk: int) -> int:
        if chunk == self._entry.chunks - 1:
            return self._entry.size - chunk * self._source.chunk_size
        return self._source.chunk_size


def _cancel_and_wait(futures: list[Future[None]]) -> None:
    """Cancel ``futures`` and wait for those that had started, through any Ctrl-C that
    comes meanwhile (then raised). A cancelled one never runs; it counts as done for
    ``wait`` only once a thread of the pool dequeues it, which a busy pool delays."""
    interrupted: BaseException | None = None
    while True:
        try:
            _wait_through_interrupts([f for f in futures if not f.cancel()])
            break
        except BaseException as exc:  # an interrupt while the list was being made
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


def _wait_through_interrupts(futures: list[Future[None]]) -> None:
    """Wait for ``futures`` to end even if a Ctrl-C comes meanwhile, then raise it: a
    caller that wipes its buffer when the read raises must find no thread still
    writing into it (a wait cut short by the interrupt let a helper write a chunk
    of plaintext after the wipe)."""
    interrupted: BaseException | None = None
    while True:
        try:
            wait(futures)
            break
        except BaseException as exc:  # KeyboardInterrupt, SystemExit from a handler
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted
