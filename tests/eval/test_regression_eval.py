"""The evaluation harness with a regression task: every test metric recorded, no
accuracy assumed, and the classification-only attacks refused in one line."""

from __future__ import annotations

import pytest

from secfl.errors import FlError
from secfl.eval.grid import Run
from secfl.eval.simulation import Scenario, simulate


def test_a_regression_scenario_records_its_own_metrics() -> None:
    outcome = simulate(Scenario(task="diabetes", clients=3, rounds=2, defence="clone-audit"))
    last = outcome.rounds[-1]
    assert {"test_loss", "test_mse", "test_rmse", "test_mae", "test_r2"} <= set(last)
    assert "test_accuracy" not in last and "test_n" not in last
    row = Run(Scenario(task="diabetes"), "diabetes", "clone-audit", outcome).row()
    assert "accuracy" not in row and row["error"] == ""


def test_attacks_need_a_classification_task() -> None:
    with pytest.raises(FlError) as info:
        simulate(Scenario(task="diabetes", clients=4, rounds=1, malicious=0.25,
                          attack="label-flip"))  # fmt: skip
    assert str(info.value) == "simulation: the attacks need a classification task, not diabetes"
