"""A page of ``GET /v1/audit`` is bounded in bytes, not only in entries: anyone who can
reach the SPM asks for 10,000 entries, and an aggregator's round events may hold 256 KiB
each, so one request made the SPM build an answer of gigabytes in its memory. A page now
ends at :data:`PAGE_CHARS` of detail, and readers page on (`secfl audit show` still
verifies the whole chain)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from secfl.spm._audit import PAGE_CHARS
from secfl.spm._store import Store
from secfl.spm.client import SpmClient
from tests.clirun import secfl
from tests.spm.harness import Board, SpmProcess, spm_with_policy

pytestmark = pytest.mark.timeout(180)

EVENTS = 72
FILLER = "x" * (250 << 10)  # an event's detail just under the 256 KiB it may hold


@pytest.fixture(scope="module")
def spm(
    tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes], board: Board
) -> Iterator[tuple[SpmProcess, int]]:
    """A running SPM whose log holds ``EVENTS`` large events after the returned seq."""
    data = tmp_path_factory.mktemp("spm") / "data"
    with spm_with_policy(data, sim, board, "aggregator") as (proc, enrolled):
        token = enrolled["aggregator"].session_token
        with SpmClient(proc.url, pin=proc.pin) as client:
            before = int(client.audit(since=2**62)["head_seq"])
            for i in range(EVENTS):
                client.report("fed", "notes", {"i": i, "text": FILLER}, token)
        yield proc, before


def test_a_page_stops_at_its_byte_budget(spm: tuple[SpmProcess, int]) -> None:
    proc, before = spm
    with SpmClient(proc.url, pin=proc.pin) as client:
        page = client.audit(since=before, limit=10_000)["entries"]
        details = [len(json.dumps(e["detail"])) for e in page]
        # the whole 18 MiB of events was one answer; it ends at the budget now (4 MiB)
        assert 0 < len(page) < EVENTS, len(page)
        assert sum(details[:-1]) <= PAGE_CHARS
        assert [e["seq"] for e in page] == list(range(before + 1, before + 1 + len(page)))
        # a reader goes on from the last entry it got, and reaches the end
        last = page[-1]
        while last["detail"].get("i") != EVENTS - 1:
            rest = client.audit(since=last["seq"], limit=10_000)["entries"]
            assert rest and rest[0]["seq"] == last["seq"] + 1
            assert sum(len(json.dumps(e["detail"])) for e in rest[:-1]) <= PAGE_CHARS
            last = rest[-1]


def test_the_whole_log_is_still_read_and_verified(spm: tuple[SpmProcess, int]) -> None:
    proc, before = spm
    done = secfl("audit", "show", "--spm", proc.url, "--spm-pin", proc.pin, "--json",
                 "--limit", "0", timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    seqs = [json.loads(line)["seq"] for line in done.stdout.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1)) and seqs[-1] >= before + EVENTS
    events = [json.loads(line) for line in done.stdout.splitlines()][before : before + EVENTS]
    assert [e["detail"]["i"] for e in events] == list(range(EVENTS))


def test_the_budget_is_counted_by_the_database_on_each_backend(store: Store) -> None:
    """The page's length is found from the details' lengths in SQL (SQLite and
    PostgreSQL alike), before any detail is read: at least one entry, a prefix."""
    with store.transaction() as tx:
        for i in range(10):
            tx.audit.append("fl.notes", "fed", {"i": i, "text": "y" * 1000})
    with store.read() as tx:
        every = tx.audit.since(0, 100)
        assert [e.detail["i"] for e in every] == list(range(10))
        one = len(json.dumps(every[0].detail, separators=(",", ":")))
        for chars, want in ((0, 1), (one, 1), (3 * one, 3), (3 * one + 5, 3), (10**9, 10)):
            page = tx.audit.since(0, 100, chars=chars)
            assert [e.seq for e in page] == [e.seq for e in every[:want]], chars
        assert [e.seq for e in tx.audit.since(4, 2, chars=10**9)] == [5, 6]
