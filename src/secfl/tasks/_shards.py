"""The shard file: one safetensors file per collaborator, validation set or test set.

A shard holds two tensors, ``x`` (raw features in the task's storage dtype) and
``y`` (the targets), and one metadata entry, ``secfl.shard``, whose value is the
canonical JSON (sorted keys, no spaces) of::

    format         "secfl-shard/1"
    task           the task's registry name
    role           "client" | "validation" | "test"
    index          the collaborator's number (client shards), else null
    clients        how many client shards the split made
    samples        len(x) == len(y)
    feature_shape  x.shape[1:]
    storage_dtype  x's dtype, e.g. "uint8", "float32"
    scaling        {"offset": [...], "scale": [...]}: x is scaled as (x - offset) / scale
    partition      {"kind": "iid"} or {"kind": "dirichlet", "alpha": A}
    seed           the split's seed
    split          SHA-256 naming the split (task, seed, partition, fractions, scaling)
    x_sha256       SHA-256 of x's bytes, y_sha256 of y's: a flipped bit is refused

and, for a classification (``y``: int64 labels), ::

    num_classes    labels are 0 .. num_classes - 1
    label_counts   samples per label

or, for a regression (``y``: float32 values), ::

    target          "value"
    target_scaling  {"offset": [m], "scale": [s]}: y is scaled as (y - m) / s

Why one metadata key: safetensors writes its metadata map in hash order, so several
keys would make equal splits differ byte for byte; one key keeps files identical.
Never pickle: the reader parses the header itself and lets safetensors decode the
tensors. Authenticity is the shielded volume's job; these checks
(:mod:`secfl.tasks._shard_checks`) catch mistakes, corruption and a shard of the
wrong task. Wherever a shard is read from a path, the path may also be a folder
holding exactly one ``.safetensors`` file (a data volume).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from secfl._internal import files
from secfl._internal.canonical import canonical_json as _canonical_json
from secfl.errors import TaskError
from secfl.tasks._base import Dataset, Scaling, ShardSource
from secfl.tasks._shard_checks import FORMAT, ROLES, _check_against, _check_meta, target_kind

__all__ = [
    "FORMAT",
    "MAX_HEADER",
    "META_KEY",
    "ROLES",
    "array_digest",
    "canonical_json",
    "encode_shard",
    "load_shard",
    "read_bytes",
    "read_shard",
    "shard_file",
    "shard_meta",
    "target_kind",
    "write_shard",
]

META_KEY = "secfl.shard"
#: A shard header larger than this is refused before it is parsed.
MAX_HEADER = 1 << 20


def shard_file(folder: Path) -> Path:
    """The one ``.safetensors`` file in ``folder`` (searched recursively, as a data
    volume may keep it in a subfolder); none or several is a TaskError."""
    found = sorted(p for p in folder.rglob("*.safetensors") if p.is_file())
    if len(found) != 1:
        raise TaskError(
            f"source: {folder.name} holds {len(found)} .safetensors files, expected one"
        )
    return found[0]


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, no NaN: one spelling per value (the project's one
    canonical encoding, :mod:`secfl._internal.canonical`)."""
    return _canonical_json(value).decode("utf-8")


def array_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's little-endian C-order bytes."""
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    if contiguous.size == 0:  # a buffer with a zero in its shape does not cast
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(contiguous.data.cast("B")).hexdigest()  # its buffer, no copy


def encode_shard(x: np.ndarray, y: np.ndarray, meta: Mapping[str, Any]) -> bytes:
    """The safetensors bytes of a shard; the digests are filled in here."""
    from safetensors.numpy import save

    full = dict(meta)
    y = np.ascontiguousarray(y, dtype=np.int64 if target_kind(full) == "class" else np.float32)
    full["x_sha256"] = array_digest(x)
    full["y_sha256"] = array_digest(y)
    full.setdefault("format", FORMAT)
    _check_meta(full)
    tensors = {"x": np.ascontiguousarray(x), "y": y}
    return save(tensors, metadata={META_KEY: canonical_json(full)})


