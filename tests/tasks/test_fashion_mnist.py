"""Fashion-MNIST from Debian's package: IDX parsing, a clear error when absent, a CNN."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from secfl.tasks import TaskError, get_task, split
from secfl.tasks import _fashion_mnist as fm
from tests.tasks import require_fashion_mnist

TASK = get_task("fashion-mnist")


def test_missing_dataset_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fm.ENV_DIR, str(tmp_path / "absent"))
    assert not fm.available()
    with pytest.raises(TaskError, match="apt-get install dataset-fashion-mnist") as info:
        split("fashion-mnist", 2, out=tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_idx_files_are_checked(tmp_path: Path) -> None:
    good = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    (tmp_path / "ok.gz").write_bytes(gzip.compress(good))
    assert fm.read_idx(tmp_path / "ok.gz", 1).tolist() == [1, 2, 3]
    for name, blob, message in (
        ("short.gz", gzip.compress(good[:-1]), "holds 2 bytes"),
        ("magic.gz", gzip.compress(bytes([0, 0, 9, 1]) + good[4:]), "not a 1-D unsigned-byte"),
        ("plain.gz", good, "cannot read"),
    ):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(TaskError, match=message):
            fm.read_idx(tmp_path / name, 1)
    with pytest.raises(TaskError, match="apt-get install"):
        fm.read_idx(tmp_path / "none.gz", 1)


def test_pool_is_the_debian_dataset() -> None:
    require_fashion_mnist()
    x, y = TASK.load_pool()
    assert x.shape == (70_000, 1, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [7_000] * 10


def test_cnn_learns_in_one_short_epoch(tmp_path: Path) -> None:
    require_fashion_mnist()
    report = split("fashion-mnist", 2, seed=0, out=tmp_path, samples=5_000)
    data = TASK.load_data(report.path("client-000.safetensors"))
    test = TASK.load_data(report.path("test.safetensors"))
    assert (
        tuple(data.x.shape[1:]) == (1, 28, 28)
        and 0 <= float(data.x.min()) < float(data.x.max()) <= 1
    )
    model = TASK.build_model(0)
    before = TASK.evaluate(model, test)
    config = {"epochs": 1, "seed": 0}
    metrics = TASK.train(model, data, config)
    after = TASK.evaluate(model, test)
    assert metrics["n"] == len(data) == 1_750
    assert after["accuracy"] >= 0.5 > 0.2 > before["accuracy"], (before, after)
    assert after["loss"] < before["loss"]
    # The CNN is deterministic to the bit too.
    again = TASK.build_model(0)
    TASK.train(again, data.subset(range(len(data))), config)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
