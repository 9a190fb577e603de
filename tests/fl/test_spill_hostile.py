"""Hostile review of the streamed-update path (the spill file and the window): a host
that cuts the spill file, fails its reads, or takes O_TMPFILE away; a slow disk; a
first piece that runs past the update; no descriptor left on any path. Each of the
failing ones failed on the code before its fix."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secfl.errors import FlError, TransportError
from secfl.fl import _spill
from secfl.fl._incoming import Receiver
from secfl.fl._spill import Spill
from secfl.fl.strategies import FedAvg, Update

from .test_exact_sum import fold, message, pieces_of, receive, same, spread_round
from .test_spill import linux


def _stalled_half_way(receiver: Receiver, parts: list[bytes], host: object) -> Iterator[bytes]:
    """The first half of ``parts``; then, every stretch so far spilled, ``host(spill)``
    acts on the file, and the connection breaks (so the half is taken out)."""
    yield from parts[: len(parts) // 2]
    owner = receiver._owner
    assert owner is not None and owner.spill is not None
    receiver._worker.submit(lambda: None).result()  # every stretch so far is spilled
    host(owner.spill)  # type: ignore[operator]
    raise TransportError("rpc: the connection broke")


@linux
@pytest.mark.timeout(60)
def test_a_spill_file_the_host_cuts_short_is_refused_and_the_sum_is_unusable(
    tmp_path: Path,
) -> None:
    """Another process (the host) opens the unlinked file through /proc and truncates
    it: the take-back fails authentication, the sum is unusable (fail closed)."""
    global_params, updates = spread_round(24, 2)
    receiver = Receiver(1 << 20, spill_dir=tmp_path, stretch=256)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)

    def cut(spill: Spill) -> None:
        path = f"/proc/{os.getpid()}/fd/{spill._fd}"
        subprocess.run(  # the host, in a process of its own
            [sys.executable, "-c", f"import os; os.truncate({path!r}, 1000)"], check=True
        )
        assert os.fstat(spill._fd).st_size == 1000

    parts = pieces_of(message(updates[0]))
    with pytest.raises(FlError, match=r"^aggregate: the spilled stretch at \d+ of the update "
                       r"from 'site-0' fails authentication"):  # fmt: skip
        receive(receiver, acc, global_params, updates[0], _stalled_half_way(receiver, parts, cut))
    assert acc.broken


@linux
def test_a_spill_file_that_cannot_be_read_back_is_one_line_and_the_sum_unusable(
    tmp_path: Path,
) -> None:
    """A read the kernel refuses (here the descriptor now names a folder: EISDIR; an
    I/O error is the same path) is a one-line FlError, not an OSError that escapes the
    round's refusal handling; the sum is unusable (fail closed)."""
    global_params, updates = spread_round(25, 2)
    receiver = Receiver(1 << 20, spill_dir=tmp_path, stretch=256)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)

    def unreadable(spill: Spill) -> None:
        folder = os.open(tmp_path, os.O_RDONLY)
        os.dup2(folder, spill._fd)
        os.close(folder)

    parts = pieces_of(message(updates[0]))
    with pytest.raises(FlError, match=r"^aggregate: cannot read back the spilled update from "
                       r"'site-0': Is a directory$"):  # fmt: skip
        receive(
            receiver, acc, global_params, updates[0],
            _stalled_half_way(receiver, parts, unreadable),
        )  # fmt: skip
    assert acc.broken


@pytest.mark.timeout(60)
def test_a_first_piece_that_runs_past_the_update_is_refused_and_taken_out() -> None:
    """The piece that completes the headers may carry more than the update's values
    (later pieces are held to the announced size): refused at once. It used to be
    fed into the window, and with a stretch or more beyond the values ``_submit``
    moved a full slot of nothing forever, under the receiver's lock (every stream
    and the round's close blocked)."""
    global_params, updates = spread_round(26, 2, size=100)
    receiver = Receiver(1 << 20, stretch=64)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    whole = b"".join(message(updates[0]))
    with pytest.raises(TransportError, match=r"the stream passes its limit of \d+ bytes"):
        receive(receiver, acc, global_params, updates[0], iter([whole + bytes(200)]))
    assert acc.exact.total == 0 and not acc.broken
    for update in updates:
        receive(receiver, acc, global_params, update, iter([b"".join(message(update))]))
    assert same(acc.finish(), fold(FedAvg(), global_params, updates))


