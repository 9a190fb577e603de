"""A task's whole dataset as checked arrays: what ``secfl data split`` partitions.

A built-in task (:class:`~secfl.tasks._base.ArrayTask`) says everything about its
data. A user's task only has to provide ``load_pool() -> (x, y)`` (the optional
method of :class:`~secfl.tasks._contract.SplittableTask`); the rest is read off the
arrays: integer targets make a classification split (labels ``0 .. C-1``, ``C``
from the task's ``num_classes`` if it has one, else the largest label plus one),
floating-point targets a regression split. Its ``fit_scaling(x_train)``, when it
has one, scales the features; otherwise they are stored as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from secfl.errors import TaskError
from secfl.tasks._base import ArrayTask, Scaling
from secfl.tasks._regression import fit_target_scaling

__all__ = ["STORAGE_DTYPES", "Pool", "pool_of"]

#: The feature dtypes a shard stores.
STORAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))


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
    try:
        result = load()
    except TaskError:
        raise
    except Exception as exc:  # a user's code may raise anything: one line, not a traceback
        raise TaskError(f"data split: {name}.load_pool() failed: {exc}"[:300]) from None
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
    if x.dtype.kind == "f" and not bool(np.isfinite(x).all()):
        raise TaskError(f"{what}: the features hold NaN or infinity")
    if kind == "class":
        labels = y.astype(np.int64)
        if classes is None or classes < 2 or int(labels.min()) < 0 or int(labels.max()) >= classes:
            raise TaskError(f"{what}: class labels must be integers 0 .. C-1 with C >= 2")
        return Pool(name, x, labels, kind, classes, fit_scaling, fit_target)
    values = y.astype(np.float32)
    if not bool(np.isfinite(values).all()):
        raise TaskError(f"{what}: the targets hold NaN or infinity (or overflow float32)")
    return Pool(name, x, values, kind, None, fit_scaling, fit_target)
