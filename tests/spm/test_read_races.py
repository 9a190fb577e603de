"""A read that began before a commit sees the state before it: that is a consistent
snapshot, not a rollback. The SPM's floors (what it has seen, which nothing may go
back behind) are raised by every commit; a read whose snapshot predates the commit
that raised a floor must not be refused as if the database had been rolled back,
while a value behind a floor that was raised before the read began still is."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secfl.errors import IntegrityError
from secfl.spm._integrity import Floors
from secfl.spm._server import open_spm
from tests.spm.harness import Board, policy_document


@pytest.fixture
def spm(tmp_path: Path, sim: tuple[Path, bytes], board: Board) -> Iterator[Any]:
    spm = open_spm(tmp_path / "data", platform="simulated", sim_dir=sim[0])
    document = policy_document("fed", board, sim[1])
    spm.submit_policy(document, [s.model_dump() for s in board.sign(document, "alice", "bob")])
    yield spm
    spm.close()


def bump(spm: Any) -> int:
    with spm.store.transaction() as tx:
        value = int(tx.counters.increment("fed", "round"))
        tx.audit.append("counter.incremented", "fed", {"counter": "round", "value": value})
    return value


def test_a_read_that_began_before_a_commit_is_not_refused(spm: Any) -> None:
    assert bump(spm) == 1
    with spm.store.read() as tx:
        head = tx.audit.head()  # the snapshot begins here
        writer = threading.Thread(target=bump, args=(spm,))
        writer.start()
        writer.join(timeout=30)
        assert spm.store.integrity.floors.counters[("fed", "round")] == 2
        spm.store.check_head(tx, head)  # the head it read is behind the floor: stale
        assert tx.counters.get("fed", "round") == 1
        assert tx.counters.of_policy("fed") == {"round": 1}
    with spm.store.read() as tx:
        assert tx.counters.get("fed", "round") == 2
        spm.store.check_head(tx, tx.audit.head())


def test_a_value_behind_a_floor_raised_before_the_read_is_a_rollback() -> None:
    floors = Floors()
    floors.apply(("counter", "fed", "round", 5))
    since = floors.epoch
    with pytest.raises(IntegrityError, match="^rollback: counter 'round' of 'fed' is 4"):
        floors.check_counter("fed", "round", 4, since=since)
    floors.apply(("counter", "fed", "round", 6))  # a commit after the read began
    floors.check_counter("fed", "round", 5, since=since, learn=False)
    with pytest.raises(IntegrityError, match="^rollback: "):
        floors.check_counter("fed", "round", 5, since=floors.epoch)
    with pytest.raises(IntegrityError, match="^rollback: "):
        floors.check_counter("fed", "round", 5)  # a write transaction: no since
    floors.raise_head(10, "a" * 64)
    since = floors.epoch
    with pytest.raises(IntegrityError, match="^rollback: the database's audit log ends at"):
        floors.check_head(9, "b" * 64, since=since)
    floors.raise_head(11, "c" * 64)
    floors.check_head(10, "a" * 64, since=since)
