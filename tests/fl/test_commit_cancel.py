"""A commit given up before its first step (its evaluation hung) never commits, and the
next one does not wait behind it: each commit has its own cancel, and a cancel leaves
the hung preparation its thread."""

from __future__ import annotations

import threading

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
