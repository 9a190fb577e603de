"""The built-in regression (diabetes): its shards, its metrics, its training."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, r2_score
from torch import nn

from secfl.errors import TaskError
from secfl.tasks import Dataset, SplitReport, get_task, load_shard, read_shard, split
from secfl.tasks._shards import encode_shard

DIABETES = get_task("diabetes")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> SplitReport:
    return split("diabetes", 3, seed=1, out=tmp_path_factory.mktemp("diabetes"))


def train_set(report: SplitReport) -> Dataset:
    return Dataset.concat([DIABETES.load_data(report.path(s)) for s in report.client_shards])


def test_shards_hold_raw_float_targets_scaled_by_the_training_samples(report: SplitReport) -> None:
    from sklearn.datasets import load_diabetes

    raw = load_diabetes(scaled=False).target
    x, y, meta = read_shard(report.path("client-000.safetensors"))
    assert y.dtype == np.float32 and x.dtype == np.float64
    assert meta["target"] == "value" and "num_classes" not in meta
    assert set(np.round(y, 3)) <= set(np.round(raw.astype(np.float32), 3))
    train_y = np.concatenate([read_shard(report.path(s))[1] for s in report.client_shards])
    offset, scale = meta["target_scaling"]["offset"][0], meta["target_scaling"]["scale"][0]
    assert offset == pytest.approx(train_y.astype(np.float64).mean(), rel=1e-6)
    assert scale == pytest.approx(train_y.astype(np.float64).std(), rel=1e-6)
    test_y = read_shard(report.path("test.safetensors"))[1]
    assert offset != pytest.approx(test_y.mean(), rel=1e-3)  # no test statistic leaks in
    data = DIABETES.load_data(report.path("client-000.safetensors"))
    assert data.y.dtype == torch.float32
    assert torch.allclose(data.y, torch.from_numpy((y - offset) / scale), atol=1e-5)
    manifest = json.loads((report.out / "split.json").read_text())
    assert manifest["target_scaling"] == meta["target_scaling"]
    assert all(s["label_counts"] == [] for s in manifest["shards"])


def test_the_split_is_iid_and_reproducible(report: SplitReport, tmp_path: Path) -> None:
    again = split("diabetes", 3, seed=1, out=tmp_path)
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in report.shards]
    assert report.partition == {"kind": "iid"}
    sizes = [s.samples for s in report.client_shards]
    assert max(sizes) - min(sizes) <= 1 and sum(s.samples for s in report.shards) == 442


def test_label_skew_is_refused_for_a_regression(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as info:
        split("diabetes", 3, dirichlet_alpha=0.5, out=tmp_path / "skew")
    assert str(info.value) == (
        "dirichlet: label skew needs class labels, and diabetes is a regression; "
        "split it IID (leave out --dirichlet)"
    )
    assert not (tmp_path / "skew").exists()  # refused before anything was written


def test_metrics_are_the_textbook_ones_in_target_units(report: SplitReport) -> None:
    test = DIABETES.load_data(report.path("test.safetensors"))
    model = DIABETES.build_model(3)
    metrics = DIABETES.evaluate(model, test)
    assert sorted(metrics) == ["loss", "mae", "mse", "n", "r2", "rmse"]
    with torch.no_grad():
        scaled = model(test.x).reshape(-1).double().numpy()
    _, y_raw, meta = read_shard(report.path("test.safetensors"))
    m, s = meta["target_scaling"]["offset"][0], meta["target_scaling"]["scale"][0]
    predicted = scaled * s + m
    truth = y_raw.astype(np.float64)
    assert metrics["n"] == len(truth)
    assert metrics["mse"] == pytest.approx(np.mean((predicted - truth) ** 2), rel=1e-4)
    assert metrics["rmse"] == pytest.approx(math.sqrt(metrics["mse"]), rel=1e-9)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(truth, predicted), rel=1e-4)
    assert metrics["r2"] == pytest.approx(r2_score(truth, predicted), rel=1e-4, abs=1e-4)
    assert metrics["loss"] == pytest.approx(metrics["mse"] / s**2, rel=1e-9)


def test_training_learns_and_is_deterministic(report: SplitReport) -> None:
    train, test = train_set(report), DIABETES.load_data(report.path("test.safetensors"))
    first, second = DIABETES.build_model(0), DIABETES.build_model(0)
    before = DIABETES.evaluate(first, test)
    for seed in range(15):
        metrics = DIABETES.train(first, train, {"epochs": 1, "seed": seed})
        DIABETES.train(second, train, {"epochs": 1, "seed": seed})
    assert sorted(metrics) == ["epochs", "loss", "n", "steps"]  # no accuracy in a regression
    after = DIABETES.evaluate(first, test)
    assert after["loss"] < 0.7 * before["loss"] and after["r2"] > 0.3
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_model_with_the_wrong_output_shape_is_refused(report: SplitReport) -> None:
    data = DIABETES.load_data(report.path("validation.safetensors"))
    two_outputs = nn.Linear(10, 2)
    with pytest.raises(TaskError, match=r"^regression: the model returned shape \[16, 2\]"):
        DIABETES.train(two_outputs, data, {"seed": 0})


def test_classification_and_regression_data_do_not_mix(report: SplitReport, tmp_path: Path) -> None:
    digits = get_task("digits")
    with pytest.raises(TaskError, match="shard is for task 'diabetes', not 'digits'"):
        digits.load_data(report.path("test.safetensors"))
    x, y, meta = read_shard(report.path("test.safetensors"))
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(encode_shard(x, y, {**meta, "task": "breast-cancer"}))
    with pytest.raises(TaskError, match="breast-cancer is not trained on regression targets"):
        load_shard(forged)
    bad = {k: v for k, v in meta.items() if not k.endswith("_sha256")}
    with pytest.raises(TaskError, match="target 'classes' is not 'value'"):
        encode_shard(x, y, {**bad, "target": "classes"})
    with pytest.raises(TaskError, match="missing \\['target_scaling'\\]"):
        encode_shard(x, y, {k: v for k, v in bad.items() if k != "target_scaling"})
    nan = y.copy()
    nan[0] = np.nan
    nan_file = tmp_path / "nan.safetensors"
    nan_file.write_bytes(encode_shard(x, nan, bad))
    with pytest.raises(TaskError, match="^shard: targets contain NaN or infinity$"):
        load_shard(nan_file)


def test_load_data_takes_a_folder_holding_exactly_one_shard(
    report: SplitReport, tmp_path: Path
) -> None:
    volume = tmp_path / "site-1"
    (volume / "deep").mkdir(parents=True)
    shutil.copy(report.path("client-001.safetensors"), volume / "deep")
    (volume / "README.txt").write_text("other files are fine")
    assert len(DIABETES.load_data(volume)) == report.client_shards[1].samples
    shutil.copy(report.path("client-002.safetensors"), volume)
    with pytest.raises(TaskError) as info:
        DIABETES.load_data(volume)
    assert str(info.value) == "source: site-1 holds 2 .safetensors files, expected one"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TaskError, match=r"^source: empty holds 0 .safetensors files"):
        get_task("digits").load_data(empty)
