"""The take-back copy of a streamed update waits on disk sealed, in a file with no name:
altered, it is refused; the disk full, the stream fails and is taken out exactly;
the process killed, no plaintext is left anywhere."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secfl.errors import FlError, TransportError
from secfl.fl import _spill, _stream
from secfl.fl._incoming import Receiver
from secfl.fl._spill import Spill, SpillFile
from secfl.fl.strategies import FedAvg

from .test_exact_sum import (
    broken_after,
    fold,
    message,
    pieces_of,
    receive,
    same,
    spread_round,
    sums_of,
)

ROOT = Path(__file__).resolve().parents[2]


def test_a_stretch_reads_back_as_written_and_never_in_clear(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 1 << 16, "site-0")
    try:
        data = bytes(range(256)) * 16
        spill.write(0, memoryview(data))
        spill.write(len(data), memoryview(data))  # the same bytes again
        assert spill.read(100) == (0, data)
        assert spill.read(len(data) + 5) == (len(data), data)
        on_disk = os.pread(spill._fd, 2 * len(data), 0)
        assert data[:64] not in on_disk
        first, second = on_disk[: len(data)], on_disk[len(data) :]
        assert first != second  # another nonce for each stretch
        assert list(tmp_path.iterdir()) == []  # no name, ever
        with pytest.raises(FlError, match=r"no spilled stretch holds byte 8192"):
            spill.read(2 * len(data))
        with pytest.raises(FlError, match=r"a spilled stretch at 0 is out of place"):
            spill.write(0, memoryview(data))  # overwriting what was folded
        with pytest.raises(FlError, match=r"a spilled stretch at 65535 is out of place"):
            spill.write((1 << 16) - 1, memoryview(b"xy"))  # beyond the update's size
    finally:
        spill.close()
    spill.close()  # idempotent
    assert repr(spill) == "Spill(<key hidden>, 2 stretches)"


def test_streams_take_a_receivers_spill_file_in_turn_each_under_its_own_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file for every stream of a receiver (its pages stay in the page cache),
    each stream's stretches sealed under a key of its own: what a stream wrote is
    not readable as the next one's, and closing the receiver closes the file."""
    file = SpillFile(tmp_path)
    fd = file.descriptor()
    first, second = Spill(None, 1 << 16, "site-0", file=file), None
    try:
        data = bytes(range(256)) * 16
        first.write(0, memoryview(data))
        sealed = os.pread(fd, len(data), 0)
        first.close()
        assert os.fstat(fd).st_nlink == 0 and file.descriptor() == fd  # still open
        second = Spill(None, 1 << 16, "site-1", file=file)
        second.write(0, memoryview(data[:512]))
        assert os.pread(fd, 512, 0) != sealed[:512]  # another key
        assert second.read(0) == (0, data[:512])
        with pytest.raises(FlError, match=r"no spilled stretch holds byte 600"):
            second.read(600)  # the first stream's bytes there are not the second's
        # the first stream's sealed stretch, put back, does not open as the second's
        second._records[0] = (len(data), 0, second._records[0][2])
        os.pwrite(fd, sealed, 0)
        second._cache = None
        with pytest.raises(FlError, match=r"fails authentication"):
            second.read(0)
    finally:
        if second is not None:
            second.close()
        file.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    # and through a receiver: one descriptor for two streams, the sum exact
    global_params, updates = spread_round(31, 2)
    made: list[int] = []

    def counted(*args: object, **kwargs: object) -> Spill:
        spill = Spill(*args, **kwargs)  # type: ignore[arg-type]
        made.append(spill._fd)
        return spill

    monkeypatch.setattr(_stream, "Spill", counted)
    receiver = Receiver(1 << 20, spill_dir=tmp_path, stretch=256)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    for update in updates:
        receive(receiver, acc, global_params, update, iter(pieces_of(message(update))))
    assert len(made) == 2 and made[0] == made[1]
    assert same(acc.finish(), fold(FedAvg(), global_params, updates))
    receiver.close()
    with pytest.raises(OSError):
        os.fstat(made[0])


