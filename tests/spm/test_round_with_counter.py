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


@pytest.mark.parametrize(
    "bad, refusal",
    [
        ({**ROUND, "round": 10**400}, r"^event: round: round: Input should be less than"),
        ({**ROUND, "participants": -1}, r"^event: round: participants: Input should be greater"),
        ({**ROUND, "service": "board"}, r"^event: 'service' is set by the SPM"),
        ({**ROUND, "rounds": 1}, r"^event: round: rounds: Extra inputs are not permitted"),
        ({**ROUND, "duration_s": 1e12}, r"^event: round: duration_s: Input should be less"),
        ({"round": 1}, r"^event: round: participants: Field required"),
    ],
    ids=["huge", "negative", "service", "extra", "too-long", "missing"],
)
def test_a_round_out_of_bounds_is_one_line_and_moves_nothing(
    spm: SpmProcess,
    client: SpmClient,
    board: Board,
    sim: tuple[Path, bytes],
    bad: dict[str, Any],
    refusal: str,
) -> None:
    submit(client, board, policy_document("p", board, sim[1]))
    agg = attest(client, sim, "p")
    before = audit(spm)
    with pytest.raises(SpmRefused, match=refusal) as info:
        client.increment("p", "round", agg.session_token, expect=0, round=bad)
    assert info.value.status == 400 and "\n" not in str(info.value)
    assert client.counter("p", "round") == 0 and audit(spm) == before


@pytest.mark.parametrize("depth", [40, 800], ids=["deep", "very-deep"])
def test_a_deeply_nested_round_is_one_line_and_moves_nothing(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes], depth: int
) -> None:
    submit(client, board, policy_document("p", board, sim[1]))
    agg = attest(client, sim, "p")
    nested: Any = 1
    for _ in range(depth):
        nested = [nested]
    before = audit(spm)
    with pytest.raises(SpmRefused) as info:
        client.increment("p", "round", agg.session_token, expect=0, round={**ROUND, "x": nested})
    assert 400 <= info.value.status < 500 and "\n" not in str(info.value)
    assert client.counter("p", "round") == 0 and audit(spm) == before
