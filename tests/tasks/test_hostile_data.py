"""Hostile and malformed data given to `secfl data` and the shard readers: a one-line
refusal naming the check, never a traceback, a hang or an unbounded read, and a refused
split loses nothing. Found by a hostile review; real `secfl data` processes."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from secfl.errors import TaskError
from secfl.tasks import _fashion_mnist, load_shard
from secfl.tasks._shards import shard_meta

pytestmark = pytest.mark.timeout(300)


def secfl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "secfl.cli.main", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=240,
                          env=env or dict(os.environ), check=False)  # fmt: skip


def one_line_refusal(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 1
    assert done.stderr.startswith("error:") and done.stderr.count("\n") <= 1, done.stderr


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder `secfl data split --task digits --clients 2` wrote (once per module:
    copy it to change it)."""
    out = tmp_path_factory.mktemp("split")
    done = secfl("data", "split", "--task", "digits", "--clients", "2", "-o", str(out / "s"))
    assert done.returncode == 0, done.stderr
    return out / "s"


@pytest.fixture(scope="module")
def shard(split: Path) -> Path:
    return split / "client-000.safetensors"


def _header(shard: Path) -> tuple[dict[str, Any], bytes]:
    data = shard.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _with_meta(shard: Path, dest: Path, text: str) -> Path:
    """``shard`` with its metadata text replaced by ``text`` (raw JSON)."""
    header, rest = _header(shard)
    header["__metadata__"] = {"secfl.shard": text}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dest.write_bytes(len(raw).to_bytes(8, "little") + raw + rest)
    return dest


def _meta(shard: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(_header(shard)[0]["__metadata__"]["secfl.shard"])
    return meta


BIG = "1" + "0" * 400  # 10**400: a JSON integer, finite, beyond float


@pytest.mark.parametrize("field", ["scale", "offset", "alpha"])
def test_info_huge_integer_in_metadata(shard: Path, tmp_path: Path, field: str) -> None:
    meta = _meta(shard)
    if field == "alpha":
        meta["partition"] = {"kind": "dirichlet", "alpha": 7}
        text = json.dumps(meta).replace('"alpha": 7', f'"alpha": {BIG}')
    else:
        meta["scaling"] = {"offset": [0], "scale": [1]}
        meta["scaling"][field] = [7]
        text = json.dumps(meta).replace("[7]", f"[{BIG}]")
    bad = _with_meta(shard, tmp_path / "bad.safetensors", text)
    with pytest.raises(TaskError, match="^shard metadata: "):  # was an OverflowError
        shard_meta(bad)
    if field == "scale":  # and so, in one line, is `secfl data info`
        one_line_refusal(secfl("data", "info", str(bad)))


@pytest.mark.parametrize("field", ["format", "role", "storage_dtype", "unknown"])
def test_metadata_values_are_quoted_short(shard: Path, tmp_path: Path, field: str) -> None:
    """A shard's metadata is quoted in a refusal, and a data volume's refusal reaches the
    host: a value or key of a megabyte, or with escapes, was quoted whole (review)."""
    meta = _meta(shard)
    long = "\x1b[2J" + "x" * 1_000_000
    if field == "unknown":
        meta |= {f"{long[:10_000]}{i}": 1 for i in range(8)}
    else:
        meta[field] = long
    bad = _with_meta(shard, tmp_path / "bad.safetensors", json.dumps(meta))
    with pytest.raises(TaskError, match="^shard metadata: ") as refused:
        shard_meta(bad)
    text = str(refused.value)
    assert len(text) < 2000 and "\x1b" not in text and "\\x1b" in text, text[:300]


@pytest.mark.parametrize(
    "scaling",
    [{"offset": [0.0], "scale": [1e-320]},  # float32(scale) == 0: x/0
     {"offset": [1e300], "scale": [1.0]}],  # float32(offset) == inf
)  # fmt: skip
def test_scaled_features_are_finite_or_refused(
    shard: Path, tmp_path: Path, scaling: dict[str, Any]
) -> None:
    """The scaling was checked in float64, and applied in float32: NaN and infinite
    features loaded without a word."""
    meta = _meta(shard) | {"scaling": scaling}
    bad = _with_meta(shard, tmp_path / "bad.safetensors", json.dumps(meta))
    with pytest.raises(TaskError, match="scaling"):
        load_shard(bad)
    assert bool(torch.isfinite(load_shard(shard).x).all())


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "client-000.safetensors"
    os.mkfifo(fifo)
    one_line_refusal(secfl("data", "info", str(fifo)))  # was a hang


TASK = """
import numpy as np
from secfl.tasks import Scaling
name = "t"
def build_model(seed=0): raise NotImplementedError
def load_data(path): raise NotImplementedError
def train(m, d, c): raise NotImplementedError
def evaluate(m, d): raise NotImplementedError
def load_pool():
    x = np.random.default_rng(0).normal(size=(200, FEATURES)).astype(np.float32)
    return x, (np.arange(200) % 2).astype(np.int64)
SCALING
"""


@pytest.mark.parametrize("case", ["nan-scaling", "zero-features"])
def test_split_of_a_malformed_task(tmp_path: Path, case: str) -> None:
    text = TASK.replace("FEATURES", "0" if case == "zero-features" else "4").replace(
        "SCALING",
        "def fit_scaling(x):\n    return Scaling(offset=(0.0,), scale=(float('nan'),))"
        if case == "nan-scaling"
        else "",
    )
    task = tmp_path / "task.py"
    task.write_text(text)
    # was a ValueError (NaN in canonical_json), a TypeError (array_digest's cast)
    done = secfl("data", "split", "--task", str(task), "--clients", "2", "-o", str(tmp_path / "o"))
    one_line_refusal(done)


def test_split_overwrite_over_a_folder_named_like_a_shard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "client-000.safetensors").mkdir(parents=True)
    # was an IsADirectoryError traceback
    one_line_refusal(
        secfl("data", "split", "--task", "digits", "--clients", "2", "-o", str(out), "--overwrite")
    )