def test_a_closed_round_empties_the_spill_file_and_closing_always_closes_it(
    tmp_path: Path,
) -> None:
    """Between rounds the receiver's file holds nothing (no page cache, nothing to
    write back), unless a stream holds the window; and ``close`` closes the file even
    when taking the stream in progress out fails (the host altered the file)."""
    global_params, updates = spread_round(32, 3)
    receiver = Receiver(1 << 20, spill_dir=tmp_path, stretch=256)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    receive(receiver, acc, global_params, updates[0], iter(pieces_of(message(updates[0]))))
    fd = receiver._spill_file.descriptor()
    assert os.fstat(fd).st_size > 0
    receiver.idle()
    assert os.fstat(fd).st_size == 0
    parts = pieces_of(message(updates[1]))
    held = threading.Event()

    def half_then_wait() -> Iterator[bytes]:
        yield from parts[: len(parts) // 2]
        receiver._worker.submit(lambda: None).result()  # every stretch so far spilled
        held.set()
        time.sleep(30)  # the sender goes quiet; the stream keeps the window

    def sender() -> None:
        with contextlib.suppress(Exception):  # taken out when the receiver closes
            receive(receiver, acc, global_params, updates[1], half_then_wait())

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    assert held.wait(30)
    size = os.fstat(fd).st_size
    receiver.idle()  # a stream holds the window: its spilled stretches stay
    assert size > 0 and os.fstat(fd).st_size == size
    os.pwrite(fd, bytes(64), 0)  # the host alters them: the take-back fails...
    with pytest.raises(FlError, match=r"fails authentication"):
        receiver.close()
    with pytest.raises(OSError):  # ...and the file is closed all the same
        os.fstat(fd)


def test_a_spill_file_altered_on_disk_is_refused_and_the_sum_is_unusable(
    tmp_path: Path,
) -> None:
    global_params, updates = spread_round(21, 2)
    receiver = Receiver(1 << 20, spill_dir=tmp_path, stretch=256)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    parts = pieces_of(message(updates[0]))

    def tampered() -> Iterator[bytes]:
        yield from parts[: len(parts) // 2]
        owner = receiver._owner
        assert owner is not None and owner.spill is not None
        receiver._worker.submit(lambda: None).result()  # every stretch so far is spilled
        os.pwrite(owner.spill._fd, b"\x00" * 16, 300)  # the host flips a few bytes
        raise TransportError("rpc: the connection broke")

    with pytest.raises(FlError, match=r"fails authentication \(the file was altered on disk\)"):
        receive(receiver, acc, global_params, updates[0], tampered())
    assert acc.broken  # fail closed: this round's sum cannot be trusted
    with pytest.raises(FlError, match=r"the round's sum is unusable after an earlier failure"):
        receive(receiver, acc, global_params, updates[1], iter(pieces_of(message(updates[1]))))


def test_a_full_disk_fails_the_stream_and_takes_it_out_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    global_params, updates = spread_round(22, 3)
    receiver = Receiver(1 << 20, spill_dir=tmp_path, stretch=512)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    receive(receiver, acc, global_params, updates[0], iter(pieces_of(message(updates[0]))))
    never = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    never.add(updates[0])
    real = _spill._pwrite_all
    calls: list[int] = []

    def disk_fills(fd: int, data: memoryview, offset: int) -> None:
        calls.append(offset)
        if len(calls) == 12:  # the 12th stretch: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data, offset)

    monkeypatch.setattr(_spill, "_pwrite_all", disk_fills)
    with pytest.raises(FlError, match=r"cannot spill the update from 'site-1' to disk: No space"):
        receive(receiver, acc, global_params, updates[1], iter(pieces_of(message(updates[1]))))
    assert len(calls) >= 12
    assert sums_of(acc) == sums_of(never) and not acc.broken
    monkeypatch.setattr(_spill, "_pwrite_all", real)
    for update in updates[1:]:
        receive(receiver, acc, global_params, update, iter(pieces_of(message(update))))
    assert same(acc.finish(), fold(FedAvg(), global_params, updates))


@pytest.mark.parametrize(
    "stretch, spilled",
    [(2018, False), (2016, True), (4096, False)],
    ids=["exactly-two-slots", "just-past-them", "one-slot"],
)
@pytest.mark.parametrize("cut", [0.5, 0.97, 1.0], ids=["half", "near-the-end", "all-but-end"])
def test_an_update_within_the_window_is_kept_there_and_taken_out_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stretch: int, spilled: bool, cut: float
) -> None:
    """Values that fit in SLOTS - 1 slots never wrap around the window: no spill file,
    and the take-back reads them from the window; a byte more and they are spilled."""
    global_params, updates = spread_round(24, 3, size=1000)  # 4036 bytes of values
    made: list[Spill] = []

    def counted(*args: object, **kwargs: object) -> Spill:
        made.append(Spill(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(_stream, "Spill", counted)
    receiver = Receiver(1 << 20, spill_dir=tmp_path, stretch=stretch)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    receive(receiver, acc, global_params, updates[0], iter(pieces_of(message(updates[0]))))
    before = sums_of(acc)
    parts = [bytes([b]) for b in b"".join(message(updates[1]))]  # a byte a piece
    with pytest.raises(TransportError, match="the connection broke"):
        receive(
            receiver, acc, global_params, updates[1], broken_after(parts, int(len(parts) * cut))
        )
    assert sums_of(acc) == before and not acc.broken
    assert bool(made) is spilled
    receive(receiver, acc, global_params, updates[2], iter(pieces_of(message(updates[2]))))
    assert same(acc.finish(), fold(FedAvg(), global_params, [updates[0], updates[2]]))


# --- real processes ------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, resource, signal, sys, time
    sys.path.insert(0, {tests!r})
    from secfl.errors import FlError
    from secfl.fl._incoming import Receiver
    from secfl.fl.strategies import FedAvg
    from fl.test_exact_sum import fold, message, pieces_of, receive, same, spread_round, sums_of

    mode, spill_dir = sys.argv[1], sys.argv[2]
    global_params, updates = spread_round(23, 3, size=200_000)
    receiver = Receiver(4 << 20, spill_dir=spill_dir, stretch=1 << 14)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    if mode == "kill":
        parts = pieces_of(message(updates[0]))
        def stalls():
            yield from parts[: len(parts) * 3 // 4]
            receiver._worker.submit(lambda: None).result()  # all spilled so far
            print("ready", receiver._owner.spill._fd, flush=True)
            time.sleep(600)
        receive(receiver, acc, global_params, updates[0], stalls())
    else:  # "fsize": a real EFBIG from the kernel half-way through the stream
        receive(receiver, acc, global_params, updates[0], iter(pieces_of(message(updates[0]))))
        never = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
        never.add(updates[0])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, hard))
        try:
            receive(receiver, acc, global_params, updates[1],
                    iter(pieces_of(message(updates[1]))))
        except FlError as exc:
            print("refused:", exc, flush=True)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert sums_of(acc) == sums_of(never) and not acc.broken
        for update in updates[1:]:
            receive(receiver, acc, global_params, update, iter(pieces_of(message(update))))
        assert same(acc.finish(), fold(FedAvg(), global_params, updates))
        print("exact", flush=True)
    """
).format(tests=str(ROOT / "tests"))


def child(mode: str, spill_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(spill_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def plaintext_samples() -> list[bytes]:
    _, updates = spread_round(23, 3, size=200_000)
    values = updates[0].params["w"].tobytes()
    return [values[at : at + 32] for at in range(0, len(values) * 3 // 4 - 32, 20_000)]


linux = pytest.mark.skipif(sys.platform != "linux", reason="/proc, RLIMIT_FSIZE: Linux")


@linux
@pytest.mark.timeout(120)
def test_a_killed_aggregator_leaves_no_plaintext_on_disk(tmp_path: Path) -> None:
    samples = plaintext_samples()
    proc = child("kill", tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["ready"], line
        link = os.readlink(f"/proc/{proc.pid}/fd/{line[1]}")
        assert link.startswith(str(tmp_path)) and link.endswith("(deleted)"), link
        with open(f"/proc/{proc.pid}/fd/{line[1]}", "rb") as fh:  # what the host can read
            on_disk = fh.read()
        assert len(on_disk) >= 500_000  # three quarters of 800 kB of values, spilled
        assert not [s for s in samples if s in on_disk]  # ciphertext only
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert list(tmp_path.rglob("*")) == []  # nothing at all, let alone plaintext


@linux
@pytest.mark.timeout(120)
def test_a_write_the_kernel_refuses_half_way_is_taken_out_exactly(tmp_path: Path) -> None:
    proc = child("fsize", tmp_path)
    out, _ = proc.communicate(timeout=100)
    assert proc.returncode == 0, out
    assert out.splitlines() == [
        "refused: aggregate: cannot spill the update from 'site-1' to disk: File too large",
        "exact",
    ]
    assert list(tmp_path.iterdir()) == []
