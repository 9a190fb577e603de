"""``secfl demo --poisoned P`` adds P sites with poisoned data to the --clients honest
ones (it once replaced honest sites instead)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from secfl.demo.federation import DemoSettings, Federation
from secfl.tasks._shards import read_shard
from tests.clirun import failed


def test_poisoned_sites_are_added_after_the_honest_ones(tmp_path: Path) -> None:
    fed = Federation(tmp_path, DemoSettings(clients=3, poisoned=1, samples=400))
    assert fed.sites == ["site-1", "site-2", "site-3", "site-4"]
    assert fed.poisoned == ["site-4"]
    fed.prepare_data()  # split into 4 shards, poison the added one, shield each
    plain = tmp_path / "plain"
    shards = sorted((plain / "shards").glob("client-*.safetensors"))
    assert len(shards) == 4
    for site, shard in zip(fed.sites, shards, strict=True):
        _, original, _ = read_shard(shard)
        _, held, meta = read_shard(plain / site / shard.name)
        if site in fed.poisoned:
            assert np.array_equal(held, meta["num_classes"] - 1 - original)
        else:
            assert np.array_equal(held, original)
    assert {p.name for p in (tmp_path / "volumes").glob("site-*.secfl")} == {
        f"{site}.secfl" for site in fed.sites
    }


def test_no_poisoned_site_by_default(tmp_path: Path) -> None:
    fed = Federation(tmp_path, DemoSettings(clients=2))
    assert fed.sites == ["site-1", "site-2"] and fed.poisoned == []


@pytest.mark.parametrize(("clients", "poisoned"), [("2", "2"), ("3", "-1")])
def test_poisoned_sites_must_be_fewer_than_the_honest_ones(
    capsys: pytest.CaptureFixture[str], clients: str, poisoned: str
) -> None:
    line = failed(capsys, "demo", "--clients", clients, "--poisoned", poisoned)
    assert line.startswith(f"error: --poisoned: {poisoned} is not from 0 to {int(clients) - 1}")
    assert "raise --clients" in line


def test_a_regression_site_is_poisoned_by_mirroring_its_targets(tmp_path: Path) -> None:
    from secfl.tasks import task_names

    if "diabetes" not in task_names():
        pytest.skip("no built-in regression task")
    fed = Federation(tmp_path, DemoSettings(task="diabetes", clients=2, poisoned=1))
    fed.prepare_data()
    shard = sorted((tmp_path / "plain" / "shards").glob("client-*.safetensors"))[2]
    _, original, meta = read_shard(shard)
    _, held, _ = read_shard(tmp_path / "plain" / "site-3" / shard.name)
    mean = meta["target_scaling"]["offset"][0]
    assert np.allclose(held, 2 * mean - original, rtol=1e-5)