#: A task whose scaling divides by zero: refused only when its shards are encoded.
BAD_SCALE = TASK.replace("FEATURES", "4").replace(
    "SCALING", "def fit_scaling(x):\n    return Scaling(offset=(0.0,), scale=(0.0,))"
)


def test_failed_overwrite_keeps_the_earlier_split(split: Path, tmp_path: Path) -> None:
    out = shutil.copytree(split, tmp_path / "shards")  # a split `secfl data split` made
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    task = tmp_path / "task.py"
    task.write_text(BAD_SCALE)
    bad = secfl(
        "data", "split", "--task", str(task), "--clients", "2", "-o", str(out), "--overwrite"
    )
    assert bad.returncode == 1 and "scaling" in bad.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before, f"the earlier split is gone: {sorted(after)}"


def test_idx_dims_that_wrap_are_refused_in_one_line(tmp_path: Path) -> None:
    """The length check multiplied the dimensions in int64: 2^31 x 2^31 x 4 "needs" 0
    bytes, so a header-only file passed it, and reshape raised."""
    images = b"\x00\x00\x08\x03" + (2**31).to_bytes(4, "big") * 2 + (4).to_bytes(4, "big")
    labels = b"\x00\x00\x08\x01" + (0).to_bytes(4, "big")
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    env = {**os.environ, "SECFL_FASHION_MNIST_DIR": str(tmp_path)}
    one_line_refusal(secfl("data", "split", "--task", "fashion-mnist", "--clients", "2",
                           "-o", str(tmp_path / "out"), env=env))  # fmt: skip


