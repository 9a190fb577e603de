"""The simulation's split cache leaves nothing on disk, even in a process that ends
without running its finalizers (a Ray worker stopped at shutdown)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from secfl.eval.simulation import DataCache, Scenario
from secfl.tasks._registry import get_task


@pytest.mark.timeout(120)
def test_a_worker_that_exits_abruptly_leaves_no_split_behind(tmp_path: Path) -> None:
    child = textwrap.dedent(
        """
        import os
        from secfl.eval.simulation import DataCache, Scenario
        from secfl.tasks._registry import get_task
        cache = DataCache()
        shards, validation, test = cache.get(Scenario(task="digits", clients=3), get_task("digits"))
        assert len(shards) == 3 and len(validation) and len(test)
        print("loaded", flush=True)
        os._exit(0)  # as a Ray worker ends: no atexit, no finalizers
        """
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    assert "loaded" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_cache_folder_keeps_the_same_splits(tmp_path: Path) -> None:
    task = get_task("digits")
    s = Scenario(task="digits", clients=3)
    kept, _, _ = DataCache(tmp_path).get(s, task)
    fresh, _, _ = DataCache().get(s, task)
    assert [p.name for p in tmp_path.iterdir()] == ["digits-3-None-0-None"]
    for a, b in zip(kept, fresh, strict=True):
        assert np.array_equal(a.x.numpy(), b.x.numpy())
        assert np.array_equal(a.y.numpy(), b.y.numpy())
