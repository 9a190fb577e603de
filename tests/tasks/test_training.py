"""Models and training: deterministic to the bit, accurate enough, FedProx exact at mu 0."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import secfl.tasks._digits
from secfl.tasks import (
    Dataset,
    SplitReport,
    TaskError,
    as_task,
    get_task,
    load_shard,
    split,
    task_names,
)

DIGITS = get_task("digits")


@pytest.fixture(scope="module")
def digits_split(tmp_path_factory: pytest.TempPathFactory) -> SplitReport:
    return split("digits", 4, seed=0, out=tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def client0(digits_split: SplitReport) -> Dataset:
    return DIGITS.load_data(digits_split.path("client-000.safetensors"))


def train_set(report: SplitReport) -> Dataset:
    return Dataset.concat([load_shard(report.path(s)) for s in report.client_shards])


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


def test_registry_and_module_tasks() -> None:
    assert task_names() == ["breast-cancer", "diabetes", "digits", "fashion-mnist"]
    with pytest.raises(TaskError, match="unknown task 'cifar'.*breast-cancer, diabetes, digits"):
        get_task("cifar")
    module = as_task(secfl.tasks._digits)
    assert module.name == "digits" and module.build_model == DIGITS.build_model
    with pytest.raises(TaskError, match="has no string 'name'"):
        as_task(object())

    class Half:
        name = "half"

        def build_model(self) -> None: ...

    with pytest.raises(TaskError, match="lacks load_data, train, evaluate"):
        as_task(Half())


def test_build_model_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    for name in task_names():
        task = get_task(name)
        assert same_weights(task.build_model(3), task.build_model(3))
        assert same_weights(task.build_model(), task.build_model(0))
        assert not same_weights(task.build_model(3), task.build_model(4))
    assert torch.equal(state, torch.get_rng_state())


def test_training_is_bit_identical(client0: Dataset) -> None:
    config = {"epochs": 2, "seed": 11}
    a, b = DIGITS.build_model(1), DIGITS.build_model(1)
    metrics_a = DIGITS.train(a, client0, config)
    metrics_b = DIGITS.train(b, client0, config)
    assert metrics_a == metrics_b and same_weights(a, b)
    assert metrics_a["n"] == len(client0) and metrics_a["steps"] == 2 * -(-len(client0) // 32)
    c = DIGITS.build_model(1)
    DIGITS.train(c, client0, {"epochs": 2, "seed": 12})
    assert not same_weights(a, c)


_SCRIPT = """
import hashlib, sys, torch
from secfl.tasks import get_task
task = get_task("digits")
data = task.load_data(sys.argv[1])
model = task.build_model(1)
task.train(model, data, {"epochs": 2, "seed": 11})
digest = hashlib.sha256()
for name, tensor in model.state_dict().items():
    digest.update(name.encode() + tensor.numpy().tobytes())
