"""One read of many chunks split among threads: the bytes and errors of one thread.

A ``readinto`` that covers two whole chunks or more (from ``RANGE_MIN_BYTES``) is
split into one contiguous range of chunks per thread, each decrypting straight into
its part of the caller's buffer (``Pipeline.decrypt_chunks``). These tests read the
same volume on 1, 2, 3 and 5 threads, at offsets and lengths around chunk
boundaries, tamper with chunks in every thread's range, and interrupt the reader.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secfl.errors import ShieldError
from secfl.shield import Volume, VolumeFile, _parallel, _threads, encrypt_directory
from secfl.shield import _format as fmt
from secfl.shield._chunk_source import ChunkSource
from secfl.shield._ranges import Ranges
from tests.shield import KEY, reseal_manifest, write_tree

CHUNK = 64
COUNT = 120  # chunks of the file "big" (the last one shorter)
SIZE = (COUNT - 1) * CHUNK + 29
SENTINEL = 0xA5

pytestmark = pytest.mark.timeout(120)


def use_threads(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """``workers`` threads (1: the reader alone), no read-ahead, every read of two
    chunks or more split (the tests' chunks are tiny), on a fresh pool."""
    if _threads._pool is not None:
        _threads._pool.shutdown(wait=True)
    monkeypatch.setattr(_threads, "_pool", None)
    monkeypatch.setattr(_threads, "WORKERS", workers)
    monkeypatch.setattr(_threads, "READ_AHEAD", False)
    monkeypatch.setattr(_parallel, "RANGE_MIN_BYTES", 0)


@pytest.fixture(autouse=True)
def fresh_pool() -> Iterator[None]:
    yield
    if _threads._pool is not None:
        _threads._pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = random.Random(23).randbytes(SIZE)
    root = tmp_path_factory.mktemp("ranges")
    encrypt_directory(
        write_tree(root / "src", {"big": data}), root / "v.vol", KEY, chunk_size=CHUNK
    )
    return root / "v.vol", data


def raw_file(v: Volume, name: str = "big", check_digest: bool = False) -> VolumeFile:
    return VolumeFile(v._source, v._index[name], v.entry(name), check_digest=check_digest)


class Recorder:
    """The thread of every chunk decryption, and the range reads made.

    In a range read, the reader's first chunk waits (up to 10 s) until a thread of
    the pool has decrypted one, so that the pool surely takes part however threads
    are scheduled.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[str] = []
        self.ranges = 0
        self.in_range = False
        self.pool_ran = threading.Event()
        open_chunk, split = ChunkSource.open_chunk, _parallel.Pipeline.decrypt_chunks

        def recording(source: ChunkSource, *args: Any, **kwargs: Any) -> None:
            name = threading.current_thread().name
            self.threads.append(name)
            if name.startswith("secfl-shield"):
                self.pool_ran.set()
            elif self.in_range:
                self.pool_ran.wait(10)
            open_chunk(source, *args, **kwargs)

        def counting(pipe: _parallel.Pipeline, *args: Any, **kwargs: Any) -> None:
            self.ranges += 1
            self.in_range = True
            try:
                split(pipe, *args, **kwargs)
            finally:
                self.in_range = False

        monkeypatch.setattr(ChunkSource, "open_chunk", recording)
        monkeypatch.setattr(_parallel.Pipeline, "decrypt_chunks", counting)

    @property
    def on_pool(self) -> bool:
        return any(t.startswith("secfl-shield") for t in self.threads)


def boundary_reads() -> list[tuple[int, int]]:
    """(offset, length) pairs at, just before and just after chunk boundaries."""
    edges = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 7 * CHUNK, 59 * CHUNK + 3]
    lengths = [2 * CHUNK - 1, 2 * CHUNK, 2 * CHUNK + 1, 5 * CHUNK, 33 * CHUNK + 7, SIZE, SIZE + 50]
    reads = [(o, n) for o in edges for n in lengths]
    reads += [(SIZE - 29 - CHUNK, 2 * CHUNK), (SIZE - 29 - 3 * CHUNK, SIZE)]  # up to the end
    return reads


def read_at(f: VolumeFile, offset: int, length: int) -> tuple[int, bytes]:
    """One readinto at ``offset``, into a buffer pre-filled with a sentinel."""
    f.seek(offset)
    buffer = bytearray([SENTINEL]) * length
    n = f.readinto(buffer)
    assert n is not None
    return n, bytes(buffer)


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_bit_exact_with_one_thread_around_chunk_boundaries(
    volume: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    path, data = volume
    with Volume.open(path, KEY) as v:
        use_threads(monkeypatch, 1)
        with raw_file(v) as f:
            sequential = [read_at(f, o, n) for o, n in boundary_reads()]
        use_threads(monkeypatch, workers)
        record = Recorder(monkeypatch)
        with raw_file(v) as f:
            parallel = [read_at(f, o, n) for o, n in boundary_reads()]
    assert parallel == sequential
    for (offset, length), (n, got) in zip(boundary_reads(), parallel, strict=True):
        assert 0 < n <= length and got[:n] == data[offset : offset + n], (offset, length)
        assert got[n:] == bytes([SENTINEL]) * (length - n)  # nothing written past the read
    assert record.ranges > 0 and record.on_pool


@pytest.mark.parametrize("check_digest", [False, True])
def test_whole_file_and_streaming_reads_on_1_or_n_threads_are_identical(
    volume: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch, check_digest: bool
) -> None:
    path, data = volume
    results: dict[int, list[bytes]] = {}
    with Volume.open(path, KEY) as v:
        for workers in (1, 2, 3, 5):
            use_threads(monkeypatch, workers)
            got = []
            with raw_file(v, check_digest=check_digest) as f:
                got.append(f.read())  # readall: one readinto of the whole file
                assert f.digest_checked == check_digest
            for block in (2 * CHUNK, 7 * CHUNK + 1, 40 * CHUNK):
                with raw_file(v, check_digest=check_digest) as f:
                    parts, buffer = [], bytearray(block)
                    while n := f.readinto(buffer):
                        parts.append(bytes(buffer[:n]))
                    got.append(b"".join(parts))
                    assert f.digest_checked == check_digest
            results[workers] = got
    assert all(r == results[1] for r in results.values())
    assert results[1] == [data] * 4


def tampered(volume: Path, tmp: Path, chunks: list[int]) -> Path:
    with Volume.open(volume, KEY) as v:
        offset = v.entry("big").offset
    raw = bytearray(volume.read_bytes())
    for chunk in chunks:
        raw[offset + chunk * (CHUNK + fmt.TAG_SIZE) + 3] ^= 0x40
    out = tmp / ("t" + "-".join(map(str, chunks)) + ".vol")
    out.write_bytes(raw)
    return out


@pytest.mark.parametrize(
    "bad",
    [[0], [1], [59], [60], [61], [COUNT - 1], [90, 30], [118, 2, 64]],
    ids=str,
)
def test_a_tampered_chunk_fails_the_read_and_leaves_no_plaintext(
    volume: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: list[int]
) -> None:
    """Tampering in any thread's range (with 3 threads, chunk 40 and 80 start the
    second and third): the sequential path's one-line error (the lowest bad chunk),
    and the read's part of the caller's buffer zeroed; bytes past it untouched."""
    path, data = volume
    broken = tampered(path, tmp_path, bad)
    expected = (
        f"shield: volume '{broken}': file 'big' chunk {min(bad)} failed authentication "
        "(tampered, moved, or from another volume)"
    )
    use_threads(monkeypatch, 1)
    with Volume.open(broken, KEY) as v, raw_file(v) as f, pytest.raises(ShieldError) as one:
        f.readinto(bytearray(SIZE))
    assert str(one.value) == expected
    use_threads(monkeypatch, 3)
    record = Recorder(monkeypatch)
    with Volume.open(broken, KEY) as v, raw_file(v) as f:
        buffer = bytearray([SENTINEL]) * (SIZE + 100)
        with pytest.raises(ShieldError) as many:
            f.readinto(buffer)
        assert str(many.value) == expected and "\n" not in str(many.value)
        assert buffer == bytes(SIZE) + bytes([SENTINEL]) * 100
        assert not any(f._cache)
        pipe = f._pipeline
        assert pipe is not None and pipe.in_flight == 0 and not pipe._buffers
        # The chunks before the bad one still read, and a read over it fails again.
        good = min(bad) * CHUNK
        if good:
            assert f.seek(0) == 0 and f.read(good) == data[:good]
        with pytest.raises(ShieldError, match=rf"'big' chunk {min(bad)} failed authentication \("):
            f.read(SIZE)
    assert record.ranges >= 2 and record.on_pool


def test_a_wrong_digest_wipes_the_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(5).randbytes(50 * CHUNK + 9)
    src = write_tree(tmp_path / "src", {"big": data})
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=CHUNK)

    def wrong_digest(plaintext: bytes) -> bytes:
        doc = json.loads(plaintext)
        doc["files"][0]["sha256"] = "0" * 64
        return fmt.canonical(doc)

    reseal_manifest(tmp_path / "v.vol", KEY, wrong_digest)
    use_threads(monkeypatch, 3)
    record = Recorder(monkeypatch)
    with Volume.open(tmp_path / "v.vol", KEY) as v, raw_file(v, check_digest=True) as f:
        buffer = bytearray(len(data))
        with pytest.raises(ShieldError, match=r"^shield: .*'big' does not match its SHA-256"):
            f.readinto(buffer)
        assert not any(buffer)
    assert record.ranges == 1 and record.on_pool


def test_an_interrupted_reader_stops_the_threads_and_wipes(
    volume: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt on the reader's thread goes up at once (it is not turned into a
    ShieldError); it returns only when no thread writes into the buffer any more."""
    path, data = volume
    use_threads(monkeypatch, 3)
    record = Recorder(monkeypatch)
    open_chunk = ChunkSource.open_chunk
    running = 0
    lock = threading.Lock()
    reader_chunks: list[int] = []
    reader_started = threading.Event()

    def interrupted(source: ChunkSource, index: int, entry: Any, chunk: int, *rest: Any) -> None:
        nonlocal running
        with lock:
            running += 1
        try:
            if not reader_chunks and not threading.current_thread().name.startswith("secfl"):
                reader_chunks.append(chunk)
                reader_started.set()
                record.pool_ran.wait(10)  # while the pool's threads decrypt theirs
                raise KeyboardInterrupt
            reader_started.wait(10)  # the GIL could let the pool take every chunk first
            open_chunk(source, index, entry, chunk, *rest)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(ChunkSource, "open_chunk", interrupted)
    with Volume.open(path, KEY) as v, raw_file(v) as f:
        buffer = bytearray(SIZE)
        with pytest.raises(KeyboardInterrupt):
            f.readinto(buffer)
        assert running == 0 and len(reader_chunks) == 1
        assert not any(buffer)
        assert f.tell() == 0 and f.read() == data  # nothing was cached or skipped
    assert record.on_pool


