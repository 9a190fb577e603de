"""The round an aggregator commits is logged with the increment that commits it: one
request, one transaction (``fl.round`` at the value the counter got), against a real
`secfl spm serve` on SQLite and PostgreSQL. A refused increment logs nothing; a round
detail out of bounds is one line and moves nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from secfl.fl._commit import SpmLedger
from secfl.spm.client import SpmClient, SpmRefused
from tests.spm import test_hostile as hostile
from tests.spm.harness import Board, SpmProcess, policy_document
from tests.spm.test_hostile import attest, db, submit

pytestmark = pytest.mark.timeout(240)

# a real SPM process on each backend, and a client of it (test_hostile's fixtures)
spm = hostile.spm
client = hostile.client

ROUND = {
    "round": 1, "attempt": 1, "participants": 3, "dropped": 0, "excluded": 0,
    "duration_s": 0.25, "objective": {"metric": "loss", "mode": "min", "value": 0.5},
}  # fmt: skip


def audit(spm: SpmProcess) -> list[tuple[str, dict[str, Any]]]:
    rows = db(spm, "SELECT event, detail FROM audit ORDER BY seq")
    return [(row.event, json.loads(row.detail)) for row in rows]


def test_an_increment_logs_the_round_it_commits(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    submit(client, board, policy_document("p", board, sim[1]))
    agg = attest(client, sim, "p")
    claimed = {**ROUND, "counter": 999}  # the SPM writes the value the counter got
    assert client.increment("p", "round", agg.session_token, expect=0, round=claimed) == 1
    (moved, counted), (logged, detail) = audit(spm)[-2:]
    assert moved == "counter.incremented" and counted["value"] == 1
    assert logged == "fl.round"
    assert detail == {**ROUND, "counter": 1, "service": "aggregator"}
    # the aggregator's ledger does the same
    ledger = SpmLedger(lambda: client, "p", "round", lambda: agg.session_token)
    assert ledger.increment_round(1, {**ROUND, "round": 2}) == 2
    assert audit(spm)[-1] == (
        "fl.round",
        {**ROUND, "round": 2, "counter": 2, "service": "aggregator"},
    )
    # a compare-and-increment at a stale value logs neither the counter nor the round
    before = audit(spm)
    with pytest.raises(SpmRefused, match="^counter: 'round' of policy 'p' is at 2, not 1: "):
        client.increment("p", "round", agg.session_token, expect=1, round=ROUND)
    assert audit(spm) == before and client.counter("p", "round") == 2


#: name -> (a round detail out of bounds, the refusal).
OUT_OF_BOUNDS = {
    "huge": ({**ROUND, "round": 10**400}, r"^event: round: round: Input should be less than"),
    "negative": (
        {**ROUND, "participants": -1},
        r"^event: round: participants: Input should be greater",
    ),
    "service": ({**ROUND, "service": "board"}, r"^event: 'service' is set by the SPM"),
    "extra": ({**ROUND, "rounds": 1}, r"^event: round: rounds: Extra inputs are not permitted"),
    "too-long": ({**ROUND, "duration_s": 1e12}, r"^event: round: duration_s: Input should be less"),
    "missing": ({"round": 1}, r"^event: round: participants: Field required"),
}


def _nested(depth: int) -> Any:
    nested: Any = 1
    for _ in range(depth):
        nested = [nested]
    return nested


def test_a_round_out_of_bounds_is_one_line_and_moves_nothing(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    """Each case against the same SPM (one process per backend: each refusal must leave
    the counter and the log as they were, so the cases cannot hide one another)."""
    submit(client, board, policy_document("p", board, sim[1]))
    agg = attest(client, sim, "p")
    before = audit(spm)
    for name, (bad, refusal) in OUT_OF_BOUNDS.items():
        with pytest.raises(SpmRefused, match=refusal) as info:
            client.increment("p", "round", agg.session_token, expect=0, round=bad)
        assert info.value.status == 400 and "\n" not in str(info.value), name
        assert client.counter("p", "round") == 0 and audit(spm) == before, name
    for depth in (40, 800):  # nested deeper than JSON parsers recurse, and less deep
        with pytest.raises(SpmRefused) as info:
            client.increment(
                "p", "round", agg.session_token, expect=0, round={**ROUND, "x": _nested(depth)}
            )
        assert 400 <= info.value.status < 500 and "\n" not in str(info.value), depth
        assert client.counter("p", "round") == 0 and audit(spm) == before, depth
    # and the same session still moves the counter, once, with an honest round
    assert client.increment("p", "round", agg.session_token, expect=0, round=ROUND) == 1
