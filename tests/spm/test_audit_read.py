"""Reading the newest audit entries backwards from an authenticated head: every entry
returned is authentic, and whatever was changed, removed, moved or rolled back on
the way is refused, naming the entry."""

from __future__ import annotations

from dataclasses import replace

import pytest

from secfl.errors import AuditError, IntegrityError
from secfl.spm._audit import GENESIS, AuditEntry, make_entry
from secfl.spm._audit_read import newest


def chain(n: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    for i in range(n):
        prev = (entries[-1].seq, entries[-1].hash) if entries else (0, GENESIS)
        event = "fl.round" if i % 3 == 0 else "counter.incremented"
        entries.append(make_entry(prev, event, "fed", {"i": i}))
    return entries


class Listed:
    """A source over a list: the head is given (as if authenticated), entries untrusted."""

    def __init__(self, entries: list[AuditEntry], head: tuple[int, str] | None = None) -> None:
        self.rows = entries
        self._head = head or (entries[-1].seq, entries[-1].hash)
        self.reads = 0

    def head(self) -> tuple[int, str]:
        return self._head

    def entries(self, after: int, limit: int) -> list[AuditEntry]:
        self.reads += 1
        return [e for e in self.rows if e.seq > after][:limit]


def test_the_newest_matching_entries_are_read_back_from_the_head() -> None:
    log = chain(2500)
    source = Listed(log)
    found, head = newest(source, 3, lambda e: e.event == "fl.round")
    assert head == (2500, log[-1].hash)
    assert [e.seq for e in found] == [2494, 2497, 2500]
    assert source.reads == 1  # one page back from the head was enough
    everything, _ = newest(Listed(log), None)
    assert everything == log


@pytest.mark.parametrize("where", [1, 1000, 1001, 2499, 2500])
def test_a_modified_entry_is_refused(where: int) -> None:
    log = chain(2500)
    log[where - 1] = replace(log[where - 1], detail={"i": -1})
    with pytest.raises(AuditError, match=f"^audit: entry {where} was modified"):
        newest(Listed(log), None)


def test_a_rehashed_entry_no_longer_chains() -> None:
    log = chain(10)
    forged = replace(log[4], detail={"i": -1})
    log[4] = replace(forged, hash=forged.computed_hash())
    with pytest.raises(AuditError, match="^audit: entry 5 does not chain to entry 6"):
        newest(Listed(log), None)
    last = replace(log[9], detail={"i": -1})
    log = [*chain(10)[:9], replace(last, hash=last.computed_hash())]
    with pytest.raises(AuditError, match="^audit: entry 10 does not chain to the authenticated"):
        newest(Listed(log, head=(10, chain(10)[9].hash)), 1)


def test_a_missing_or_moved_entry_is_refused() -> None:
    log = chain(10)
    with pytest.raises(AuditError, match="^audit: entry 4 is missing or out of place"):
        newest(Listed(log[:3] + log[4:]), None)
    with pytest.raises(AuditError, match="^audit: entry 10 is missing"):
        newest(Listed(log[:9], head=(10, log[9].hash)), None)


def test_a_log_rewritten_from_another_genesis_is_refused() -> None:
    log = chain(3)
    first = replace(log[0], prev_hash="1" * 64)
    first = replace(first, hash=first.computed_hash())
    second = replace(log[1], prev_hash=first.hash)
    second = replace(second, hash=second.computed_hash())
    third = replace(log[2], prev_hash=second.hash)
    third = replace(third, hash=third.computed_hash())
    with pytest.raises(AuditError, match="^audit: entry 1 does not start the log"):
        newest(Listed([first, second, third]), None)


def test_a_follower_sees_new_entries_and_refuses_a_rollback() -> None:
    log = chain(20)
    seen = (10, log[9].hash)
    found, head = newest(Listed(log), None, after=seen)
    assert [e.seq for e in found] == list(range(11, 21)) and head == (20, log[-1].hash)
    assert newest(Listed(log), None, after=head) == ([], head)
    with pytest.raises(IntegrityError, match="^rollback: the audit log's head went back"):
        newest(Listed(log[:15]), None, after=head)
    other = chain(20)  # same length, other content: a fork
    with pytest.raises(IntegrityError, match="^rollback: "):
        newest(Listed(other), None, after=head)
    # What the follower saw as entry 10 is not what the new entries chain to.
    with pytest.raises(AuditError, match="^audit: entry 10 changed since it was read"):
        newest(Listed(log), None, after=(10, other[9].hash))