def write_shard(path: str | Path, x: np.ndarray, y: np.ndarray, meta: Mapping[str, Any]) -> str:
    """Write a shard atomically (a fresh temporary name, then a rename; mode 0644 less
    the umask); return its SHA-256."""
    blob = encode_shard(x, y, meta)
    try:
        files.atomic_write(path, blob, fsync=False)
    except OSError as exc:
        raise TaskError(f"shard: cannot write '{path}': {exc.strerror or exc}") from None
    return hashlib.sha256(blob).hexdigest()


def read_bytes(source: ShardSource) -> bytes:
    """A shard's bytes from a path, bytes, a binary file object or a ``Traversable``."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if os.path.isdir(path):  # (`Path.is_dir` raised on a name too long: a traceback)
            path = shard_file(path)
        try:  # a regular file: a FIFO or /dev/zero given as a shard is refused, not read
            with files.open_regular(path) as fh:
                return _read_file(fh, path)
        except OSError as exc:
            raise TaskError(f"cannot read shard '{source}': {exc.strerror or exc}") from None
    read = getattr(source, "read", None)  # a binary file, else a Traversable
    if not callable(read):
        read = getattr(source, "read_bytes", None)
    if not callable(read):
        raise TaskError(f"cannot read a shard from a {type(source).__name__}")
    data = read()
    if not isinstance(data, bytes | bytearray):
        raise TaskError("shard: the file object did not return bytes (open it in binary mode)")
    return bytes(data)


def _read_file(fh: BinaryIO, path: Path) -> bytes:
    """A shard file's bytes, no more than its header describes: a file of 20 GB that is
    no shard was read into memory whole before its first 8 bytes were looked at (found
    by a review). What cannot be a shard is returned as far as it was read, for
    :func:`read_shard` to refuse; a file longer or shorter than its tensors is refused
    here (safetensors refuses it too)."""
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(8)
    length = int.from_bytes(head, "little")
    if len(head) < 8 or length > MAX_HEADER or length > size - 8:
        return head
    header = fh.read(length)
    end = _data_end(header)
    if end is None:
        return head + header
    if 8 + length + end != size:
        raise TaskError(f"shard: '{path}' is {size} bytes, its header describes {8 + length + end}")
    return head + header + fh.read(end)


def _data_end(header: bytes) -> int | None:
    """Where a safetensors header's tensors end (past its header), or None."""
    try:
        doc = json.loads(header)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    ends = [
        info["data_offsets"][1]
        for name, info in doc.items()
        if name != "__metadata__"
        and isinstance(info, dict)
        and isinstance(info.get("data_offsets"), list)
        and len(info["data_offsets"]) == 2
    ]
    if not all(type(end) is int and end >= 0 for end in ends):
        return None
    return max(ends, default=0)


