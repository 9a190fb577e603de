"""``split``: byte-identical for a seed, disjoint and complete, skewed only when asked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from secfl.tasks import TaskError, get_task, load_shard, read_shard, split
from secfl.tasks import _partition as partition
from secfl.tasks._partition import MAX_DRAWS
from tests.tasks import dominant_classes


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    for run in ("a", "b"):
        split("digits", 5, dirichlet_alpha=0.5, seed=7, out=tmp_path / run)
    first = digests(tmp_path / "a")
    assert first == digests(tmp_path / "b")
    assert sorted(first) == [
        *(f"client-{i:03d}.safetensors" for i in range(5)),
        "split.json",
        "test.safetensors",
        "validation.safetensors",
    ]
    split("digits", 5, dirichlet_alpha=0.5, seed=8, out=tmp_path / "c")
    other = digests(tmp_path / "c")
    assert all(other[name] != first[name] for name in first)


@pytest.mark.parametrize("alpha", [None, 0.3])
def test_every_sample_exactly_once(tmp_path: Path, alpha: float | None) -> None:
    report = split("digits", 6, dirichlet_alpha=alpha, seed=3, out=tmp_path)
    x_all, y_all = get_task("digits").load_pool()
    seen: list[bytes] = []
    for shard in report.shards:
        x, y, meta = read_shard(report.path(shard))
        assert meta["split"] == report.split_id and meta["role"] == shard.role
        assert meta["samples"] == shard.samples == len(y)
        seen += [bytes(row) + bytes([label]) for row, label in zip(x, y, strict=True)]
    # Each pool sample (features + label; digits has a few exact duplicates) appears
    # as often in the shards as in the dataset: nothing lost, nothing doubled.
    pool = sorted(bytes(row) + bytes([label]) for row, label in zip(x_all, y_all, strict=True))
    assert sorted(seen) == pool


def test_held_out_sets_are_stratified(tmp_path: Path) -> None:
    report = split("digits", 3, dirichlet_alpha=0.1, seed=0, out=tmp_path)
    by_role = {s.role: s for s in report.shards}
    for role, fraction in (("test", 0.2), ("validation", 0.1)):
        counts = np.asarray(by_role[role].label_counts)
        assert abs(counts.sum() / 1797 - fraction) < 0.01
        assert counts.min() / counts.max() > 0.9  # digits' classes are balanced


def test_dirichlet_skews_and_iid_does_not(tmp_path: Path) -> None:
    skewed = split("digits", 10, dirichlet_alpha=0.1, seed=0, out=tmp_path / "d")
    iid = split("digits", 10, seed=0, out=tmp_path / "i")
    few = [dominant_classes(s.label_counts) for s in skewed.client_shards]
    many = [dominant_classes(s.label_counts) for s in iid.client_shards]
    assert sum(d <= 3 for d in few) >= 8, few
    assert min(many) >= 6, many
    sizes = [s.samples for s in iid.client_shards]
    assert max(sizes) - min(sizes) <= 1
    assert all(s.samples >= 10 for s in skewed.client_shards)


def test_tiny_alpha_tops_up_every_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 clients at alpha 0.01 almost never all get 10 samples in MAX_DRAWS draws:
    # the deterministic top-up gives every client its minimum.
    assert MAX_DRAWS == 100
    calls: list[int] = []
    original = partition._top_up

    def spy(parts: list[list[int]], min_samples: int) -> None:
        calls.append(min_samples)
        original(parts, min_samples)

    monkeypatch.setattr(partition, "_top_up", spy)
    report = split("digits", 100, dirichlet_alpha=0.01, seed=0, out=tmp_path / "a")
    sizes = [s.samples for s in report.client_shards]
    assert min(sizes) >= 10 and sum(sizes) == 1259 and calls == [10]
    again = split("digits", 100, dirichlet_alpha=0.01, seed=0, out=tmp_path / "b")
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in report.shards]


def test_breast_cancer_scaling_from_training_samples_only(tmp_path: Path) -> None:
    report = split("breast-cancer", 4, seed=2, out=tmp_path)
    clients = [load_shard(report.path(s)) for s in report.client_shards]
    raw = np.concatenate([read_shard(report.path(s))[0] for s in report.client_shards])
    assert np.allclose(report.scaling["offset"], raw.mean(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(report.scaling["scale"], raw.std(axis=0), rtol=1e-12)
    for shard in report.shards:  # every shard carries the same statistics
        assert read_shard(report.path(shard))[2]["scaling"] == report.scaling
    x = np.concatenate([c.x.numpy() for c in clients])
    assert np.abs(x.mean(axis=0)).max() < 1e-4 and np.abs(x.std(axis=0) - 1).max() < 1e-4
    test = load_shard(report.path("test.safetensors"))
    assert np.abs(test.x.numpy().mean(axis=0)).max() > 1e-3  # not re-standardised on its own


def test_manifest(tmp_path: Path) -> None:
    report = split("breast-cancer", 2, seed=1, out=tmp_path, samples=300)
    manifest = json.loads((tmp_path / "split.json").read_text())
    assert manifest == report.to_json()
    assert manifest["samples"] == 300
    assert sum(s["samples"] for s in manifest["shards"]) == 300
    for entry in manifest["shards"]:
        assert (
            hashlib.sha256((tmp_path / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
        )


def test_refuses_to_mix_with_an_earlier_split(tmp_path: Path) -> None:
    split("digits", 4, seed=0, out=tmp_path)
    with pytest.raises(TaskError, match="already holds a split"):
        split("digits", 2, seed=0, out=tmp_path)
    split("digits", 2, seed=0, out=tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("client-*")) == [
        "client-000.safetensors",
        "client-001.safetensors",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "mnist"}, "unknown task 'mnist'"),
        ({"clients": 0}, "clients: 0"),
        ({"clients": 200}, "cannot give 200 clients"),
        ({"iid": False}, "needs a Dirichlet alpha"),
        ({"dirichlet_alpha": 0.0}, "alpha: 0.0"),
        ({"dirichlet_alpha": float("nan")}, "alpha: nan"),
        ({"test_fraction": 0.0}, "test fraction"),
        ({"validation_fraction": 0.5, "test_fraction": 0.45}, "under 10%"),
        ({"seed": -1}, "seed: -1"),
        ({"samples": 5000}, "samples: 5000"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"task": "digits", "clients": 3, "out": tmp_path / "o"}
    args.update(kwargs)
    with pytest.raises(TaskError, match=message):
        split(**args)  # type: ignore[arg-type]
    assert not (tmp_path / "o" / "split.json").exists()
