"""`secfl data split --task PATH`: a user's task that can give its dataset as arrays."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from secfl.tasks import load_shard, read_shard, split
from tests.clirun import call, failed, one_error, secfl

TASK = """
import numpy as np

name = "{name}"
{extra}

def build_model(seed=None):
    raise NotImplementedError

def load_data(path):
    raise NotImplementedError

def train(model, data, config):
    raise NotImplementedError

def evaluate(model, data):
    raise NotImplementedError
"""

POOL = """
def load_pool():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 4)).astype(np.{dtype})
    y = {targets}
    return x, y
"""


@pytest.fixture(autouse=True)
def _forget_user_tasks() -> None:
    yield
    for name in [m for m in sys.modules if m.startswith("secfl_task_")]:
        del sys.modules[name]


def write_task(folder: Path, name: str, extra: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.py").write_text(TASK.format(name=name, extra=extra))
    return folder / "task.py"


def test_a_classification_task_from_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pool = POOL.format(
        dtype="float32", targets="(x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)"
    )
    path = write_task(tmp_path / "wine", "wine", pool)
    code, out, err = call(capsys, "data", "split", "--task", str(path), "--clients", "3",
                          "-o", str(tmp_path / "shards"))  # fmt: skip
    assert code == 0, err
    assert "wine: 3 clients" in out and "top labels" in out
    data = load_shard(tmp_path / "shards" / "client-000.safetensors", task="wine")
    assert data.meta["num_classes"] == 4 and data.x.shape[1:] == (4,)
    total = sum(len(load_shard(p)) for p in sorted((tmp_path / "shards").glob("*.safetensors")))
    assert total == 120
    dirichlet = split(_module(path), 3, dirichlet_alpha=0.3, out=tmp_path / "skew", min_samples=5)
    assert dirichlet.partition == {"kind": "dirichlet", "alpha": 0.3}


def test_a_regression_task_from_its_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pool = POOL.format(dtype="float64", targets="(3 * x[:, 0] + 100).astype(np.float32)")
    write_task(tmp_path / "yield", "crop-yield", pool)
    code, out, err = call(capsys, "data", "split", "--task", str(tmp_path / "yield"),
                          "--clients", "2", "-o", str(tmp_path / "shards"))  # fmt: skip
    assert code == 0, err
    assert "crop-yield: 2 clients" in out and "top labels" not in out
    _, y, meta = read_shard(tmp_path / "shards" / "client-001.safetensors")
    assert meta["target"] == "value" and y.dtype == np.float32
    assert meta["target_scaling"]["offset"][0] == pytest.approx(100, abs=1.5)
    manifest = json.loads((tmp_path / "shards" / "split.json").read_text())
    assert manifest["task"] == "crop-yield" and "target_scaling" in manifest
    assert "leave out --dirichlet" in failed(
        capsys, "data", "split", "--task", str(tmp_path / "yield"), "--clients", "2",
        "--dirichlet", "1", "-o", str(tmp_path / "skew"),
    )  # fmt: skip


def test_a_task_without_load_pool_is_told_what_to_add(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_task(tmp_path / "plain", "plain", "")
    line = failed(capsys, "data", "split", "--task", str(path), "--clients", "2",
                  "-o", str(tmp_path / "out"))  # fmt: skip
    assert line.startswith("error: data split: task 'plain' has no load_pool(); add ")
    assert not (tmp_path / "out").exists()
    line = failed(capsys, "data", "split", "--task", str(tmp_path / "nowhere"), "--clients", "2",
                  "-o", str(tmp_path / "out"))  # fmt: skip
    assert "is neither a built-in task" in line


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        (
            "def load_pool():\n    return np.zeros((4, 2), np.int64), np.zeros(4, np.int64)",
            "features are int64; give uint8, float32 or float64",
        ),
        (
            "def load_pool():\n    return np.zeros((4, 2), np.float32), np.zeros(3, np.int64)",
            "x must have one row per sample",
        ),
        (
            "def load_pool():\n    return np.zeros((4, 2), np.float32), np.array(['a'] * 4)",
            "targets are <U1: give integer class labels or floats",
        ),
        (
            "def load_pool():\n    return np.full((4, 2), np.nan, np.float32), np.zeros(4)",
            "the features hold NaN or infinity",
        ),
        (
            "def load_pool():\n    return np.zeros((4, 2), np.float32)",
            "load_pool() must return (x, y)",
        ),
        (
            "def load_pool():\n    raise OSError('all.csv: no such file')",
            "load_pool() failed: all.csv: no such file",
        ),
    ],
)
def test_a_bad_pool_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pool: str, message: str
) -> None:
    path = write_task(tmp_path / "bad", "bad", pool)
    line = failed(capsys, "data", "split", "--task", str(path), "--clients", "2",
                  "-o", str(tmp_path / "out"))  # fmt: skip
    assert line.startswith("error: data split: bad") and message in line, line


def _module(path: Path) -> object:
    from secfl.fl._inputs import load_task

    return load_task(str(path))


GOOD_POOL = """
def load_pool():
    return np.ones((200, 3), dtype=np.float32), (np.arange(200) % 2).astype(np.int64)
