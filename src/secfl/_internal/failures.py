"""How a task's failure is shown: in full on its owner's machine, by type and place only
where the host reads the log (under ``secfl run``).

An exception's message often holds data ("row 17: age 52"), its traceback the task's
code, and the names of the task's files are as confidential as the code volume they
come from. So by default (a secure workload) a failure names only the exception's type
and its place, a task file by its number in the task's volume (:func:`shown_file`);
Python's warnings lose their text and source line likewise (:func:`show_task_errors`),
and an exception nothing caught, one Python could only report, and a fatal signal's
stack dump are one line or nothing (:func:`hide_uncaught_errors`). The message and
the traceback are shown only where the task's owner runs it: ``secfl simulate`` (in
process: :func:`task_errors_shown`) and ``--insecure``.

It imports neither torch nor numpy: the launcher (``secfl run --module``) and Flower's
app processes use it too.
"""

from __future__ import annotations

import faulthandler
import functools
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "errors_shown",
    "failure_text",
    "hide_uncaught_errors",
    "register_task_folder",
    "show_task_errors",
    "shown_file",
    "task_errors_shown",
]


def errors_shown() -> bool:
    """Whether failures show their message and traceback now."""
    return _shown


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
    sys.unraisablehook = _bare_unraisablehook  # "Exception ignored in": __del__, atexit...
    faulthandler.disable()  # a fatal signal's dump lists every thread's frames


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
    if filename.startswith("<secfl-volume ") and not _shown:  # code run from a volume
        return "a code volume's file"
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


def _bare_unraisablehook(args: Any) -> None:
    """An exception Python could only report (in a ``__del__``, a finaliser, an atexit
    callback), as a hidden mode shows it (one line)."""
    exc = args.exc_value
    if exc is None:
        return
    if exc.__traceback__ is None and args.exc_traceback is not None:
        exc = exc.with_traceback(args.exc_traceback)
    sys.stderr.write(f"error: ignored: {failure_text(exc)}\n")


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
