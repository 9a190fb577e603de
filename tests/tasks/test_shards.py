"""Shard files: round trip from every kind of source, and refusal of anything off."""

from __future__ import annotations

import io
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import torch

from secfl.tasks import TaskError, encode_shard, get_task, load_shard, read_shard, split
from secfl.tasks._shards import META_KEY


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("split")
    split("digits", 3, seed=0, out=out)
    return out / "client-001.safetensors"


def resave(path: Path, edit: object) -> bytes:
    """The shard re-encoded after ``edit(tensors, meta)`` changed it (digests kept)."""
    x, y, meta = read_shard(path)
    tensors = {"x": x.copy(), "y": y.copy()}
    edit(tensors, meta)  # type: ignore[operator]
    return safetensors.numpy.save(tensors, metadata={META_KEY: json.dumps(meta)})


def test_round_trip_from_every_source(shard: Path) -> None:
    blob = shard.read_bytes()
    task = get_task("digits")
    first = task.load_data(shard)
    assert first.meta["role"] == "client" and first.meta["index"] == 1
    assert first.x.dtype == torch.float32 and first.y.dtype == torch.int64
    assert tuple(first.x.shape) == (len(first), 64) and first.n == first.meta["samples"]
    assert float(first.x.min()) >= 0.0 and float(first.x.max()) <= 1.0
    for source in (str(shard), blob, bytearray(blob), memoryview(blob), io.BytesIO(blob)):
        again = task.load_data(source)
        assert torch.equal(again.x, first.x) and torch.equal(again.y, first.y)


def test_plain_safetensors_readers_read_it(shard: Path) -> None:
    tensors = safetensors.numpy.load_file(str(shard))
    assert sorted(tensors) == ["x", "y"] and tensors["x"].dtype == np.uint8
    with safetensors.safe_open(str(shard), "np") as handle:
        meta = json.loads(handle.metadata()[META_KEY])
    assert meta["task"] == "digits" and meta["format"] == "secfl-shard/1"


def test_shard_of_another_task_is_refused(shard: Path) -> None:
    with pytest.raises(TaskError, match="shard is for task 'digits', not 'breast-cancer'"):
        get_task("breast-cancer").load_data(shard)
    with pytest.raises(TaskError, match="not 'fashion-mnist'"):
        load_shard(shard, task="fashion-mnist")


def test_flipped_tensor_byte_is_refused(shard: Path) -> None:
    blob = bytearray(shard.read_bytes())
    blob[-100] ^= 0x01
    with pytest.raises(TaskError, match="digest mismatch"):
        load_shard(bytes(blob))


def test_truncated_and_garbage_are_refused(shard: Path) -> None:
    blob = shard.read_bytes()
    for bad, message in (
        (blob[:-1], "malformed tensor data"),
        (blob + b"\0", "malformed tensor data"),
        (blob[:5], "not a safetensors file"),
        (blob[:200], "header length out of range"),
        (b"\xff" * 64, "header length out of range"),
        ((20).to_bytes(8, "little") + b"{not json at all...}", "not valid JSON"),
    ):
        with pytest.raises(TaskError, match=message):
            load_shard(bad)


def _deep_header() -> bytes:
    header = b"[" * 100_000 + b"]" * 100_000
    return len(header).to_bytes(8, "little") + header


def _deep_metadata() -> bytes:
    meta = "[" * 100_000 + "]" * 100_000
    header = json.dumps({"__metadata__": {META_KEY: meta}, "x": {}, "y": {}}).encode()
    return len(header).to_bytes(8, "little") + header


@pytest.mark.parametrize(("blob", "message"), [
    (_deep_header, "shard: header is not valid JSON"),
    (_deep_metadata, "shard: metadata is not valid JSON (nested too deeply)"),
], ids=["header", "metadata"])  # fmt: skip
def test_deep_nesting_is_one_line_not_a_traceback(tmp_path: Path, blob: Any, message: str) -> None:
    """Found by a hostile review: 200 KB of brackets, well within the header bound, made
    `secfl data info` and every built-in task's load_data end in a RecursionError."""
    path = tmp_path / "deep.safetensors"
    path.write_bytes(blob())
    with pytest.raises(TaskError, match=re.escape(message)):
        load_shard(path)
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "data", "info", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"x": np.zeros((2, 64)), "y": np.zeros(2)}))
    with pytest.raises(TaskError):
        load_shard(path)


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="cannot read shard .*nope"):
        load_shard(tmp_path / "nope.safetensors")


