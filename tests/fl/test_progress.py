"""The aggregator's round report (`fl.round`): built from the round's metrics entry in
the shape the SPM accepts with the round's counter increment."""

from __future__ import annotations

import math
from typing import Any

from secfl.fl._progress import round_event
from secfl.spm._events import check_round

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
    assert check_round(detail) == detail


def test_the_objective_falls_back_to_test_data_and_skips_what_is_not_finite() -> None:
    entry = {k: v for k, v in ENTRY.items() if not k.startswith("val_")}
    assert round_event(entry, metric="accuracy")["objective"]["value"] == 0.88
    assert "objective" not in round_event({**ENTRY, "val_loss": math.nan})
    assert "objective" not in round_event(entry, metric="r2")
