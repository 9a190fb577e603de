"""The task contract: what the runtime calls on a task, and checks it makes of the answers.

A task is any object or module with a string ``name`` and four callables (see
:class:`Task`). The runtime relies on very little of what they return, and checks
exactly that, refusing in one line that names the function and says what to return:

- ``load_data(path)`` returns something with ``len()``: the sample count, which
  FedAvg weighs a collaborator's update by (:func:`sample_count`);
- ``train`` and ``evaluate`` return metrics: a mapping of short names to finite
  numbers (:func:`check_metrics`); ``train``'s include ``loss``, ``evaluate``'s the
  policy's objective metric.

Metrics that are not finite numbers are refused, never dropped: a NaN loss is a
diverged model, and a report that silently lacks a column hides it.

What the task's code raises is one line too (:func:`call_task`), worded for where it
runs. Under ``secfl run`` the log and the error line go to the host, who must not
read the task's code or data, and an exception's message often holds data ("row 17:
age 52") and a traceback the code's lines. So by default a failure names only the
function, the exception's type and the task's file and line, at every log level
(Python's warnings lose their text and source line likewise:
:func:`show_task_errors`). The message and the traceback are shown only where the
task's owner runs it: ``secfl simulate`` (in process: :func:`task_errors_shown`)
and ``--insecure``.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Mapping, Sized
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import nn

from secfl._internal.failures import (
    errors_shown,
    failure_text,
    hide_uncaught_errors,
    register_task_folder,
    show_task_errors,
    shown_file,
    task_errors_shown,
)
from secfl._internal.values import describe
from secfl.errors import SecflError, TaskError

__all__ = [
    "MAX_METRICS",
    "MAX_METRIC_NAME",
    "METRIC_NAME",
    "SplittableTask",
    "Task",
    "call_task",
    "check_metrics",
    "failure_text",
    "hide_uncaught_errors",
    "register_task_folder",
    "sample_count",
    "show_task_errors",
    "shown_file",
    "task_errors_shown",
]

log = logging.getLogger("secfl.tasks")

#: The most metrics one call may return, and the longest name (both reach logs,
#: metrics files and every peer's messages, so both are bounded).
MAX_METRICS = 64
MAX_METRIC_NAME = 64
#: What a metric's name may hold: it becomes a key of JSON, CSV columns and log lines.
METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@runtime_checkable
class Task(Protocol):
    """What every task provides; a plain module with these names is a task too.

    Who calls what, with which arguments:

    - The **aggregator** calls ``build_model(seed)`` with the policy's
      ``federation.seed`` to make the initial global model (round 0), and again to
      have a model to evaluate into. A **collaborator** calls ``build_model()`` with no
      seed and loads the global weights into it before every round. So the seed only
      decides the initial weights, and every call must build the same architecture:
      the same ``state_dict`` names, shapes and dtypes (updates of another shape are
      refused).
    - ``load_data(path)`` gets a :class:`~pathlib.Path`: under ``secfl run``, the
      folder of the data volume (it holds whatever the data owner shielded: CSV,
      Parquet, images, several shards...); with ``--insecure``, the file or folder
      given on the command line. Collaborators load their training data, the
      aggregator its validation and test data, each once at start.
    - ``train(model, data, config)`` trains ``model`` in place and returns its
      metrics, which must include ``loss`` (the aggregator reports their mean,
      weighted by the sample counts).
    - ``evaluate(model, data)`` is called by the aggregator after every round on the
      validation and the test data; it returns finite metrics, which must include
      the policy's objective metric (``federation.objective.metric``, ``loss`` unless
      set). Each metric ``m`` is recorded as ``val_m`` and ``test_m``.
    """

    name: str

    def build_model(self, seed: int | None = None) -> nn.Module:
        """A fresh model: the aggregator passes the federation's seed (initial weights),
        collaborators pass nothing (their weights are replaced by the global model's)."""
        ...

    def load_data(self, path: Path) -> Any:
        """This party's data from ``path`` (a volume's folder, or the file or folder
        given with ``--insecure``). The result is passed to ``train``/``evaluate`` as
        it is and must have ``len()``: its number of samples (at least 1), which
        weighs this collaborator's update in FedAvg."""
        ...

    def train(self, model: nn.Module, data: Any, config: Mapping[str, Any]) -> Mapping[str, Any]:
        """Train ``model`` in place on ``data``; return finite metrics including ``loss``.

        ``config`` is the policy's ``federation.train`` mapping plus ``seed`` (an
        integer the aggregator derives from ``federation.seed``, the round and the
        collaborator: train deterministically from it); strategies may add keys (FedProx
        adds ``proximal_mu``, and the collaborator then ``global_params``: the global
        model's arrays by name, the weights the proximal term pulls towards). Ignore
        keys you do not use; refuse values you cannot (a :class:`~secfl.errors.TaskError`
        is one line in the log)."""
        ...

    def evaluate(self, model: nn.Module, data: Any) -> Mapping[str, Any]:
        """Metrics of ``model`` on ``data``: at most 64, names of letters, digits and
        ``_ . -`` (up to 64 characters), values finite numbers; including the objective
        metric (``loss`` by default) and, by convention, ``n``, the sample count."""
        ...


@runtime_checkable
class SplittableTask(Task, Protocol):
    """A task that can also give its whole dataset as arrays (optional).

    With ``load_pool``, ``secfl data split --task PATH`` partitions the data into
    collaborator, validation and test shards (safetensors, read back by
    :func:`secfl.tasks.load_shard`, or by ``load_data`` of a built-in task).
    """

    def load_pool(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)``: features (uint8, float32 or float64; one row per sample) and
        targets: integer class labels ``0 .. C-1`` (a classification split), or
        floats (a regression split)."""
        ...


def sample_count(data: Any, what: str) -> int:
    """``len(data)``, the samples FedAvg weighs by; a TaskError if it has none."""
    if not isinstance(data, Sized):
        raise TaskError(
            f"{what}: returned a {type(data).__name__}, which has no len(); "
            "return a dataset whose len() is its number of samples"
        )
    try:
        count = len(data)
    except Exception as exc:  # a user's __len__ may raise anything
        raise TaskError(f"{what}: len() of the data failed: {failure_text(exc)}") from None
    if count < 1:
        raise TaskError(f"{what}: the data has no samples (len() is {count})")
    return int(count)


def check_metrics(result: Any, what: str, *, required: str | None = None) -> dict[str, float]:
    """``result`` of ``train``/``evaluate`` as finite floats under checked names.

    ``what`` names the call (``train``, ``evaluate``) in the error; ``required`` is a
    metric that must be present. Booleans, strings, tensors, NaN and infinities are
    refused, naming the metric.
    """
    if not isinstance(result, Mapping):
        raise TaskError(
            f"{what}: returned a {type(result).__name__}, not a mapping of metric names "
            "to numbers (return e.g. {'loss': 0.3, 'n': 120})"
        )
    if len(result) > MAX_METRICS:
        raise TaskError(f"{what}: returned {len(result)} metrics, at most {MAX_METRICS}")
    metrics: dict[str, float] = {}
    for name, value in result.items():
        if not isinstance(name, str) or not METRIC_NAME.fullmatch(name):
            shown = repr(name)[:40]
            raise TaskError(
                f"{what}: metric name {shown} is not 1 to {MAX_METRIC_NAME} letters, digits "
                "or _ . -"
            )
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise TaskError(
                f"{what}: metric '{name}' is a {type(value).__name__}, not a number "
                "(return float(...))"
            )
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise TaskError(f"{what}: metric '{name}' is not a finite number ({describe(value)})")
        metrics[name] = number
    if required is not None and required not in metrics:
        raise TaskError(
            f"{what}: returned no '{required}' (it returned: {', '.join(metrics) or 'nothing'})"
        )
    return metrics


def call_task(what: str, function: Any, *args: Any) -> Any:
    """``function(*args)`` of a task, its failures one line: a SecflError as it is
    (the task's own refusal: its message is meant for the log), anything else as a
    TaskError naming the call and the exception (:func:`failure_text`): a user's
    mistake is not a crash of the runtime. Where errors are shown
    (:func:`task_errors_shown`), the traceback goes to the debug log and the task's
    exception stays the error's ``__cause__``, for a caller that shows it (``secfl
    simulate --debug``); elsewhere neither."""
    try:
        return function(*args)
    except (SecflError, MemoryError):
        raise
    except Exception as exc:
        if errors_shown():
            log.debug("%s failed", what, exc_info=True)
            raise TaskError(f"{what}: the task raised {failure_text(exc)}") from exc
        raise TaskError(f"{what}: the task raised {failure_text(exc)}") from None
