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

import functools
import logging
import math
import numbers
import os
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import nn

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
        if _shown:
            log.debug("%s failed", what, exc_info=True)
            raise TaskError(f"{what}: the task raised {failure_text(exc)}") from exc
        raise TaskError(f"{what}: the task raised {failure_text(exc)}") from None


# --- how much of a task's failure is shown --------------------------------------------------

#: Whether failures show their message and traceback (see the module docstring).
_shown = False
#: The folders task code was loaded from: a failure names its file relative to one.
_task_folders: set[Path] = set()
_formatwarning = warnings.formatwarning


def show_task_errors(shown: bool) -> None:
    """Show the messages and tracebacks of the task's failures (``secfl simulate``,
    ``--insecure``), or only their type and place (a secure workload: the default).
    Python's warnings follow: hidden, they show their category and place only."""
    global _shown
    _shown = shown
    warnings.formatwarning = _formatwarning if shown else _bare_warning


def hide_uncaught_errors() -> None:
    """From now on an exception nothing caught (in a thread the task started, or
    outside the task's calls) is one line, its type and place, not a traceback: that
    names the task's files and shows their source lines, and its message may quote the
    data (found by a review: a host set a memory limit). A secure workload calls it at
    start, for good; ``secfl simulate`` and ``--insecure`` keep Python's tracebacks."""
    sys.excepthook = _bare_excepthook
    threading.excepthook = _bare_thread_excepthook


@contextmanager
def task_errors_shown() -> Iterator[None]:
    """Within the block, failures show their message and traceback (in process,
    on the task owner's machine: ``secfl simulate``)."""
    global _shown
    before, formatwarning = _shown, warnings.formatwarning
    show_task_errors(True)
    try:
        yield
    finally:
        _shown, warnings.formatwarning = before, formatwarning


def register_task_folder(folder: Path) -> None:
    """Task code is loaded from ``folder``: its failures are placed relative to it."""
    _task_folders.add(folder.resolve())


def failure_text(exc: BaseException) -> str:
    """A task's exception in one line: its type and message where failures are shown;
    otherwise its type and the task's file and line only, never its message, which
    may hold the data."""
    name = type(exc).__name__[:80]
    if _shown:
        return f"{name}: {' '.join(str(exc).split())[:240]}"
    return (
        f"{name} at {_place(exc)} (its message is not shown under `secfl run`, where the "
        "host reads the log: it may hold the data; `secfl simulate` on test data shows it)"
    )


def _place(exc: BaseException) -> str:
    """Where the task's code raised (:func:`shown_file`, line): the innermost frame in
    a task folder, else the innermost frame."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{shown_file(exc.filename)}, line {exc.lineno or 0}"
    frames = [(f.f_code.co_filename, line) for f, line in traceback.walk_tb(exc.__traceback__)]
    for filename, line in reversed(frames):
        if _in_task_folder(filename) is not None:
            return f"{shown_file(filename)}, line {line}"
    if frames:
        return f"{shown_file(frames[-1][0])}, line {frames[-1][1]}"
    return "an unknown place"


def _in_task_folder(filename: str) -> tuple[Path, Path] | None:
    path = Path(filename)
    for folder in _task_folders:
        if path.is_relative_to(folder):
            return folder, path.relative_to(folder)
    return None


def shown_file(filename: str) -> str:
    """How a hidden failure names ``filename``: a file of the task's by its place
    among the task folder's files (the order `secfl shield ls` lists a code volume's
    files in), since the names in a volume are as confidential as its content (found by
    a review: a failure the host provoked named the task's files); any other file (a
    library's) by its name. Where failures are shown, a task file by its path."""
    found = _in_task_folder(filename)
    if found is None:
        return Path(filename).name
    if _shown:  # (secfl simulate, --insecure: the task's owner's own machine)
        return found[1].as_posix()
    names = _task_files(found[0])
    inside = found[1].as_posix()
    if inside not in names:
        return "a task file"
    return f"task file #{names.index(inside) + 1} of {len(names)}"


@functools.lru_cache(maxsize=16)
def _task_files(folder: Path) -> list[str]:
    """The files below ``folder``, by path relative to it, sorted as a volume's manifest
    is (no link followed)."""
    found = []
    for top, _, names in os.walk(folder):
        for name in names:
            path = Path(top, name)
            if path.is_file() and not path.is_symlink():
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


def _bare_excepthook(
    kind: type[BaseException], exc: BaseException, tb: Any
) -> None:  # pragma: no cover - runs as the process ends
    """An uncaught exception as a hidden mode shows it: its type and place, one line."""
    if exc.__traceback__ is None:
        exc = exc.with_traceback(tb)
    sys.stderr.write(f"error: {failure_text(exc)}\n")


def _bare_thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """An exception that ended a thread, as a hidden mode shows it (one line)."""
    if args.exc_value is None or args.exc_type is SystemExit:
        return
    exc = args.exc_value
    if exc.__traceback__ is None:
        exc = exc.with_traceback(args.exc_traceback)
    where = args.thread.name if args.thread is not None else "a thread"
    sys.stderr.write(f"error: {where[:80]}: {failure_text(exc)}\n")


def _bare_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    line: str | None = None,
) -> str:  # fmt: skip
    """A warning as a hidden mode shows it: no text, no source line."""
    return f"{shown_file(filename)}, line {lineno}: {category.__name__} (its text is not shown)\n"
