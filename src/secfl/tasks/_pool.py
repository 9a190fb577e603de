"""A task's whole dataset as checked arrays: what ``secfl data split`` partitions.

A built-in task (:class:`~secfl.tasks._base.ArrayTask`) says everything about its
data. A user's task only has to provide ``load_pool() -> (x, y)`` (the optional
method of :class:`~secfl.tasks._contract.SplittableTask`); the rest is read off the
arrays: integer targets make a classification split (labels ``0 .. C-1``, ``C``
from the task's ``num_classes`` if it has one, else the largest label plus one),
floating-point targets a regression split. Its ``fit_scaling(x_train)``, when it
has one, scales the features; otherwise they are stored as they are.

Everything a shard's reader will refuse is refused here, before a split writes
anything: a task name that is not :data:`~secfl._internal.names.TASK_NAME` (it is
printed, and put in a table's title), more than :data:`MAX_CLASSES` classes (a
column of IDs taken for labels would make the label counts terabytes), features that
are not finite once in float32 (where a shard's features are scaled), and a scaling
that is not a :class:`Scaling` of finite numbers, one or one per feature.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from secfl._internal.names import TASK_NAME, TASK_NAME_RULE
from secfl._internal.values import describe, one_line, quoted
from secfl.errors import TaskError
from secfl.tasks._base import ArrayTask, Scaling
from secfl.tasks._regression import fit_target_scaling

__all__ = ["MAX_CLASSES", "STORAGE_DTYPES", "Pool", "fitted_scaling", "pool_of"]

#: The feature dtypes a shard stores.
STORAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))
#: More classes than this is surely not a label column (every shard counts each class).
MAX_CLASSES = 10_000


def _no_scaling(x_train: np.ndarray) -> Scaling:
    del x_train
    return Scaling(offset=(0.0,), scale=(1.0,))


@dataclass(frozen=True)
class Pool:
    """Every sample of a task with what a split needs to know about them."""

    name: str
    x: np.ndarray
    y: np.ndarray
    #: ``class``: y holds int64 labels ``0 .. num_classes - 1``; ``value``: float32 targets.
    kind: str
    num_classes: int | None
    fit_scaling: Callable[[np.ndarray], Scaling]
    fit_target_scaling: Callable[[np.ndarray], Scaling]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])


def pool_of(task: Any) -> Pool:
    """The checked dataset of ``task`` (a built-in task, or a user's with ``load_pool``)."""
    name = getattr(task, "name", None)
    if not isinstance(name, str) or not name:
        raise TaskError("data split: the task has no string 'name'")
    if not TASK_NAME.fullmatch(name):
        raise TaskError(
            f"data split: the task's name {quoted(name)} is not a task name ({TASK_NAME_RULE}); "
            "rename the task"
        )
    load = getattr(task, "load_pool", None)
    if not callable(load):
        raise TaskError(
            f"data split: task '{name}' has no load_pool(); add `def load_pool()` returning "
            "(x, y), the whole dataset as numpy arrays (see docs/tasks.md), or split the "
            "data yourself"
        )
    if isinstance(task, ArrayTask):
        x, y = task.load_pool()
        kind = task.target
        classes = getattr(task, "num_classes", None) if kind == "class" else None
        target_fit = getattr(task, "fit_target_scaling", fit_target_scaling)
        return _checked(name, x, y, kind, classes, task.fit_scaling, target_fit, task.storage_dtype)
    result = _call(name, "load_pool", load)
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise TaskError(f"data split: {name}.load_pool() must return (x, y), two numpy arrays")
    x, y = (np.asarray(v) for v in result)
    kind = "class" if y.dtype.kind in "iub" else "value" if y.dtype.kind == "f" else ""
    if not kind:
        raise TaskError(
            f"data split: {name}'s targets are {y.dtype}: give integer class labels or floats"
        )
    classes = None
    if kind == "class":
        given = getattr(task, "num_classes", None)
        classes = int(given) if isinstance(given, int) else int(y.max(initial=0)) + 1
    scaling = getattr(task, "fit_scaling", None)
    return _checked(
        name, x, y, kind, classes, scaling if callable(scaling) else _no_scaling,
        fit_target_scaling, x.dtype,
    )  # fmt: skip


def _checked(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    kind: str,
    classes: int | None,
    fit_scaling: Callable[[np.ndarray], Scaling],
    fit_target: Callable[[np.ndarray], Scaling],
    storage: np.dtype[Any],
) -> Pool:
    what = f"data split: {name}"
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise TaskError(f"{what}: load_pool() must return numpy arrays")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise TaskError(
            f"{what}: x must have one row per sample and y one target per row "
            f"(got x {list(x.shape)}, y {list(y.shape)})"
        )
    if np.dtype(storage) not in STORAGE_DTYPES or x.dtype != np.dtype(storage):
        raise TaskError(
            f"{what}: features are {x.dtype}; give uint8, float32 or float64 "
            "(e.g. x.astype(numpy.float32))"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # 1e300 is finite, not in float32
        finite = x.dtype.kind != "f" or bool(np.isfinite(x.astype(np.float32, copy=False)).all())
    if not finite:
        raise TaskError(
            f"{what}: the features hold NaN or infinity, or numbers past float32's range "
            "(about 3.4e38, where shards are scaled); scale them down"
        )
    if kind == "class" and classes is not None and classes > MAX_CLASSES:
        raise TaskError(
            f"{what}: {describe(classes)} classes, more than {MAX_CLASSES} (is an ID column "
            "taken for the labels?); give class labels 0 .. C-1"
        )
    if kind == "class":
        labels = y.astype(np.int64)
        if classes is None or classes < 2 or int(labels.min()) < 0 or int(labels.max()) >= classes:
            raise TaskError(f"{what}: class labels must be integers 0 .. C-1 with C >= 2")
        return Pool(name, x, labels, kind, classes, fit_scaling, fit_target)
    values = y.astype(np.float32)
    if not bool(np.isfinite(values).all()):
        raise TaskError(f"{what}: the targets hold NaN or infinity (or overflow float32)")
    return Pool(name, x, values, kind, None, fit_scaling, fit_target)


def fitted_scaling(pool: Pool, x_train: np.ndarray) -> dict[str, list[float]]:
    """``pool``'s feature scaling fitted on ``x_train``, as every shard records it.

    A user's ``fit_scaling`` may raise, or return anything: it must be a
    :class:`Scaling` whose offsets and scales are numbers finite in float32 (where
    features are scaled), scales positive, one of each or one per feature, or a shard
    written with it could never be loaded. Checked here, before anything is written.
    """
    what = f"data split: {pool.name}.fit_scaling()"
    scaling = _call(pool.name, "fit_scaling", pool.fit_scaling, x_train)
    if not isinstance(scaling, Scaling):
        raise TaskError(
            f"{what} returned {describe(scaling)}; return a secfl.tasks.Scaling(offset=..., "
            "scale=...)"
        )
    try:
        offset = [float(v) for v in _reals(scaling.offset)]
        scale = [float(v) for v in _reals(scaling.scale)]
    except (TypeError, ValueError, OverflowError):
        raise TaskError(f"{what}: offset and scale must be sequences of numbers") from None
    features = pool.x.shape[-1]
    if not offset or len(offset) != len(scale) or len(offset) not in (1, features):
        raise TaskError(
            f"{what}: {len(offset)} offsets and {len(scale)} scales for {features} features; "
            f"give one of each, or {features} of each"
        )
    with np.errstate(over="ignore"):
        offsets = np.asarray(offset, dtype=np.float32)
        scales = np.asarray(scale, dtype=np.float32)
    if not (np.isfinite(offsets).all() and np.isfinite(scales).all() and (scales > 0).all()):
        raise TaskError(
            f"{what}: offsets must be finite and scales positive, both within float32's range "
            "(about 3.4e38)"
        )
    return {"offset": offset, "scale": scale}


def _reals(values: Any) -> list[Any]:
    """``values`` as a list, if it is a sequence of real numbers (no bools, no strings)."""
    items = list(values)  # TypeError: not a sequence
    if isinstance(values, str | bytes) or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) for v in items
    ):
        raise TypeError("not numbers")
    return items


def _call(name: str, method: str, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, a task's own code: whatever it raises becomes one line."""
    try:
        return function(*args)
    except TaskError:
        raise
    except Exception as exc:  # a user's code may raise anything: one line, not a traceback
        text = one_line(str(exc) or type(exc).__name__)  # its message may span lines
        raise TaskError(f"data split: {name}.{method}() failed: {text}"[:300]) from None
