"""Decrypting a file's chunks on several threads, in order, with bounded memory.

Why: reading a chunk is a positional read out of the page cache (a copy) and an
AES-256-GCM decryption, each a few GB/s on one core, and both release the GIL
(``os.preadv`` and OpenSSL). One thread leaves the other cores idle; a
:class:`Pipeline` hands chunks to a process-wide pool so that a reader gets the
throughput of all of them. The price is CPU time: a chunk decrypted on another
core reaches the reader through a copy across cores, which costs about as much as
its decryption (``benchmarks/bench_shield.py`` prints GB per CPU-second). So the
reader decrypts a chunk itself whenever no thread of the pool has started it yet.

Bounds. One pool for the process, of :data:`WORKERS` threads (the CPUs this
process may use, at most :data:`MAX_WORKERS`). A pipeline has at most ``depth``
jobs in flight or decrypted ahead of its reader (:func:`depth_for`), so it holds
at most ``depth`` chunks of plaintext (within :data:`READ_AHEAD_BYTES`) and one
chunk of ciphertext scratch per job running (at most ``WORKERS``, and the
reader's), whatever the file's size: :func:`memory_limit`.

Order and failure. Jobs are taken in chunk order, so the reader sees the bytes,
the digest and the first error that the sequential path would. A job that fails
authentication has zeroed its own output (:meth:`ChunkSource.open_chunk`); the
reader then calls :meth:`Pipeline.abort` with ``wipe=True``, which waits for
every job still running (none writes after it returns) and zeroes every
plaintext buffer of the pipeline, before the one-line ShieldError goes up.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from secfl.shield._reader import ChunkSource, FileEntry

__all__ = [
    "MAX_WORKERS",
    "READ_AHEAD_BYTES",
    "WORKERS",
    "Job",
    "Pipeline",
    "depth_for",
    "memory_limit",
]

MAX_WORKERS: Final = 8
#: Plaintext one reader's pipeline may hold, at most.
READ_AHEAD_BYTES: Final = 16 << 20
_TAG_SIZE: Final = 16


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: Threads of the pool; 1 turns the pipeline off (chunks are then decrypted by the
#: reader). Off by default: on a quiet 2-core machine the pipeline read 3.2 GB/s
#: against 5.0 GB/s for the reader alone (bench_shield.py, 2026-12-05), the hand-off
#: across cores costing more than the second core gives. ``SECFL_SHIELD_THREADS``
#: turns it on (up to :data:`MAX_WORKERS`) where more cores make it pay.
def _configured_threads() -> int:
    text = os.environ.get("SECFL_SHIELD_THREADS", "1").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        logging.getLogger("secfl.shield").warning(
            "SECFL_SHIELD_THREADS=%.20r is not a positive integer: reading on one thread", text
        )
        return 1
    return min(int(text), _usable_cpus(), MAX_WORKERS)


WORKERS = _configured_threads()

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="secfl-shield")
        return _pool


def _forget_pool() -> None:
    # A forked child has none of the parent's threads: it starts a pool of its own.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def depth_for(buffer_size: int) -> int:
    """Jobs one pipeline may have in flight: enough to keep every worker busy while
    the reader takes the next chunk, within :data:`READ_AHEAD_BYTES`; 0 means none
    (one CPU, or chunks too large to decrypt ahead)."""
    if WORKERS < 2:
        return 0
    return min(2 * WORKERS, READ_AHEAD_BYTES // max(1, buffer_size))


def memory_limit(buffer_size: int) -> int:
    """The most bytes of buffers a pipeline of chunks of ``buffer_size`` allocates."""
    depth = depth_for(buffer_size)
    return depth * buffer_size + min(depth, WORKERS + 1) * (buffer_size + _TAG_SIZE)


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
            job.future = _executor().submit(self._run, job)
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

    def release(self, job: Job) -> None:
        """Give back a taken job's buffers for later jobs."""
        self._recycle(job)

    def abort(self, *, wipe: bool) -> None:
        """Cancel what has not started, wait for what has, and drop every job.

        Nothing writes into any job's ``out`` after this returns. ``wipe`` zeroes
        every plaintext buffer of the pipeline (on failure: no plaintext is left).
        """
        jobs, self._jobs = list(self._jobs), deque()
        for job in jobs:
            job.future.cancel()
        wait([job.future for job in jobs])
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