def test_a_fifo_for_the_fashion_mnist_files_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Found by a hostile review: the IDX files were opened blocking: a FIFO put in
    their place hung `secfl data split --task fashion-mnist` for ever."""
    os.mkfifo(tmp_path / "train-images-idx3-ubyte.gz")
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):  # fmt: skip
        (tmp_path / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(4)))
    env = {**os.environ, "SECFL_FASHION_MNIST_DIR": str(tmp_path)}
    done = secfl("data", "split", "--task", "fashion-mnist", "--clients", "2",
                 "-o", str(tmp_path / "out"), env=env)  # fmt: skip
    one_line_refusal(done)
    assert "not a regular file" in done.stderr, done.stderr


@pytest.mark.parametrize("alpha", ["1e-300", "1e308"])
def test_an_alpha_float32_cannot_hold_is_refused_before_the_split(
    tmp_path: Path, alpha: str
) -> None:
    """Found by a hostile review: such an alpha was split whole, then the shard encoder
    refused it with a message about the partition's kind."""
    done = secfl("data", "split", "--task", "digits", "--clients", "2",
                 "--dirichlet", alpha, "-o", str(tmp_path / "out"))  # fmt: skip
    one_line_refusal(done)
    assert "dirichlet alpha: " in done.stderr and "float32" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_an_idx_gzip_bomb_is_not_unpacked_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fashion_mnist, "MAX_IDX_BYTES", 4096)
    bomb = tmp_path / "bomb-idx1-ubyte.gz"
    bomb.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(10**6)))
    with pytest.raises(TaskError, match="unpacks to more than 4096 bytes"):
        _fashion_mnist.read_idx(bomb, 1)


def test_a_split_holds_one_shard_at_a_time(tmp_path: Path) -> None:
    """The review of the fix: encoding every shard before writing any held the dataset
    a second time in memory. Shards are now staged under temporary names one by one."""
    import tracemalloc

    import numpy as np

    from secfl.tasks._split import split

    class Big:
        name = "big"
        x = np.random.default_rng(0).random((20_000, 1_000), dtype=np.float32)  # 80 MB
        y = (np.arange(20_000) % 10).astype(np.int64)

        def load_pool(self) -> tuple[Any, Any]:
            return self.x, self.y

    task = Big()
    tracemalloc.start()
    try:
        split(task, 10, out=tmp_path / "out", seed=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.9 * task.x.nbytes, f"{peak / 2**20:.0f} MiB for {task.x.nbytes / 2**20:.0f}"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


_BIG_SPLIT = """
import sys
import time
import numpy as np
from secfl.tasks._split import split
class Big:
    name = "big"
    x = np.random.default_rng(0).random((40_000, 100), dtype=np.float32)
    y = (np.arange(40_000) % 10).astype(np.int64)
    def load_pool(self):
        return self.x, self.y
split(Big(), 40, out=sys.argv[1], seed=1, overwrite=True)
"""


def test_a_split_killed_while_staging_leaves_no_shards_for_good(tmp_path: Path) -> None:
    """The review of staging: a split killed while staging left hidden copies of the
    data that no later split removed."""
    import signal

    out = tmp_path / "out"

    def hidden() -> list[str]:
        return (
            sorted(p.name for p in out.iterdir() if p.name.startswith(".")) if out.exists() else []
        )

    proc = subprocess.Popen([sys.executable, "-c", _BIG_SPLIT, str(out)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(hidden()) < 2 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not hidden():
        pytest.skip("the split finished before it could be killed")
    done = subprocess.run([sys.executable, "-c", _BIG_SPLIT, str(out)], capture_output=True,
                          text=True, timeout=200, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-500:]
    assert hidden() == []


def test_a_zero_dimensional_x_or_a_listed_dtype_is_one_line(shard: Path, tmp_path: Path) -> None:
    """Found by a hostile review: a 0-D ``x`` tensor was an IndexError and a list as
    ``storage_dtype`` a TypeError (unhashable), each a traceback from `secfl data info`."""
    import numpy as np
    from safetensors.numpy import save

    from secfl.tasks import read_shard
    from secfl.tasks._shards import canonical_json

    x, y, meta = read_shard(shard)
    scalar = tmp_path / "zero-d.safetensors"
    scalar.write_bytes(save({"x": np.array(3, dtype=x.dtype), "y": y},
                            metadata={"secfl.shard": canonical_json(meta)}))  # fmt: skip
    listed = _with_meta(shard, tmp_path / "listed.safetensors",
                        json.dumps(meta | {"storage_dtype": ["uint8"]}))  # fmt: skip
    for bad in (scalar, listed):
        one_line_refusal(secfl("data", "info", str(bad)))
    with pytest.raises(TaskError, match=r"^shard: x has shape \[\], metadata "):
        read_shard(scalar)