"""


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        (
            "dict-scaling",
            GOOD_POOL + "\ndef fit_scaling(x):\n    return {'offset': [0.0], 'scale': [1.0]}",
            "dict-scaling.fit_scaling() returned a dict; return a secfl.tasks.Scaling(",
        ),
        (
            "raising-scaling",
            GOOD_POOL + "\ndef fit_scaling(x):\n    raise RuntimeError('boom\\nTraceback')",
            "raising-scaling.fit_scaling() failed: boom\\nTraceback",
        ),
        (
            "short-scaling",
            "from secfl.tasks import Scaling\n"
            + GOOD_POOL
            + "\ndef fit_scaling(x):\n    return Scaling(offset=(0.0, 0.0), scale=(1.0, 1.0))",
            "2 offsets and 2 scales for 3 features; give one of each, or 3 of each",
        ),
        (
            "huge-scaling",
            "from secfl.tasks import Scaling\n"
            + GOOD_POOL
            + "\ndef fit_scaling(x):\n    return Scaling(offset=(0.0,), scale=(1e300,))",
            "offsets must be finite and scales positive, both within float32's range",
        ),
        (
            "id-labels",
            "def load_pool():\n    y = np.array([0, 1] * 100 + [10**13], dtype=np.int64)\n"
            "    return np.ones((y.size, 3), dtype=np.float32), y",
            "10000000000001 classes, more than 10000 (is an ID column taken for the labels?)",
        ),
        (
            "f32-overflow",
            "def load_pool():\n    x = np.ones((200, 3), dtype=np.float64)\n    x[5, 0] = 1e300\n"
            "    return x, (np.arange(200) % 2).astype(np.int64)",
            "numbers past float32's range (about 3.4e38, where shards are scaled)",
        ),
        (
            "evil[/]",
            GOOD_POOL,
            "the task's name 'evil[/]' is not a task name (a letter, then up to 63 letters",
        ),
        (
            "x\\x1b[2J\\u202eevil",
            GOOD_POOL,
            "the task's name 'x\\x1b[2J\\u202eevil' is not a task name",
        ),
    ],
)
def test_a_hostile_task_is_one_line_and_an_earlier_split_survives(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, extra: str, message: str
) -> None:
    """What a task's code returns is checked before anything is written: a refusal in one
    line (a process of its own: no traceback, no terminal escape), and the earlier split
    in the output folder kept byte for byte, even with --overwrite."""
    good = write_task(tmp_path / "good", "good", GOOD_POOL)
    out = tmp_path / "shards"
    code, _, err = call(capsys, "data", "split", "--task", str(good), "--clients", "2",
                        "-o", str(out))  # fmt: skip
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    path = write_task(tmp_path / "bad", name, extra)
    done = secfl("data", "split", "--task", str(path), "--clients", "2", "-o", str(out),
                 "--overwrite")  # fmt: skip
    line = one_error(done)
    assert line.startswith("error: data split: ") and message in line, line
    assert "\x1b" not in done.stderr and "\u202e" not in done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