print(digest.hexdigest())
"""


def test_training_is_bit_identical_across_processes(
    digits_split: SplitReport, client0: Dataset
) -> None:
    # Another process with a different thread setting: what a second party would run.
    model = DIGITS.build_model(1)
    DIGITS.train(model, client0, {"epochs": 2, "seed": 11})
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    shard = str(digits_split.path("client-000.safetensors"))
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, shard], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == weights_digest(model)


def test_torch_settings_are_restored(client0: Dataset) -> None:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    state = torch.get_rng_state()
    DIGITS.train(DIGITS.build_model(), client0, {"epochs": 1})
    DIGITS.evaluate(DIGITS.build_model(), client0)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(state, torch.get_rng_state())


def test_digits_central_five_epochs_reaches_090(digits_split: SplitReport) -> None:
    model = DIGITS.build_model(0)
    metrics = DIGITS.train(model, train_set(digits_split), {"epochs": 5, "seed": 0})
    assert metrics["n"] == 1259
    result = DIGITS.evaluate(model, DIGITS.load_data(digits_split.path("test.safetensors")))
    assert result["accuracy"] >= 0.9, result
    assert result["n"] == 359 and set(result) == {"loss", "accuracy", "n"}


def test_digits_ten_fedavg_rounds_on_skewed_clients_reach_090(tmp_path: Path) -> None:
    report = split("digits", 4, dirichlet_alpha=0.5, seed=1, out=tmp_path)
    shards = [DIGITS.load_data(report.path(s)) for s in report.client_shards]
    global_model = DIGITS.build_model(0)
    for round_ in range(10):
        states, weights = [], []
        for i, shard in enumerate(shards):
            local = copy.deepcopy(global_model)
            metrics = DIGITS.train(local, shard, {"epochs": 1, "seed": 100 * round_ + i})
            states.append(local.state_dict())
            weights.append(metrics["n"])
        total = sum(weights)
        global_model.load_state_dict(
            {
                k: sum(w / total * s[k] for w, s in zip(weights, states, strict=True))
                for k in states[0]
            }
        )
    test = DIGITS.load_data(report.path("test.safetensors"))
    assert DIGITS.evaluate(global_model, test)["accuracy"] >= 0.9


def test_breast_cancer_reaches_090(tmp_path: Path) -> None:
    task = get_task("breast-cancer")
    report = split("breast-cancer", 3, seed=0, out=tmp_path)
    model = task.build_model(0)
    assert isinstance(model, nn.Linear) and model.in_features == 30
    task.train(model, train_set(report), {"epochs": 5, "seed": 0})
    result = task.evaluate(model, task.load_data(report.path("test.safetensors")))
    assert result["accuracy"] >= 0.9, result


def test_fedprox_is_plain_training_at_mu_zero_and_pulls_towards_global(client0: Dataset) -> None:
    start = DIGITS.build_model(2)
    anchor = {k: v.detach().clone() for k, v in start.named_parameters()}
    base = {"epochs": 2, "seed": 3, "lr": 0.2}

    def run(**extra: object) -> tuple[nn.Module, dict[str, float]]:
        model = copy.deepcopy(start)
        return model, DIGITS.train(model, client0, {**base, **extra})

    plain, plain_metrics = run()
    zero, zero_metrics = run(proximal_mu=0.0, global_params=anchor)
    assert same_weights(plain, zero) and plain_metrics == zero_metrics

    prox, prox_metrics = run(proximal_mu=1.0, global_params=anchor)
    assert not same_weights(plain, prox) and prox_metrics["proximal"] > 0

    def distance(model: nn.Module) -> float:
        return sum(
            float(((p.detach() - anchor[k]) ** 2).sum()) for k, p in model.named_parameters()
        )

    assert distance(prox) < 0.9 * distance(plain)
    # The anchor defaults to the weights training started from; a list works too.
    default, _ = run(proximal_mu=1.0)
    listed, _ = run(proximal_mu=1.0, global_params=[v.numpy() for v in anchor.values()])
    assert same_weights(prox, default) and same_weights(prox, listed)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer from 1 to 2147483648, got 0"),
        ({"threads": 10**400}, "threads must be an integer from 1 .* got an integer of 401 dig"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"lr": 0}, "lr must be a finite number > 0"),
        ({"lr": float("inf")}, "lr must be a finite"),
        ({"lr": 10**400}, "lr must be a finite number > 0, got an integer of 401 digits"),
        ({"momentum": 1.0}, "momentum must be below 1"),
        ({"proximal_mu": -1}, "proximal_mu must be a finite number >= 0"),
        ({"seed": "7"}, "seed: '7' is not an integer"),
        ({"learning_rate": 0.1}, "unknown keys \\['learning_rate'\\]"),
        ({"proximal_mu": 0.1, "global_params": {"0.weight": torch.zeros(64, 64)}}, "lacks"),
        ({"proximal_mu": 0.1, "global_params": [torch.zeros(1)] * 4}, "'0.weight' has shape"),
        ({"proximal_mu": 0.1, "global_params": [torch.zeros(1)]}, "has 1 tensors"),
        ({"lr": 1e20}, "diverged at step 1"),
    ],
)
def test_bad_training_configs(client0: Dataset, config: dict[str, object], message: str) -> None:
    with pytest.raises(TaskError, match=message):
        DIGITS.train(DIGITS.build_model(), client0, config)


def test_data_of_another_task_is_refused(client0: Dataset) -> None:
    task = get_task("breast-cancer")
    with pytest.raises(TaskError, match="belongs to task 'digits'"):
        task.evaluate(task.build_model(), client0)
    with pytest.raises(TaskError, match="expected a Dataset"):
        DIGITS.train(DIGITS.build_model(), client0.x, {})  # type: ignore[arg-type]