def unsigned(meta: dict) -> dict:
    """Metadata without the digests, which :func:`encode_shard` recomputes."""
    return {k: v for k, v in meta.items() if not k.endswith("_sha256")}


def _drop_meta(t: dict, m: dict) -> None:
    m.pop("task")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t, m: m.update(samples=m["samples"] + 1), "label_counts do not add up"),
        (lambda t, m: m.update(task="mnist"), "shard is for task 'mnist', not 'digits'"),
        (lambda t, m: m.update(format="secfl-shard/2"), "format"),
        (lambda t, m: m.update(role="training"), "role 'training'"),
        (lambda t, m: m.update(index=9), "index below 'clients'"),
        (lambda t, m: m.update(storage_dtype="float32"), "x is uint8"),
        (lambda t, m: m.update(scaling={"offset": [0.0], "scale": [0.0]}), "not positive"),
        (lambda t, m: m.update(partition={"kind": "dirichlet", "alpha": -1}), "partition"),
        (lambda t, m: m.update(extra=1), "unknown \\['extra'\\]"),
        (_drop_meta, "missing \\['task'\\]"),
        (lambda t, m: t.update(z=np.zeros(1)), "exactly \\['x', 'y'\\]"),
        (lambda t, m: t.update(x=t["x"][:-1]), "features, .* labels"),
        (lambda t, m: t.update(y=t["y"].astype(np.int32)), "1-D int64"),
        (lambda t, m: t["y"].__setitem__(0, (t["y"][0] + 1) % 10), "digest mismatch"),
    ],
)
def test_malformed_metadata_or_tensors_are_refused(shard: Path, edit: object, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        get_task("digits").load_data(resave(shard, edit))


def test_a_consistent_shard_that_breaks_the_task_contract_is_refused(shard: Path) -> None:
    # Internally consistent (digests recomputed) but not what digits is.
    x, y, meta = read_shard(shard)
    wide = np.zeros((len(y), 65), np.uint8)
    meta.update(feature_shape=[65])
    with pytest.raises(TaskError, match=r"digits features have shape \[64\]"):
        load_shard(encode_shard(wide, y, unsigned(meta)))
    labels = np.full_like(y, 10)
    meta.update(feature_shape=[64], label_counts=[0] * 10 + [len(y)], num_classes=11)
    with pytest.raises(TaskError, match="digits has 10 classes, not 11"):
        load_shard(encode_shard(x, labels, unsigned(meta)))


def test_nan_features_are_refused(tmp_path: Path) -> None:
    report = split("breast-cancer", 2, seed=0, out=tmp_path)
    x, y, meta = read_shard(report.path("client-000.safetensors"))
    x = x.copy()
    x[0, 0] = np.nan
    with pytest.raises(TaskError, match="NaN"):
        load_shard(encode_shard(x, y, unsigned(meta)))


def test_shard_inside_a_shielded_volume(tmp_path: Path) -> None:
    from secfl.shield import Volume, VolumePath, encrypt_directory, generate_key

    report = split("digits", 2, seed=0, out=tmp_path / "plain")
    key = generate_key()
    encrypt_directory(tmp_path / "plain", tmp_path / "data.vol", key)
    expected = load_shard(report.path("client-000.safetensors"))
    task = get_task("digits")
    with Volume.open(tmp_path / "data.vol", key) as volume:
        sources = (
            volume.open_file("client-000.safetensors"),  # streamed, a file object
            volume.read_bytes("client-000.safetensors"),  # bytes
            VolumePath(volume, "client-000.safetensors"),  # a Traversable
        )
        for source in sources:
            loaded = task.load_data(source)
            assert torch.equal(loaded.x, expected.x) and torch.equal(loaded.y, expected.y)
