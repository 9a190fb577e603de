"""Task names → tasks: the built-in ones, and a check for a task delivered as code."""

from __future__ import annotations

import importlib
from typing import Any

from secfl.errors import TaskError
from secfl.tasks._base import ArrayTask
from secfl.tasks._contract import Task

__all__ = [
    "BUILTIN",
    "as_task",
    "builtin_task",
    "get_task",
    "task_names",
]

#: Built-in task name → the module defining ``TASK`` (imported on first use).
BUILTIN = {
    "digits": "secfl.tasks._digits",
    "breast-cancer": "secfl.tasks._breast_cancer",
    "fashion-mnist": "secfl.tasks._fashion_mnist",
    "diabetes": "secfl.tasks._diabetes",
}
_REQUIRED = ("build_model", "load_data", "train", "evaluate")


def task_names() -> list[str]:
    """The built-in task names, sorted."""
    return sorted(BUILTIN)


def builtin_task(name: str) -> ArrayTask | None:
    """The built-in task of that name, or ``None``."""
    module = BUILTIN.get(name)
    if module is None:
        return None
    task = importlib.import_module(module).TASK
    assert isinstance(task, ArrayTask)
    return task


def get_task(name: str) -> ArrayTask:
    """The built-in task ``name``; an unknown name is a :class:`TaskError` listing them."""
    task = builtin_task(name)
    if task is None:
        raise TaskError(f"unknown task '{name}' (built in: {', '.join(task_names())})")
    return task


def as_task(candidate: Any) -> Task:
    """``candidate`` (a module or object, e.g. imported from a code volume) as a Task.

    A task needs a non-empty string ``name`` and callables ``build_model``,
    ``load_data``, ``train`` and ``evaluate``; what lacks one is refused by name.
    """
    label = getattr(candidate, "__name__", type(candidate).__name__)
    name = getattr(candidate, "name", None)
    if not isinstance(name, str) or not name:
        raise TaskError(f"{label} is not a task: it has no string 'name'")
    missing = [attr for attr in _REQUIRED if not callable(getattr(candidate, attr, None))]
    if missing:
        raise TaskError(f"{label} is not a task: it lacks {', '.join(missing)}")
    return candidate