def test_a_ctrl_c_while_the_reader_waits_for_the_threads_leaves_no_plaintext_behind(
    volume: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT arrives while the reader, its own share done, waits for the pool's
    threads (the hostile review's case): the read raises KeyboardInterrupt and the
    buffer is wiped, and no thread writes into it afterwards (a wait cut short by
    the interrupt let slow helpers write two chunks of plaintext after the wipe)."""
    import signal
    import time

    path, _ = volume
    use_threads(monkeypatch, 3)
    open_chunk = ChunkSource.open_chunk
    main = threading.main_thread().ident

    def slow_helpers(source: ChunkSource, *args: Any) -> None:
        if threading.get_ident() != main:
            time.sleep(0.05)  # helpers on busy cores
        open_chunk(source, *args)

    monkeypatch.setattr(ChunkSource, "open_chunk", slow_helpers)
    real_settle = Ranges.settle
    fired: list[int] = []

    def settle_then_ctrl_c(work: Any, helpers: Any) -> None:
        if not fired:
            fired.append(1)
            threading.Timer(0.01, signal.pthread_kill, (main, signal.SIGINT)).start()
        real_settle(work, helpers)

    monkeypatch.setattr(Ranges, "settle", settle_then_ctrl_c)
    with Volume.open(path, KEY) as v, raw_file(v) as f:
        buffer = bytearray(SIZE)
        with pytest.raises(KeyboardInterrupt):
            f.readinto(buffer)
        assert fired and not any(buffer)
        time.sleep(0.5)  # any helper still running would have written by now
        assert not any(buffer)


def test_small_reads_stay_on_the_reader(
    volume: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = volume
    use_threads(monkeypatch, 3)
    monkeypatch.setattr(_parallel, "RANGE_MIN_BYTES", 10 * CHUNK + 1)
    threads: list[str] = []
    open_chunk = ChunkSource.open_chunk

    def recording(source: ChunkSource, *args: Any, **kwargs: Any) -> None:
        threads.append(threading.current_thread().name)
        open_chunk(source, *args, **kwargs)

    monkeypatch.setattr(ChunkSource, "open_chunk", recording)
    with Volume.open(path, KEY) as v, raw_file(v) as f:
        buffer = bytearray(10 * CHUNK)
        got = b""
        while n := f.readinto(buffer):
            got += buffer[:n]
    assert got == data
    assert set(threads) == {threading.current_thread().name}


@pytest.mark.parametrize(
    ("env", "expected"),
    [(None, (4, False)), ("1", (1, False)), ("3", (3, True)), ("16", (4, True)), ("x", (1, False)),
     ("\u00b2", (1, False)), ("9" * 5000, (1, False)), ("-3", (1, False))],
)  # fmt: skip
def test_threads_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: str | None, expected: tuple[int, bool]
) -> None:
    """Unset: every CPU for range reads, no read-ahead; N: N threads (at most the CPUs)
    with read-ahead; 1 or nonsense: the reader alone."""
    monkeypatch.setattr(_threads, "_usable_cpus", lambda: 4)
    if env is None:
        monkeypatch.delenv("SECFL_SHIELD_THREADS", raising=False)
    else:
        monkeypatch.setenv("SECFL_SHIELD_THREADS", env)
    assert _threads._configured_threads() == expected
