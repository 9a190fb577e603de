"""Chunks decrypted on the pool: the bytes and errors of one thread, bounded, wiped on failure."""

from __future__ import annotations

import _thread
import concurrent.futures
import io
import random
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secfl.errors import ShieldError
from secfl.shield import Volume, VolumeFile, _parallel, _threads, encrypt_directory
from secfl.shield import _format as fmt
from secfl.shield._chunk_source import ChunkSource
from tests.shield import KEY, write_tree

CHUNK = 64
WORKERS = 3  # not the machine's count: nothing may depend on 2
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 10 * CHUNK - 1, 10 * CHUNK, 37 * CHUNK + 5]


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh pool of WORKERS threads, whatever this machine has, decrypting ahead,
    and splitting reads of two chunks or more among them (the tests' chunks are tiny)."""
    monkeypatch.setattr(_threads, "WORKERS", WORKERS)
    monkeypatch.setattr(_threads, "READ_AHEAD", True)
    monkeypatch.setattr(_parallel, "RANGE_MIN_BYTES", 0)
    monkeypatch.setattr(_threads, "_pool", None)
    yield
    if _threads._pool is not None:
        _threads._pool.shutdown(wait=True)


def sequential_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_threads, "WORKERS", 1)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    rng = random.Random(17)
    files = {f"f{size}": rng.randbytes(size) for size in SIZES}
    files["big"] = rng.randbytes(200 * CHUNK + 7)
    root = tmp_path_factory.mktemp("parallel")
    tree: dict[str, bytes | tuple[bytes, int]] = dict(files)
    encrypt_directory(write_tree(root / "src", tree), root / "v.vol", KEY, chunk_size=CHUNK)
    return root / "v.vol", files


def raw_file(v: Volume, name: str, check_digest: bool = False) -> VolumeFile:
    entry = v.entry(name)
    return VolumeFile(v._source, v._index[name], entry, check_digest=check_digest)


def read_in(f: io.RawIOBase | io.BufferedIOBase, size: int) -> bytes:
    parts, buffer = [], bytearray(size)
    while n := f.readinto(buffer):
        parts.append(bytes(buffer[:n]))
    return b"".join(parts)