def _open_under(folder: Path) -> list[str]:
    """What this process holds open in ``folder`` (deleted files too). Counting all of
    /proc/self/fd instead is flaky: a descriptor an earlier test left to the collector
    may close meanwhile and its number be reused."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(f"{folder}/"):
                found.append(fd)
    return found


@linux
def test_no_spill_descriptor_but_the_receivers_outlives_a_stream_on_any_path(
    tmp_path: Path,
) -> None:
    """/proc/self/fd before and after: accepted, broken, short, long, a bad value, the
    round closing, a stall, a full disk, a file altered on disk, no spill folder. The
    receiver keeps one spill file for all its streams, and closing it closes that."""
    global_params, updates = spread_round(27, 3)
    receiver = Receiver(1 << 20, spill_dir=tmp_path, stretch=128)

    def attempt(pieces: Iterator[bytes], acc: object, who: int = 1, **kw: object) -> None:
        with contextlib.suppress(FlError, TransportError):
            receiver.receive(
                pieces, acc, global_params, updates[who].sender,  # type: ignore[arg-type]
                lambda header: int(header["samples"]), 5.0, lambda header, commit: commit(), **kw,  # type: ignore[arg-type]
            )  # fmt: skip

    def fresh() -> object:
        acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
        receive(receiver, acc, global_params, updates[0], iter(pieces_of(message(updates[0]))))
        return acc

    parts = pieces_of(message(updates[1]))
    acc = fresh()
    attempt(iter(parts[: len(parts) // 2]), acc)  # short
    attempt(iter([*parts, b"x"]), acc)  # long
    attempt(_stalled_half_way(receiver, parts, lambda spill: None), acc)  # broken
    w = updates[1].params["w"].copy()
    w[-1] = float("nan")
    attempt(iter(pieces_of(message(Update("site-1", {**updates[1].params, "w": w}, 5)))), acc)
    # the round closes while a stream waits, and a stall taken out by the next stream
    for end in ("cancel", "stall"):
        holding, resume = threading.Event(), threading.Event()

        def slow(holding: threading.Event, resume: threading.Event) -> Iterator[bytes]:
            yield from parts[: len(parts) // 2]
            holding.set()
            resume.wait(30)
            yield from parts[len(parts) // 2 :]

        thread = threading.Thread(target=attempt, args=(slow(holding, resume), acc))
        thread.start()
        assert holding.wait(30)
        if end == "cancel":
            receiver.cancel()
        else:
            attempt(iter(pieces_of(message(updates[2]))), acc, 2, stall=0.0)
        resume.set()
        thread.join(30)
    # the host alters the file (the sum is then unusable: a fresh one after)
    attempt(_stalled_half_way(receiver, parts, lambda s: os.pwrite(s._fd, bytes(8), 0)), acc)
    assert acc.broken  # type: ignore[attr-defined]
    acc = fresh()
    # no spill folder at all (the host removed it): refused before any value is folded
    gone = Receiver(1 << 20, spill_dir=tmp_path / "gone", stretch=128)
    with pytest.raises(FlError, match=r"cannot make a spill file in .*gone: No such file"):
        gone.receive(
            iter(parts), acc, global_params, "site-1",  # type: ignore[arg-type]
            lambda header: int(header["samples"]), 5.0, lambda header, commit: commit(),
        )  # fmt: skip
    assert len(_open_under(tmp_path)) == 1  # the receiver's spill file
    assert list(tmp_path.iterdir()) == []
    receiver.close()
    assert _open_under(tmp_path) == []


@linux
def test_without_o_tmpfile_the_spill_file_loses_its_name_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback for file systems without O_TMPFILE (``mkstemp``, then ``unlink``):
    no name left, ciphertext only, read back as written, closed with the stream."""
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    spill = Spill(tmp_path, 1 << 16, "site-0")
    try:
        assert list(tmp_path.iterdir()) == []
        link = os.readlink(f"/proc/self/fd/{spill._fd}")
        assert link.startswith(str(tmp_path / ".secfl-spill-")) and link.endswith("(deleted)")
        assert os.fstat(spill._fd).st_mode & 0o777 == 0o600
        data = bytes(range(256)) * 8
        spill.write(0, memoryview(data))
        assert data[:64] not in os.pread(spill._fd, len(data), 0)
        assert spill.read(10) == (0, data)
    finally:
        spill.close()
    assert _open_under(tmp_path) == []


@pytest.mark.timeout(60)
def test_a_sender_held_up_by_a_slow_disk_is_not_taken_for_stalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A piece can wait for the fold worker (the window's slots all busy, the spill
    write slow: the host's disk). That wait is the aggregator's, not the sender's
    silence: the next stream to come must not take the first out as stalled once
    the piece is in. (The stall clock used to start when the piece arrived.)"""
    global_params, updates = spread_round(28, 2)
    receiver = Receiver(1 << 20, spill_dir=tmp_path, stretch=256)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    real = _spill._pwrite_all
    writing, disk = threading.Event(), threading.Event()

    def slow_disk(fd: int, data: memoryview, offset: int) -> None:
        writing.set()
        disk.wait(30)
        real(fd, data, offset)

    monkeypatch.setattr(_spill, "_pwrite_all", slow_disk)
    whole = b"".join(message(updates[0]))
    second_waits = threading.Event()
    stall = 2.0

    def first_pieces() -> Iterator[bytes]:
        yield whole[:4096]  # fills every slot: this piece waits for the worker
        second_waits.wait(30)  # the next piece comes once the second stream waits
        yield whole[4096:]

    errors: list[BaseException] = []

    def run(pieces: Iterator[bytes], who: int, alive: object = lambda: None) -> None:
        try:
            receiver.receive(
                pieces, acc, global_params, updates[who].sender,
                lambda header: int(header["samples"]), 30.0, lambda header, commit: commit(),
                alive=alive, stall=stall,  # type: ignore[arg-type]
            )  # fmt: skip
        except (FlError, TransportError) as exc:
            errors.append(exc)
        finally:
            second_waits.set()  # (the second stream is through: the first goes on)

    first = threading.Thread(target=run, args=(first_pieces(), 0))
    first.start()
    assert writing.wait(30)  # the first stream's piece now waits for the disk, holding the window
    second = threading.Thread(
        target=run, args=(iter(pieces_of(message(updates[1]))), 1, second_waits.set)
    )
    second.start()
    time.sleep(stall + 1.0)  # the disk is slow for longer than the stall limit
    disk.set()
    first.join(30)
    second.join(30)
    assert errors == []
    assert same(acc.finish(), fold(FedAvg(), global_params, updates))
