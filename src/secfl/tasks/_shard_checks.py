"""A shard's metadata checked: every field present, of the right type and range.

The fields are listed in :mod:`secfl.tasks._shards`. A shard is checked before it is
written and after it is read, and once more against the built-in task it claims
(:func:`_check_against`); these checks catch mistakes, corruption and a shard of the
wrong task, not forgery (the shielded volume's job). Kept apart from reading and
writing the file because they are the schema: what a valid shard is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from secfl._internal.names import TASK_NAME, TASK_NAME_RULE
from secfl._internal.values import quoted
from secfl.errors import TaskError
from secfl.tasks._base import ArrayTask

__all__ = ["FORMAT", "ROLES", "target_kind"]

FORMAT = "secfl-shard/1"
ROLES = ("client", "validation", "test")
_STORAGE_DTYPES = {"uint8": np.uint8, "float32": np.float32, "float64": np.float64}
_COMMON_KEYS = frozenset(
    {
        "format",
        "task",
        "role",
        "index",
        "clients",
        "samples",
        "feature_shape",
        "storage_dtype",
        "scaling",
        "partition",
        "seed",
        "split",
        "x_sha256",
        "y_sha256",
    }
)
#: The metadata keys of a classification shard and of a regression shard.
_META_KEYS = {
    "class": _COMMON_KEYS | {"num_classes", "label_counts"},
    "value": _COMMON_KEYS | {"target", "target_scaling"},
}


def target_kind(meta: Mapping[str, Any]) -> str:
    """``class`` (labels) or ``value`` (a regression's targets): what a shard's y holds."""
    return "value" if "target" in meta else "class"


def _check_against(spec: ArrayTask, meta: Mapping[str, Any]) -> None:
    name = spec.name
    if target_kind(meta) != spec.target:
        held = "class labels" if target_kind(meta) == "class" else "regression targets"
        raise TaskError(f"shard: {name} is not trained on {held}")
    if tuple(meta["feature_shape"]) != spec.feature_shape:
        raise TaskError(
            f"shard: {name} features have shape {list(spec.feature_shape)}, "
            f"not {meta['feature_shape']}"
        )
    if np.dtype(meta["storage_dtype"]) != np.dtype(spec.storage_dtype):
        raise TaskError(f"shard: {name} stores {np.dtype(spec.storage_dtype)} features")
    if spec.target == "class" and meta["num_classes"] != getattr(spec, "num_classes", None):
        raise TaskError(
            f"shard: {name} has {getattr(spec, 'num_classes', 0)} classes, "
            f"not {meta['num_classes']}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_meta(meta: Mapping[str, Any]) -> None:
    """Every metadata field present, of the right type and range."""
    if "target" in meta and meta["target"] != "value":
        raise TaskError(f"shard metadata: target {str(meta['target'])[:20]!r} is not 'value'")
    kind = target_kind(meta)
    missing = sorted(_META_KEYS[kind] - set(meta))
    unknown = sorted(set(meta) - _META_KEYS[kind])
    if missing or unknown:
        shown_unknown = ", ".join(quoted(k) for k in unknown[:5]) + (
            ", ..." if len(unknown) > 5 else ""
        )
        raise TaskError(f"shard metadata: missing {missing}, unknown [{shown_unknown}]")
    if meta["format"] != FORMAT:
        raise TaskError(f"shard metadata: format {quoted(meta['format'])}, expected {FORMAT!r}")
    if not isinstance(meta["task"], str) or not meta["task"]:
        raise TaskError("shard metadata: no task name")
    if not TASK_NAME.fullmatch(meta["task"]):  # it is printed: no escapes, no markup
        raise TaskError(
            f"shard metadata: task {quoted(meta['task'])} is not a task name ({TASK_NAME_RULE}); "
            "split the data again under such a name"
        )
    if meta["role"] not in ROLES:
        raise TaskError(
            f"shard metadata: role {quoted(meta['role'])} is not one of {', '.join(ROLES)}"
        )
    for key in ("clients", "samples", "seed"):
        if not _is_int(meta[key]) or meta[key] < 0:
            raise TaskError(f"shard metadata: {key} is not a non-negative integer")
    if meta["samples"] < 1 or meta["clients"] < 1:
        raise TaskError("shard metadata: no samples or no clients")
    index = meta["index"]
    if meta["role"] == "client":
        if not _is_int(index) or not 0 <= index < meta["clients"]:
            raise TaskError("shard metadata: a client shard needs an index below 'clients'")
    elif index is not None:
        raise TaskError("shard metadata: only client shards have an index")
    if kind == "class":
        _check_labels(meta)
    else:
        _check_scaling(meta["target_scaling"], "target_scaling")
        if len(meta["target_scaling"]["offset"]) != 1:
            raise TaskError("shard metadata: target_scaling holds one offset and one scale")
    shape = meta["feature_shape"]
    if not isinstance(shape, list) or not shape or not all(_is_int(d) and d > 0 for d in shape):
        raise TaskError("shard metadata: feature_shape is not a list of positive integers")
    if not isinstance(meta["storage_dtype"], str) or meta["storage_dtype"] not in _STORAGE_DTYPES:
        raise TaskError(
            f"shard metadata: storage_dtype {quoted(meta['storage_dtype'])} not supported"
        )
    _check_scaling(meta["scaling"])
    _check_partition(meta["partition"])
    for key in ("split", "x_sha256", "y_sha256"):
        value = meta[key]
        if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
            raise TaskError(f"shard metadata: {key} is not a SHA-256 in hex")


def _check_labels(meta: Mapping[str, Any]) -> None:
    if not _is_int(meta["num_classes"]) or meta["num_classes"] < 2:
        raise TaskError("shard metadata: num_classes is not an integer of at least 2")
    counts = meta["label_counts"]
    if (
        not isinstance(counts, list)
        or len(counts) != meta["num_classes"]
        or not all(_is_int(c) and c >= 0 for c in counts)
        or sum(counts) != meta["samples"]
    ):
        raise TaskError("shard metadata: label_counts do not add up to the samples")


def _check_scaling(scaling: Any, what: str = "scaling") -> None:
    if not isinstance(scaling, dict) or set(scaling) != {"offset", "scale"}:
        raise TaskError(f"shard metadata: {what} needs exactly 'offset' and 'scale'")
    offset, scale = scaling["offset"], scaling["scale"]
    for values in (offset, scale):
        if not isinstance(values, list) or not values:
            raise TaskError("shard metadata: scaling values must be non-empty lists")
        for v in values:
            if not _finite32(v):
                raise TaskError("shard metadata: scaling values must be numbers finite in float32")
    if len(offset) != len(scale):
        raise TaskError("shard metadata: scaling offset and scale differ in length")
    if any(np.float32(v) <= 0 for v in scale):
        raise TaskError("shard metadata: scaling divides by a number that is not positive")


def _finite32(value: Any) -> bool:
    """A JSON number that stays finite in float32, where scaling is computed (10**400,
    1e300 and NaN are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        with np.errstate(over="ignore"):
            return bool(np.isfinite(np.float32(value)))
    except OverflowError:
        return False


def _check_partition(partition: Any) -> None:
    if not isinstance(partition, dict):
        raise TaskError("shard metadata: partition is not an object")
    kind = partition.get("kind")
    if kind == "iid" and set(partition) == {"kind"}:
        return
    alpha = partition.get("alpha")
    if (
        kind == "dirichlet"
        and set(partition) == {"kind", "alpha"}
        and _finite32(alpha)
        and np.float32(alpha) > 0
    ):
        return
    shown = kind if isinstance(kind, str) and len(kind) <= 32 else "?"
    raise TaskError(
        f"shard metadata: partition '{shown}' is not iid or dirichlet with a finite alpha > 0"
    )