def read_shard(source: ShardSource) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Parse and check a shard's structure, metadata and digests (no task knowledge)."""
    data = read_bytes(source)
    if len(data) < 8:
        raise TaskError(f"shard: {len(data)} bytes, not a safetensors file")
    size = int.from_bytes(data[:8], "little")
    if size > MAX_HEADER or size > len(data) - 8:
        raise TaskError("shard: header length out of range (truncated or not safetensors)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, ValueError, RecursionError):  # nesting past the stack too
        raise TaskError("shard: header is not valid JSON") from None
    if not isinstance(header, dict):
        raise TaskError("shard: header is not a JSON object")
    extra = header.pop("__metadata__", None)
    if sorted(header) != ["x", "y"]:
        raise TaskError(f"shard: tensors {sorted(header)}, expected exactly ['x', 'y']")
    if not isinstance(extra, dict) or set(extra) != {META_KEY}:
        raise TaskError(f"shard: no '{META_KEY}' metadata (not written by secfl data split)")
    try:
        meta = json.loads(extra[META_KEY], parse_constant=_refuse_constant)
    except (TypeError, ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise TaskError(f"shard: metadata is not valid JSON ({why})") from None
    if not isinstance(meta, dict):
        raise TaskError("shard: metadata is not a JSON object")
    _check_meta(meta)
    from safetensors.numpy import load

    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error type for every flaw
        raise TaskError(f"shard: malformed tensor data ({str(exc).splitlines()[0]})") from None
    x, y = tensors["x"], tensors["y"]
    if x.dtype != np.dtype(meta["storage_dtype"]):
        raise TaskError(f"shard: x is {x.dtype}, metadata says {meta['storage_dtype']}")
    kind = target_kind(meta)
    want = np.int64 if kind == "class" else np.float32
    if y.dtype != want or y.ndim != 1:
        raise TaskError(
            f"shard: y must be a 1-D {np.dtype(want)} tensor, got {y.dtype} {list(y.shape)}"
        )
    if x.ndim != 1 + len(meta["feature_shape"]):  # (a 0-D x was an IndexError: a review)
        raise TaskError(f"shard: x has shape {list(x.shape)}, metadata {meta['feature_shape']}")
    if x.shape[0] != y.shape[0] or y.shape[0] != meta["samples"]:
        raise TaskError(
            f"shard: {x.shape[0]} features, {y.shape[0]} labels, metadata says {meta['samples']}"
        )
    if list(x.shape[1:]) != meta["feature_shape"]:
        raise TaskError(f"shard: x has shape {list(x.shape)}, metadata {meta['feature_shape']}")
    if array_digest(x) != meta["x_sha256"] or array_digest(y) != meta["y_sha256"]:
        raise TaskError("shard: tensor digest mismatch (the file was modified or corrupted)")
    if kind == "class":
        if y.size and (int(y.min()) < 0 or int(y.max()) >= meta["num_classes"]):
            raise TaskError(f"shard: labels outside 0..{meta['num_classes'] - 1}")
        counts = np.bincount(y, minlength=meta["num_classes"]).tolist()
        if counts != meta["label_counts"]:
            raise TaskError("shard: label counts do not match the metadata")
    elif not bool(np.isfinite(y).all()):
        raise TaskError("shard: targets contain NaN or infinity")
    if x.dtype.kind == "f" and not bool(np.isfinite(x).all()):
        raise TaskError("shard: features contain NaN or infinity")
    return x, y, meta


def load_shard(source: ShardSource, *, task: str | None = None) -> Dataset:
    """A validated shard as a :class:`Dataset` with scaled float32 features.

    ``task`` is the task the caller expects; a shard of another task is refused.
    Built-in tasks also check the feature shape, storage dtype, class count and
    scaling against the task's definition.
    """
    x, y, meta = read_shard(source)
    if task is not None and meta["task"] != task:
        raise TaskError(f"shard is for task '{meta['task']}', not '{task}'")
    from secfl.tasks._registry import builtin_task

    spec = builtin_task(meta["task"])
    if spec is not None:
        _check_against(spec, meta)
    scaling = Scaling(tuple(meta["scaling"]["offset"]), tuple(meta["scaling"]["scale"]))
    if len(scaling.offset) not in (1, x.shape[-1]):
        raise TaskError("shard: scaling does not match the number of features")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        scaled = scaling.apply(x)
        if target_kind(meta) == "value":
            offset, scale = meta["target_scaling"]["offset"], meta["target_scaling"]["scale"]
            y = Scaling(tuple(offset), tuple(scale)).apply(y)
    for name, values in (("features", scaled), ("targets", y)):
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise TaskError(
                f"shard: its scaled {name} hold NaN or infinity (the stored values, or a "
                "scaling that overflows float32); make the shard again"
            )
    return Dataset(torch.from_numpy(scaled), torch.from_numpy(y.copy()), meta)


def shard_meta(source: ShardSource) -> dict[str, Any]:
    """A shard's metadata, after the full structural check."""
    return read_shard(source)[2]


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")
