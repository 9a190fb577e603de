"""A commit given up before its first step (its evaluation hung) never commits, and the
next one does not wait behind it: each commit has its own cancel, and a cancel leaves
the hung preparation its thread."""

from __future__ import annotations

import threading
from pathlib import Path

from secfl._internal.buffers import frozen
from secfl.fl._commit import Commit, MemoryLedger


def test_a_cancelled_commit_stays_cancelled_and_blocks_no_later_one() -> None:
    ledger = MemoryLedger()
    commit = Commit(ledger, directory=None, key=None, policy_digest="d", overlap=True)
    release = threading.Event()

    def hung() -> dict[str, object]:
        release.wait(30)  # the round's evaluation, stuck in task code
        return {}

    commit.begin(1, frozen(b"model-1"), {}, prepare=hung)
    assert not commit.wait_begun(0.1)
    assert commit.cancel()  # given up before its first step
    commit.begin(2, frozen(b"model-2"), {}, prepare=lambda: {})
    assert commit.wait_begun(10)  # not queued behind the hung evaluation
    assert commit.settle() == 1 and ledger.value == 1
    release.set()  # the hung evaluation ends now: its round must not commit after all
    commit.drain(10)
    threading.Event().wait(0.2)
    assert ledger.value == 1


def test_closed_while_a_commit_is_under_way_both_threads_end_after_it(tmp_path: Path) -> None:
    """``close()`` while a commit is still being prepared (before it wrote its checkpoint
    and handed the fsync thread its fsyncs): the commit still commits, and then both
    threads end. (The fsync thread was closed at once before: the commit's fsyncs then
    opened it again, and nothing closed it.)"""
    ledger = MemoryLedger()
    commit = Commit(
        ledger, directory=tmp_path / "ckpt", key=b"k" * 32, policy_digest="d", overlap=True
    )
    preparing, release = threading.Event(), threading.Event()

    def prepare() -> dict[str, object]:
        preparing.set()
        release.wait(30)  # the round's evaluation
        return {}

    commit.begin(1, frozen(b"model-1"), {}, prepare=prepare)
    assert preparing.wait(10)
    commit.close()  # the run's end, before the commit's first step
    release.set()
    assert commit.settle() == 1 and ledger.value == 1
    for worker in (commit._worker, commit._syncer):
        thread = worker._thread
        if thread is not None:
            thread.join(10)
        assert worker._thread is None
