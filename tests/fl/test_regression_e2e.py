"""A regression federation end to end under `secfl run`, with a multi-file task volume:
a real SPM, the aggregator and two collaborators attested in the simulated TEE, the
task's code importing its own package from the shielded volume, data volumes read as
folders, and no accuracy anywhere."""

from __future__ import annotations

import json
from pathlib import Path

from secfl.demo.federation import DemoSettings, Federation
from secfl.fl._tensors import from_bytes
from tests.clirun import run_to_the_end

TASK = '''"""diabetes with a network of its own, defined in the volume's package."""

import torch

from mymodels.net import Net
from secfl.tasks import get_task

_diabetes = get_task("diabetes")
name = "diabetes"
load_data = _diabetes.load_data
train = _diabetes.train
evaluate = _diabetes.evaluate


def build_model(seed=None):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else seed)
        return Net()
'''

NET = """from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(10, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        return self.out(nn.functional.relu(self.hidden(x)))
"""


def test_a_regression_with_a_packaged_task_trains_to_the_end(tmp_path: Path) -> None:
    code = tmp_path / "code"
    (code / "mymodels").mkdir(parents=True)
    (code / "task.py").write_text(TASK)
    (code / "mymodels" / "__init__.py").write_text("")
    (code / "mymodels" / "net.py").write_text(NET)
    settings = DemoSettings(task="diabetes", clients=2, rounds=3, code=code)
    fed = Federation(tmp_path / "fed", settings)
    try:
        fed.start_spm()
        fed.prepare_data()
        fed.submit_policy()
        fed.start_aggregator()
        fed.start_collaborators()
        run_to_the_end(fed)
        params, meta = from_bytes(fed.final_model())
    finally:
        fed.stop()
    policy = (fed.work / "policy.yaml").read_text()
    assert "metric: loss" in policy and "mode: min" in policy
    rounds = fed.rounds()
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert not any("accuracy" in key for r in rounds for key in r)
    assert all({"val_rmse", "val_r2", "test_mae", "objective"} <= set(r) for r in rounds)
    assert rounds[-1]["objective_metric"] == "val_loss"
    assert sorted(params) == ["hidden.bias", "hidden.weight", "out.bias", "out.weight"]
    best = min(rounds, key=lambda r: (r["val_loss"], r["round"]))
    assert meta["best_round"] == str(best["round"]) and meta["objective"] == "loss (min)"
    inside = json.loads(
        (fed.work / "metrics.jsonl").read_text().splitlines()[-1]
    )  # the metrics file and the sealed model agree on the last round
    assert inside["best_round"] == best["round"]
