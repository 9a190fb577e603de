"""The aggregator's round report (`fl.round`): built from the round's metrics entry in
the shape the SPM accepts, and never able to stop a round when the SPM refuses it
or cannot be reached."""

from __future__ import annotations

import math
from typing import Any

from secfl.errors import SpmError, SpmRefused
from secfl.fl._progress import round_event, round_reporter
from secfl.spm._events import check_event

ENTRY: dict[str, Any] = {
    "round": 4, "attempt": 2, "counter": 9, "participants": ["site-1", "site-2", "site-3"],
    "updates": 3, "dropped": ["site-4"], "refused": [], "excluded": ["site-3"],
    "val_loss": 0.31, "val_accuracy": 0.9, "test_accuracy": 0.88, "duration_s": 2.5,
}  # fmt: skip


def test_the_event_is_what_the_spm_accepts() -> None:
    detail = round_event(ENTRY, metric="accuracy", mode="max", run=2, policy_version=3)
    assert detail == {
        "round": 4, "counter": 9, "attempt": 2, "participants": 3, "dropped": 1, "excluded": 1,
        "duration_s": 2.5, "objective": {"metric": "accuracy", "mode": "max", "value": 0.9},
        "run": 2, "policy_version": 3,
    }  # fmt: skip
    assert check_event("round", detail) == detail


def test_the_objective_falls_back_to_test_data_and_skips_what_is_not_finite() -> None:
    entry = {k: v for k, v in ENTRY.items() if not k.startswith("val_")}
    assert round_event(entry, metric="accuracy")["objective"]["value"] == 0.88
    assert "objective" not in round_event({**ENTRY, "val_loss": math.nan})
    assert "objective" not in round_event(entry, metric="r2")


def test_a_failed_report_is_one_warning_and_the_round_goes_on() -> None:
    warnings: list[str] = []
    posted: list[tuple[str, dict[str, Any]]] = []

    def refuse(event: str, detail: dict[str, Any]) -> None:
        raise SpmRefused("report: service 'x' is not an aggregator", 403)

    def unreachable(event: str, detail: dict[str, Any]) -> None:
        raise SpmError("spm: POST /v1/policies/fed/events failed: connection refused")

    round_reporter(refuse, warnings.append)(ENTRY)
    round_reporter(unreachable, warnings.append)(ENTRY)
    round_reporter(lambda e, d: posted.append((e, d)), warnings.append)(ENTRY)
    assert [w.split(":")[0] for w in warnings] == ["could not report round 4 to the SPM"] * 2
    assert posted == [("round", round_event(ENTRY))]
