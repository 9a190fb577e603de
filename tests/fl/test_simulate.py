"""The federation in one process (``secfl simulate``'s engine, :mod:`secfl.fl._local`).

It trains exactly what a federation over gRPC trains (tensor for tensor, with
sampling and FedProx), and whatever a task's code does wrong is one line naming
the function, with the task's exception kept as the cause.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from secfl.errors import FlError, TaskError
from secfl.fl._config import FederationConfig
from secfl.fl._local import Site, load_site, run_local
from secfl.tasks._registry import get_task
from secfl.tasks._split import split
from tests.fl.fedkit import Federation, site

# --- the same model as a real federation ---------------------------------------------


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    report = split("digits", 4, seed=2, out=tmp_path_factory.mktemp("shards"))
    return Federation(get_task("digits"), report)


@pytest.mark.parametrize(
    "settings",
    [
        {"rounds": 3, "min_clients": 3, "train": {"epochs": 1}, "seed": 5},
        {  # sampling (2 of 4 each round) and FedProx (global_params reach train)
            "rounds": 3,
            "min_clients": 2,
            "fraction": 0.5,
            "strategy": "fedprox",
            "strategy_settings": {"mu": 0.5},
            "train": {"epochs": 1},
            "seed": 1,
        },
    ],
    ids=["fedavg", "fedprox-sampled"],
)
def test_it_trains_what_a_federation_trains(fed: Federation, settings: dict[str, Any]) -> None:
    sites = range(4 if "fraction" in settings else 3)
    agg = fed.aggregator(settings, secure=False)
    federated = fed.run(agg, sites, secure=False, joined=len(sites))  # all join, then sample
    local = run_local(
        fed.task,
        [Site(site(i), fed.data(i), len(fed.data(i))) for i in sites],
        FederationConfig.parse(settings),
        validation=fed.validation(),
    )
    assert sorted(local.params) == sorted(federated)
    for name, value in federated.items():
        assert local.params[name].dtype == value.dtype, name
        assert np.array_equal(local.params[name], value), name
    assert [e["participants"] for e in local.history] == [e["participants"] for e in agg.history]
    for mine, theirs in zip(local.history, agg.history, strict=True):
        assert mine["val_loss"] == theirs["val_loss"]
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-12)


# --- a task written for the test ----------------------------------------------------------


class Toy:
    """A linear regression on tensors: the smallest task; each test breaks one part."""

    name = "toy"

    def build_model(self, seed: int | None = None) -> nn.Module:
        torch.manual_seed(0 if seed is None else seed)
        return nn.Linear(2, 1)

    def load_data(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tensor(np.loadtxt(path, delimiter=",", ndmin=2), dtype=torch.float32)
        return x[:, :2], x[:, 2]

    def train(self, model: nn.Module, data: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        x, y = data
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(5):
            opt.zero_grad()
            loss = ((model(x).squeeze(-1) - y) ** 2).mean()
            loss.backward()
            opt.step()
        return {"loss": loss.item()}

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, Any]:
        x, y = data
        with torch.no_grad():
            return {"loss": float(((model(x).squeeze(-1) - y) ** 2).mean()), "n": len(y)}


def toy_sites(n: int = 2) -> list[Site]:
    rng = np.random.default_rng(0)
    sites = []
    for i in range(n):
        x = torch.tensor(rng.normal(size=(40, 2)), dtype=torch.float32)
        y = x @ torch.tensor([1.5, -2.0]) + 0.5
        sites.append(Site(f"s{i + 1}", (x, y), 40))
    return sites


def settings(**more: Any) -> FederationConfig:
    return FederationConfig.parse({"rounds": 2, "min_clients": 2, **more})


def test_a_working_task_learns_and_reports_every_round() -> None:
    sites = toy_sites()
    run = run_local(Toy(), sites, settings(rounds=6), validation=sites[0].data)
    losses = [e["val_loss"] for e in run.history]
    assert losses[-1] < losses[0] / 4
    assert all(math.isfinite(e["train_loss"]) for e in run.history)
    assert [e["round"] for e in run.history] == list(range(1, 7))
    assert run.best is run.history[-1]
    last = run.history[-1]
    assert (last["objective_metric"], last["best_round"]) == ("val_loss", 6)


def test_the_objective_selects_the_best_round() -> None:
    sites = toy_sites()
    run = run_local(
        Toy(),
        sites,
        settings(rounds=4, objective={"metric": "loss", "mode": "max"}),
        validation=sites[0].data,
    )
    assert run.best is run.history[0]  # "higher is better": the worst loss wins


class Raising(Toy):
    def train(self, model: nn.Module, data: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        raise ValueError("shapes do not match\nmore detail")


def test_an_exception_in_train_is_one_line_naming_it() -> None:
    with pytest.raises(TaskError) as caught:
        run_local(Raising(), toy_sites(), settings())
    assert str(caught.value) == (
        "train: the task raised ValueError: shapes do not match more detail (s1, round 1)"
    )
    assert isinstance(caught.value.__cause__, ValueError)  # for --debug's traceback


class NoObjective(Toy):
    def evaluate(self, model: nn.Module, data: Any) -> dict[str, Any]:
        return {"mse": 1.0}


def test_an_objective_evaluate_does_not_return_is_refused() -> None:
    sites = toy_sites()
    with pytest.raises(FlError, match=r"^objective: the task's evaluate returned no 'loss' \(it"):
        run_local(NoObjective(), sites, settings(), validation=sites[0].data)
    # the objective names a metric it does return: fine
    run = run_local(
        NoObjective(), sites, settings(objective={"metric": "mse"}), validation=sites[0].data
    )
    assert run.history[-1]["val_mse"] == 1.0


class NanLoss(Toy):
    def train(self, model: nn.Module, data: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"loss": float("nan")}


class HugeLoss(Toy):
    def train(self, model: nn.Module, data: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"loss": 10**5000}  # str() of it raises ValueError


class HugeEvaluation(Toy):
    def evaluate(self, model: nn.Module, data: Any) -> dict[str, Any]:
        return {"loss": 10**400}  # its first digits would look like a finite number


class NanWeights(Toy):
    def train(self, model: nn.Module, data: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        with torch.no_grad():
            model.weight.fill_(float("inf"))
        return {"loss": 1.0}


class ShapeBySeed(Toy):
    def build_model(self, seed: int | None = None) -> nn.Module:
        return nn.Linear(2, 1 if seed is None else 2)


class NoLoss(Toy):
    def train(self, model: nn.Module, data: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"mse": 1.0}


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (NanLoss(), r"^train: metric 'loss' is not a finite number \(nan\) \(s1, round 1\)$"),
        (NoLoss(), r"^train: returned no 'loss' \(it returned: mse\) \(s1, round 1\)$"),
        (HugeLoss(), r"^train: metric 'loss' is not a finite number \(an integer of 16610 bits\)"),
        (HugeEvaluation(), r"^evaluate: metric 'loss' is not a finite number \(an integer of 401 "),
        (NanWeights(), r"^train: left a model the aggregator refuses: .* \(s1, round 1\)$"),
        (ShapeBySeed(), r"^build_model: build_model\(\) and build_model\(seed\) build different"),
    ],
    ids=["nan-loss", "no-loss", "huge-loss", "huge-evaluation", "nan-weights",
         "seed-changes-shape"],
)  # fmt: skip
def test_what_a_federation_would_refuse_is_refused(task: Toy, message: str) -> None:
    sites = toy_sites()
    with pytest.raises(TaskError, match=message) as caught:
        run_local(task, sites, settings(), validation=sites[0].data)
    assert "\n" not in str(caught.value)


def test_fewer_sites_than_min_clients_is_refused() -> None:
    with pytest.raises(FlError, match=r"^federation: min_clients is 3 but 2 sites are given"):
        run_local(Toy(), toy_sites(2), settings(min_clients=3))


def test_a_site_is_loaded_as_a_collaborator_loads_it(tmp_path: Path) -> None:
    data = tmp_path / "s.csv"
    data.write_text("1,2,3\n4,5,6\n")
    loaded = load_site(Toy(), "s", data)
    assert loaded.samples == 2
    with pytest.raises(FlError, match=r"^federation: s has 2 samples, more than max_samples"):
        load_site(Toy(), "s", data, max_samples=1)
    with pytest.raises(TaskError, match=r"^load_data: the task raised FileNotFoundError: .*\(s: "):
        load_site(Toy(), "s", tmp_path / "missing.csv")
