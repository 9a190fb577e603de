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
    """``close()`` while a commit waits for its ledger: the commit still hands its fsync
    to the fsync thread, commits, and then both threads end (the fsync thread was
    closed too early before: after the commit's fsync it kept an idle thread)."""

    class HeldLedger(MemoryLedger):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def increment(self, expect: int | None = None) -> int:
            self.release.wait(30)
            return super().increment(expect)

    ledger = HeldLedger()
    commit = Commit(
        ledger, directory=tmp_path / "ckpt", key=b"k" * 32, policy_digest="d", overlap=True
    )
    commit.begin(1, frozen(b"model-1"), {}, prepare=lambda: {})
    assert commit.wait_begun(10)
    commit.close()  # the run's end, while the commit is under way
    ledger.release.set()
    assert commit.settle() == 1 and ledger.value == 1
    for worker in (commit._worker, commit._syncer):
        thread = worker._thread
        if thread is not None:
            thread.join(10)
        assert worker._thread is None