def on_pool_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the thread of every chunk decryption.

    The reader decrypts a chunk itself when no thread of the pool has started it;
    here it first waits (up to 10 s) for the pool to decrypt one, so that the pool
    surely takes part however the threads are scheduled.
    """
    names: list[str] = []
    pool_ran = threading.Event()
    open_chunk, decrypt = ChunkSource.open_chunk, _parallel.Pipeline._decrypt

    def recording(self: ChunkSource, *args: Any, **kwargs: Any) -> None:
        names.append(threading.current_thread().name)
        if names[-1].startswith("secfl-shield"):
            pool_ran.set()
        open_chunk(self, *args, **kwargs)

    def reader_waits(self: _parallel.Pipeline, *args: Any, **kwargs: Any) -> None:
        if not threading.current_thread().name.startswith("secfl-shield"):
            pool_ran.wait(10)
        decrypt(self, *args, **kwargs)

    monkeypatch.setattr(ChunkSource, "open_chunk", recording)
    monkeypatch.setattr(_parallel.Pipeline, "_decrypt", reader_waits)
    return names


READS = [1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 1, 8 * CHUNK, 1 << 20]


@pytest.mark.parametrize("read_size", READS)
@pytest.mark.parametrize("check_digest", [False, True])
def test_same_bytes_as_one_thread(
    pool: None,
    volume: tuple[Path, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    read_size: int,
    check_digest: bool,
) -> None:
    path, files = volume
    threads = on_pool_threads(monkeypatch)
    with Volume.open(path, KEY) as v:
        parallel = {}
        for name in files:
            with raw_file(v, name, check_digest) as f:
                parallel[name] = read_in(f, read_size)
                assert f.digest_checked == check_digest
        with v.open_file("big", check_digest=check_digest) as f:
            buffered = read_in(f, read_size)
        sequential_path(monkeypatch)
        for name in files:
            with raw_file(v, name, check_digest) as f:
                assert read_in(f, read_size) == parallel[name] == files[name], name
    assert buffered == files["big"]
    assert any(t.startswith("secfl-shield") for t in threads)


def test_random_access_and_seeks(
    pool: None, volume: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, files = volume
    data = files["big"]
    rng = random.Random(3)
    threads = on_pool_threads(monkeypatch)
    with Volume.open(path, KEY) as v, v.open_file("big") as f, raw_file(v, "big") as raw:
        for _ in range(400):
            pos = rng.choice([rng.randrange(len(data) + 10), rng.randrange(200) * CHUNK])
            n = rng.choice([1, CHUNK // 2, CHUNK, 2 * CHUNK, 5 * CHUNK + 3, 40 * CHUNK])
            f.seek(pos)
            assert f.read(n) == data[pos : pos + n]
            raw.seek(pos)
            got = bytearray(n)
            k = raw.readinto(got)
            assert got[:k] == data[pos : pos + k] and (k > 0 or pos >= len(data))
            if rng.random() < 0.3:  # then read on, sequentially, from there
                more = raw.read(3 * CHUNK)  # one readinto: perhaps short
                assert more == data[pos + k : pos + k + len(more)]
        f.seek(0)
        assert f.read() == data
    assert any(t.startswith("secfl-shield") for t in threads)


def tampered(volume: Path, tmp: Path, name: str, chunk: int) -> Path:
    with Volume.open(volume, KEY) as v:
        offset = v.entry(name).offset
    data = bytearray(volume.read_bytes())
    data[offset + chunk * (CHUNK + fmt.TAG_SIZE) + 5] ^= 0x01
    out = tmp / f"t{chunk}.vol"
    out.write_bytes(data)
    return out


def stream(v: Volume, got: bytearray, size: int) -> None:
    with raw_file(v, "big") as f:
        buffer = bytearray(size)
        while n := f.readinto(buffer):
            got += buffer[:n]


@pytest.mark.parametrize("bad", [1, 2, 100, 200])
@pytest.mark.parametrize("read_size", [CHUNK, 1, 3 * CHUNK])
def test_a_tampered_chunk_fails_closed_as_on_one_thread(
    pool: None,
    volume: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bad: int,
    read_size: int,
) -> None:
    path, files = volume
    broken = tampered(path, tmp_path, "big", bad)
    results = []
    for _ in ("parallel", "sequential"):
        got = bytearray()
        with Volume.open(broken, KEY) as v, pytest.raises(ShieldError) as info:
            stream(v, got, read_size)
        results.append((str(info.value), bytes(got)))
        sequential_path(monkeypatch)
    assert results[0] == results[1]
    message, before = results[0]
    assert message == (
        f"shield: volume '{broken}': file 'big' chunk {bad} failed authentication "
        "(tampered, moved, or from another volume)"
    )
    assert "\n" not in message
    assert before == files["big"][: len(before)]
    assert bad * CHUNK - len(before) < read_size  # everything before the bad chunk came out


@pytest.mark.parametrize("read_size", [CHUNK, 1, 1 << 20])
def test_no_plaintext_is_left_on_failure(
    pool: None, volume: tuple[Path, dict[str, bytes]], tmp_path: Path, read_size: int
) -> None:
    path, _ = volume
    broken = tampered(path, tmp_path, "big", 150)
    with Volume.open(broken, KEY) as v, raw_file(v, "big") as f:
        buffer = bytearray(read_size)
        f.seek(100 * CHUNK)  # start mid-file, then read on: decrypted ahead
        with pytest.raises(ShieldError, match=r"'big' chunk 150 failed authentication"):
            while f.readinto(buffer):
                pass
        pipe = f._pipeline
        assert pipe is not None and pipe.in_flight == 0
        assert pipe.buffers_made or read_size > 50 * CHUNK  # (else straight into the buffer)
        assert all(not any(b) for b in pipe._buffers)  # read-ahead wiped
        assert not any(f._cache)
        if read_size >= CHUNK:
            assert not any(buffer)  # the part of the caller's buffer being filled
        # A later read fails the same way (nothing was cached); earlier chunks still read.
        with pytest.raises(ShieldError, match=r"'big' chunk 150 failed authentication"):
            f.readinto(buffer)
        f.seek(0)
        assert f.readinto(bytearray(CHUNK)) == CHUNK


def test_one_read_of_many_chunks_decrypts_them_in_parallel_into_the_buffer(
    pool: None, volume: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, files = volume
    threads = on_pool_threads(monkeypatch)
    with Volume.open(path, KEY) as v, raw_file(v, "big") as f:
        f.seek(17 * CHUNK)  # random access: nothing decrypted ahead afterwards
        buffer = bytearray(50 * CHUNK)
        assert f.readinto(buffer) == 50 * CHUNK
        assert buffer == files["big"][17 * CHUNK : 67 * CHUNK]
        assert f._pipeline is not None and f._pipeline.in_flight == 0
        assert f._pipeline.buffers_made == 0  # straight into the caller's buffer
    assert len(threads) == 50 and any(t.startswith("secfl-shield") for t in threads)


def test_the_pipeline_is_bounded(
    pool: None, volume: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, files = volume
    depth = _parallel.depth_for(CHUNK)
    assert depth == 2 * WORKERS
    most = {"in_flight": 0, "running": 0}
    running = 0
    lock = threading.Lock()
    submit, open_chunk = _parallel.Pipeline.submit, ChunkSource.open_chunk

    def counting_submit(self: _parallel.Pipeline, *args: Any, **kwargs: Any) -> None:
        submit(self, *args, **kwargs)
        most["in_flight"] = max(most["in_flight"], self.in_flight)

    def counting_open(self: ChunkSource, *args: Any, **kwargs: Any) -> None:
        nonlocal running
        with lock:
            running += 1
            most["running"] = max(most["running"], running)
        try:
            open_chunk(self, *args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(_parallel.Pipeline, "submit", counting_submit)
    monkeypatch.setattr(ChunkSource, "open_chunk", counting_open)
    with Volume.open(path, KEY) as v:
        for size in (1, CHUNK, 3 * CHUNK, 1 << 20):
            with raw_file(v, "big") as f:
                assert read_in(f, size) == files["big"]
                pipe = f._pipeline
                assert pipe is not None
                assert pipe.buffers_made <= depth
                assert pipe.scratch_made <= WORKERS  # one per thread, besides the one it borrows
    assert 0 < most["in_flight"] <= depth
    assert most["running"] <= WORKERS + 1  # the pool's threads, and the reader


def test_memory_stays_within_the_limit(pool: None, tmp_path: Path) -> None:
    chunk = 64 << 10
    src = write_tree(tmp_path / "src", {"f": random.Random(5).randbytes(8 << 20)})
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=chunk)
    with Volume.open(tmp_path / "v.vol", KEY) as v:
        for size in (chunk, 1000):
            buffer = bytearray(size)
            tracemalloc.start()
            try:
                with v.open_file("f") as f:
                    while f.readinto(buffer):
                        pass
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            # read-ahead, plus the reader's cache and scratch, plus bookkeeping
            assert peak < _parallel.memory_limit(chunk) + 2 * chunk + (256 << 10), peak


def test_closing_the_volume_with_chunks_in_flight(
    pool: None, volume: tuple[Path, dict[str, bytes]]
) -> None:
    path, files = volume
    v = Volume.open(path, KEY)
    f = raw_file(v, "big")
    assert f.read(CHUNK) + f.read(CHUNK) == files["big"][: 2 * CHUNK]
    assert f._pipeline is not None and f._pipeline.in_flight  # decrypting ahead
    v.close()  # waits for the reads under way on the pool
    with pytest.raises(ShieldError, match=r"is closed$"):
        while f.read(CHUNK):
            pass
    f.close()


def test_one_cpu_means_no_pool(
    monkeypatch: pytest.MonkeyPatch, volume: tuple[Path, dict[str, bytes]]
) -> None:
    path, files = volume
    sequential_path(monkeypatch)
    threads = on_pool_threads(monkeypatch)
    with Volume.open(path, KEY) as v, v.open_file("big") as f:
        assert f.read() == files["big"]
    assert set(threads) == {threading.current_thread().name}


def test_a_busy_pool_leaves_the_work_to_the_reader(
    pool: None, volume: tuple[Path, dict[str, bytes]]
) -> None:
    """With every thread of the pool taken, the reader decrypts the chunks itself (no
    wait), and no job left in the pool's queue keeps a view of the caller's buffer."""
    path, files = volume
    free = threading.Event()
    executor = _threads.executor()
    blockers = [executor.submit(free.wait, 60) for _ in range(WORKERS)]
    try:
        with Volume.open(path, KEY) as v, raw_file(v, "big") as f:
            buffer = bytearray(100 * CHUNK)
            assert f.readinto(buffer) == 100 * CHUNK
            assert buffer == files["big"][: 100 * CHUNK]
            buffer.extend(b"resizable")  # BufferError while a view is exported
            small = bytearray(CHUNK)
            for c in range(100, 110):  # reading on: decrypted ahead, then taken back
                assert f.readinto(small) == CHUNK
                assert small == files["big"][c * CHUNK : (c + 1) * CHUNK]
            small.extend(b"resizable")
            # the reads waited for no thread of the pool: every one is still blocked
            # (they waited until a thread dequeued the cancelled helpers: 10 s here)
            assert not any(blocker.done() for blocker in blockers)
            free.set()  # before close, which waits for the jobs queued behind the blockers
    finally:
        free.set()
        for blocker in blockers:
            blocker.result()


def test_no_plaintext_written_after_an_interrupted_read(
    pool: None, volume: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C anywhere in the reader's clean-up leaves no plaintext behind. Found by a
    hostile review: the wait for the helpers survived an interrupt, but the code before it
    (cancelling the helpers, building the list of those to wait for) did not, so a Ctrl-C
    that landed there returned without waiting for a helper at work, which then wrote its
    chunk's plaintext into the caller's buffer after the reader had wiped it. The helpers
    are now counted by the chunks they took (``Ranges.settle``). Here the Ctrl-C comes
    (``_thread.interrupt_main``) right after the first ``cancel()`` that finds a helper
    running."""
    path, _ = volume
    open_chunk = ChunkSource.open_chunk
    helper_busy = threading.Event()
    slow_done = threading.Event()

    def slow_helper(self: ChunkSource, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread().name.startswith("secfl-shield") and not helper_busy.is_set():
            helper_busy.set()
            time.sleep(0.5)  # a chunk being decrypted when the reader gives up
            open_chunk(self, *args, **kwargs)
            slow_done.set()
            return
        if threading.current_thread() is threading.main_thread():
            helper_busy.wait(5)
        open_chunk(self, *args, **kwargs)

    cancel = concurrent.futures.Future.cancel
    fired: list[bool] = []

    def cancel_then_ctrl_c(self: concurrent.futures.Future[Any]) -> bool:
        done = cancel(self)
        if not done and not fired and threading.current_thread() is threading.main_thread():
            fired.append(True)
            _thread.interrupt_main()  # the operator's Ctrl-C, arriving now
        return done

    monkeypatch.setattr(ChunkSource, "open_chunk", slow_helper)
    monkeypatch.setattr(concurrent.futures.Future, "cancel", cancel_then_ctrl_c)
    with Volume.open(path, KEY) as v, raw_file(v, "big") as f:
        buffer = bytearray(100 * CHUNK)
        with pytest.raises(KeyboardInterrupt):
            f.readinto(buffer)
        assert fired
        wiped = bytes(buffer)
        assert wiped == bytes(len(buffer)), "the reader wiped the buffer"
        slow_done.wait(5)
        time.sleep(0.1)
        leaked = sum(1 for b in buffer if b)
        assert leaked == 0, (
            f"{leaked} bytes of plaintext were written into the caller's buffer after "
            "readinto raised KeyboardInterrupt and wiped it"
        )
