"""A new task from the template: code, synthetic CSV data, a test, settings, a README.

The template (``templates/task``, shipped as package data) is a working multi-file
regression task in plain PyTorch: ``code/task.py`` (the contract) imports its own
package ``code/<package>/`` (the network, the CSV reader, the training loop), the
way a task's code volume may hold a package. Its files end in ``.tmpl`` (so no tool
takes them for this project's code) and hold two placeholders, ``{{name}}`` and
``{{package}}``. The data is made here, from a fixed seed: the same folder every
time, offline.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import keyword
import os
import stat
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from secfl._internal.files import atomic_write
from secfl._internal.names import TASK_NAME, TASK_NAME_RULE
from secfl.errors import UsageError

__all__ = ["NAME", "SITES", "NewTask", "new_task", "package_for", "synthetic_data"]

#: A task's name: what the policy and the logs call it (one rule for every task).
NAME = TASK_NAME
#: The synthetic data's folders under ``data/``: three sites, then the aggregator's.
SITES = ("site-1", "site-2", "site-3")
_PACKAGE_DIR = "__package__"
_SUFFIX = ".tmpl"
#: Names the task's package must not take: it would shadow them on ``sys.path``.
_TAKEN = {"task", "test_task", "torch", "numpy", "secfl", "pytest", "safetensors"}


@dataclass(frozen=True)
class NewTask:
    """What :func:`new_task` wrote."""

    folder: Path
    name: str
    package: str
    files: list[Path]


def package_for(name: str) -> str:
    """The Python package of task ``name``: its name as an identifier, never one that
    would shadow a module the task or its test imports, nor an installed one: a
    workload imports its task after secfl's own modules, and refuses a task package
    named like one of them (``secfl new task yaml`` wrote a task, package ``yaml``,
    that its own next step, ``secfl simulate``, refused)."""
    base = name.lower().replace("-", "_")
    taken = keyword.iskeyword(base) or base in _TAKEN or base in sys.stdlib_module_names
    if taken or _installed(base):
        base += "_task"
    return base


def _installed(module: str) -> bool:
    """Whether ``module`` is importable here (found, not imported): a module, a package,
    or a namespace package (``google``) with a folder outside the working folder (one
    in it, such as an empty folder made for the task, does not count)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return True  # a module of that name exists, if a broken one
    if spec is None:
        return False
    if spec.origin is not None:
        return True
    try:
        here = os.path.realpath(os.getcwd())
    except OSError:  # the working folder was removed: nothing of it is on sys.path
        here = ""
    return any(
        os.path.dirname(os.path.realpath(folder)) != here
        for folder in spec.submodule_search_locations or ()
    )


def new_task(folder: Path, *, name: str | None = None, force: bool = False) -> NewTask:
    """Write the template task into ``folder`` (new, or empty; ``force``: write over the
    template's files in a non-empty one, leaving other files alone)."""
    name = name if name is not None else Path(os.path.realpath(folder)).name
    if not NAME.fullmatch(name):
        raise UsageError(
            f"new task: {name[:80]!r} is not a task name ({TASK_NAME_RULE}); give one with --name"
        )
    is_dir: bool | None
    used: bool | None
    try:  # (`Path.exists` raised on a name too long or a folder not searchable: a traceback)
        is_dir = stat.S_ISDIR(os.stat(folder).st_mode)
        used = is_dir and any(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        is_dir = used = None  # a new folder (made below, or refused in one line there)
    except OSError as exc:
        raise UsageError(f"new task: cannot use {folder}: {exc.strerror or exc}") from None
    if is_dir is False:
        raise UsageError(f"new task: {folder} is a file; choose a new folder")
    if used and not force:
        raise UsageError(
            f"new task: {folder} is not empty; choose a new folder, or --force to write "
            "the template's files into it"
        )
    package = package_for(name)
    written: list[Path] = []
    try:
        root = resources.files("secfl.cli").joinpath("templates", "task")
        for source, relative in _template_files(root, ""):
            text = source.read_text(encoding="utf-8")
            text = text.replace("{{name}}", name).replace("{{package}}", package)
            target = folder / relative.replace(_PACKAGE_DIR, package)
            written.append(_write(folder, target, text.encode()))
        for relative, text in synthetic_data().items():
            written.append(_write(folder, folder / "data" / relative, text.encode()))
    except OSError as exc:
        raise UsageError(f"new task: cannot write {folder}: {exc.strerror or exc}") from None
    return NewTask(folder, name, package, written)


def _template_files(node: Traversable, prefix: str) -> list[tuple[Traversable, str]]:
    """Every template file under ``node`` with its path in the new task (sorted)."""
    found: list[tuple[Traversable, str]] = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        relative = f"{prefix}{child.name}"
        if child.is_dir():
            found.extend(_template_files(child, relative + "/"))
        elif child.name.endswith(_SUFFIX):
            target = relative.removesuffix(_SUFFIX)
            if target == "gitignore":
                target = ".gitignore"
            found.append((child, target))
    return found


def _write(folder: Path, path: Path, data: bytes) -> Path:
    """Write ``path`` below ``folder``, through no symbolic link below it (with --force
    a linked ``code/`` or ``data/`` sent the template's files wherever it led)."""
    folder.mkdir(parents=True, exist_ok=True)
    below = folder
    for part in path.relative_to(folder).parts[:-1]:
        below = below / part
        if below.is_symlink():
            raise UsageError(
                f"new task: {below} is a symbolic link; the template is written only into "
                "folders of its own (remove the link, or choose a new folder)"
            )
        below.mkdir(exist_ok=True)
    return atomic_write(path, data, fsync=False)


#: The synthetic data's truth: y = x·W + 0.5·x1·x2 + 0.3·sin(2·x3) + noise.
_WEIGHTS = (0.8, -0.5, 0.3, 0.0, 0.6, -0.2, 0.1, 0.4)
#: Rows per file, and how far each site's first two features are shifted (sites differ).
_LAYOUT: dict[str, tuple[tuple[int, ...], float]] = {
    "site-1": ((240, 160), -0.3),  # two files: a data volume may hold several
    "site-2": ((250,), 0.0),
    "site-3": ((150,), 0.4),
    "validation": ((200,), 0.0),
    "test": ((200,), 0.0),
}


def synthetic_data(seed: int = 0) -> dict[str, str]:
    """The template's CSV files (``site-1/part-1.csv``...) by path: the same text for
    the same seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = np.asarray(_WEIGHTS)
    files: dict[str, str] = {}
    for folder, (sizes, shift) in _LAYOUT.items():
        for part, rows in enumerate(sizes, start=1):
            x = rng.normal(0.0, 1.0, size=(rows, len(_WEIGHTS)))
            x[:, :2] += shift
            y = (
                x @ weights
                + 0.5 * x[:, 0] * x[:, 1]
                + 0.3 * np.sin(2 * x[:, 2])
                + rng.normal(0.0, 0.1, size=rows)
            )
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow([*(f"x{i + 1}" for i in range(len(_WEIGHTS))), "y"])
            for features, target in zip(x, y, strict=True):
                writer.writerow([f"{v:.5f}" for v in (*features, target)])
            files[f"{folder}/part-{part}.csv"] = text.getvalue()
    return files
