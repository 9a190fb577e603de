"""Where a workload's task code and data come from: a volume, a built-in, a path.

A spec is ``volume:NAME`` (a volume ``secfl run`` opened and verified, found under
``$SECFL_VOLUMES/NAME``), the name of a built-in task, or a path. A task volume
holds the task module, ``task.py`` (or its only ``.py`` file), defining the task
contract (:class:`secfl.tasks.Task`), and whatever else it imports: modules and
packages next to it (``mymodels/__init__.py``...) are importable from it, and take
precedence over any installed module of the same name. So does a folder of code
without ``__init__.py`` (a namespace package): ``import mymodels`` gets the
volume's ``mymodels/``, and only it, never an installed package of that name.
Each of those modules runs from its source (:class:`SourceLoader`), never from
bytecode or a compiled file beside it. A data volume holds any files; the task's
``load_data`` gets the volume's folder.

Only ``--insecure`` takes a path. A workload's measurement covers its command
line, not the files a path on it names (in simulation: the program, the code
volumes' tags and the argv), so the host could swap such a file for its own code
or data under an approved measurement. In secure mode a task is a volume (its tag
is measured or pinned by the policy) or a built-in (code inside the measured
install), and data is a volume (verified by the launcher against the policy):
:func:`require_measured` refuses anything else.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from types import CodeType, ModuleType

from secfl.errors import FlError
from secfl.tasks._contract import Task, failure_text, register_task_folder, shown_file
from secfl.tasks._registry import as_task, builtin_task, task_names

__all__ = [
    "MAX_SOURCES",
    "TASK_FILE",
    "VOLUME_NAME",
    "FolderImporter",
    "SourceLoader",
    "data_path",
    "load_task",
    "require_measured",
    "volumes_dir",
]

#: A volume's name, as policies write it (no path separators, no dot-dot).
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: The task module of a task folder or volume.
TASK_FILE = "task.py"


def require_measured(option: str, spec: str | None, *, code: bool) -> None:
    """Secure mode: refuse ``spec`` unless its content is covered by attestation —
    ``volume:NAME``, a built-in task (``code``), or nothing (data: the only volume)."""
    if spec is None or spec.startswith("volume:"):
        return
    if code and builtin_task(spec) is not None:
        return
    shown = repr(spec if len(spec) <= 120 else spec[:120] + "...")
    what = "neither a volume nor a built-in task" if code else "not a volume"
    raise FlError(
        f"source: {option} {shown} is {what}: attestation does not cover a file's "
        "content, only its path; shield it into a volume (`secfl shield encrypt`, then "
        f"{option} volume:NAME) or use --insecure"
    )


def volumes_dir() -> Path | None:
    env = os.environ.get("SECFL_VOLUMES")
    return Path(env) if env else None


def code_volumes() -> set[str]:
    """The names of this workload's code volumes (``secfl run`` says which)."""
    return {n for n in os.environ.get("SECFL_CODE_VOLUMES", "").split(",") if n}


def _volume(name: str) -> Path:
    if not VOLUME_NAME.fullmatch(name):
        raise FlError(f"source: {name[:80]!r} is not a volume name (letters, digits, . _ -)")
    base = volumes_dir()
    if base is None:
        raise FlError(f"source: 'volume:{name}' needs a workload started by `secfl run`")
    folder = base / name
    if not folder.is_dir():
        raise FlError(f"source: this workload was given no volume '{name}'")
    return folder


def _task_file(folder: Path, label: str) -> Path:
    """``task.py`` in ``folder``, else its only top-level ``.py`` file."""
    if (folder / TASK_FILE).is_file():
        return folder / TASK_FILE
    found = sorted(p for p in folder.glob("*.py") if p.is_file())
    if len(found) != 1:
        raise FlError(
            f"source: {label} holds {len(found)} .py files at its top and no {TASK_FILE}; "
            f"name the task module {TASK_FILE}"
        )
    return found[0]


class SourceLoader(importlib.machinery.SourceFileLoader):
    """Runs a task's module from its source, never from bytecode beside it: Python's
    file loader runs ``__pycache__/NAME.cpython-3XX.pyc`` instead of ``NAME.py`` when
    the ``.pyc`` says so (compiled "unchecked-hash", it is never compared with the
    source), so a code volume could hold a ``task.py`` its reviewers read and, in a
    cache folder no one reads, the code that ran (found by a hostile review). A
    volume's own ``__pycache__`` (the model owner's test run leaves one in ``code/``)
    is then ignored too."""

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


def _source_spec(fullname: str, where: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of module ``fullname`` from its source in folder ``where``: the package
    ``LEAF/__init__.py``, else ``LEAF.py`` (as Python's finder prefers them); ``None``
    if there is neither. A compiled file of the same name beside it (``LEAF.so``,
    ``LEAF.pyc``), which Python's finder runs before the source, is passed over."""
    leaf = fullname.rpartition(".")[2]
    package, module = Path(where, leaf, "__init__.py"), Path(where, f"{leaf}.py")
    if package.is_file():
        locations: list[str] | None = [str(package.parent)]
        source = package
    elif module.is_file():
        locations, source = None, module
    else:
        return None
    return importlib.util.spec_from_file_location(
        fullname,
        source,
        loader=SourceLoader(fullname, str(source)),
        submodule_search_locations=locations,
    )


class FolderImporter(importlib.abc.MetaPathFinder):
    """Imports the top-level modules and packages of one task folder, before anything
    else on ``sys.path``: ``import mymodels`` in the task gets the folder's ``mymodels``,
    never an installed one of that name (and ``mymodels.x`` only from that folder);
    every module of the folder from its source (:class:`SourceLoader`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.names = _top_level_names(folder)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if "." in fullname:  # a submodule of one of the folder's packages: from its source
            inside = [p for p in path or () if self._holds(p)]
            if not inside or len(inside) != len(path or ()):
                return None
            for where in inside:
                if (spec := _source_spec(fullname, where)) is not None:
                    return spec
            return None  # not a source file: a subfolder, or a compiled module (Python's)
        if fullname in self.names:
            return _source_spec(fullname, str(self.folder))
        code = _namespace(self.folder, fullname)
        if code is None:
            return None
        # a namespace package of this folder alone: Python's own would also take in
        # (or, for an installed regular package of the name, give way to) sys.path
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(code)]
        return spec

    def _holds(self, where: str) -> bool:
        return Path(os.path.realpath(where)).is_relative_to(self.folder)


def _top_level_names(folder: Path) -> set[str]:
    """What ``import NAME`` finds in ``folder``: ``NAME.py`` and packages ``NAME/``
    (folders with an ``__init__.py``)."""
    names = {p.stem for p in folder.glob("*.py") if p.stem.isidentifier()}
    names |= {p.parent.name for p in folder.glob("*/__init__.py") if p.parent.name.isidentifier()}
    return names


def _namespace(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it is a folder of Python code without ``__init__.py``."""
    code = folder / name
    if not name.isidentifier() or not code.is_dir() or (code / "__init__.py").exists():
        return None
    return code if next(code.rglob("*.py"), None) is not None else None


#: The most source files whose imports are read (a task is a handful; a folder of
#: thousands is not a task, and reading it all would only delay the start).
MAX_SOURCES = 2000


def _sources(folder: Path, task_file: Path, names: set[str]) -> list[Path]:
    """The task's own code: ``task_file`` and the folder's modules and packages it could
    import (not the rest of the folder: a loose task.py may sit in a big one)."""
    found = [task_file]
    for name in sorted(names):
        module = folder / f"{name}.py"
        found += [module] if module.is_file() else sorted((folder / name).rglob("*.py"))
    return found


def _imported_names(sources: list[Path]) -> set[str]:
    """The top-level names the import statements of ``sources`` name (an unparsable
    file adds none: executing it reports the syntax error)."""
    names: set[str] = set()
    if len(sources) > MAX_SOURCES:
        raise FlError(
            f"source: the task's folder holds more than {MAX_SOURCES} .py files it could "
            "import; give the task a folder of its own"
        )
    for source in sources:
        try:
            tree = ast.parse(source.read_bytes(), str(source))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def _install(folder: Path, task_file: Path) -> None:
    """Make the modules beside ``task_file`` importable first. One the task's code
    imports that an earlier import already bound to a module from elsewhere is
    refused: the task would silently get that one instead of its own."""
    importer = FolderImporter(folder)
    importer.names.discard(task_file.stem)
    imported = _imported_names(_sources(folder, task_file, importer.names))
    spaces = {name for name in imported if _namespace(folder, name) is not None}
    if spaces:  # the code of namespace folders it imports: what that imports counts too
        imported = _imported_names(_sources(folder, task_file, importer.names | spaces))
    for name in sorted((importer.names | spaces) & imported):
        module = sys.modules.get(name)
        if module is None:
            continue
        origin = getattr(module, "__file__", None) or ""
        if not origin or not Path(os.path.realpath(origin)).is_relative_to(folder):
            raise FlError(
                f"source: the task's module '{name}' has the name of a module already "
                f"imported from elsewhere ({origin or 'built in'}); rename it in the task"
            )
    if not any(isinstance(f, FolderImporter) and f.folder == folder for f in sys.meta_path):
        sys.meta_path.insert(0, importer)


def load_task(spec: str) -> Task:
    """The task named by ``spec``: ``volume:NAME``, a built-in name, a ``.py`` file, or
    a folder holding ``task.py`` (the last two with ``--insecure``)."""
    if spec.startswith("volume:"):
        folder = _volume(spec.removeprefix("volume:"))
        if folder.name not in code_volumes():
            raise FlError(
                f"source: volume '{folder.name}' is not a code volume of this service: a task "
                "runs only from one the policy declares `kind: code` (with its tag, which the "
                "measurement covers); a data volume's content is its key holder's to change"
            )
        path = _task_file(folder, f"volume '{folder.name}'")
    elif (builtin := builtin_task(spec)) is not None:
        return builtin
    elif Path(spec).is_dir():
        folder = Path(spec)
        path = _task_file(folder, f"folder '{spec}'")
    else:
        path = Path(spec)
        if not path.is_file():
            raise FlError(
                f"source: '{spec[:80]}' is neither a built-in task ({', '.join(task_names())}) "
                "nor a task's .py file or folder, nor volume:NAME"
            )
        folder = path.parent
    folder = Path(os.path.realpath(folder))  # (Path.resolve raises on a link loop)
    path = Path(os.path.realpath(path))
    # task code may come decrypted from a volume: its bytecode goes nowhere (a host's
    # PYTHONPYCACHEPREFIX would put it on disk), whatever the environment says
    sys.dont_write_bytecode = True
    _install(folder, path)
    register_task_folder(folder)
    tag = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"secfl_task_{tag}"
    module_spec = importlib.util.spec_from_file_location(
        name, path, loader=SourceLoader(name, str(path))
    )
    if module_spec is None or module_spec.loader is None:
        raise FlError(f"source: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise FlError(
            f"source: the task module ({shown_file(str(path))}) failed: {failure_text(exc)}"
        ) from None
    return as_task(module)


def data_path(spec: str | None, *, exclude: AbstractSet[str] = frozenset()) -> Path:
    """What the task's ``load_data`` gets: a data volume's folder (``volume:NAME``;
    ``None``: the workload's only data volume, every volume but those in ``exclude``,
    e.g. the task volume), or with ``--insecure`` the file or folder given."""
    if spec is None:
        base = volumes_dir()
        names = sorted(p.name for p in base.iterdir() if p.is_dir()) if base else []
        names = [n for n in names if n not in exclude]
        if len(names) != 1:
            raise FlError(
                f"source: give --data (this workload has {len(names)} data volumes: "
                f"{', '.join(names) or 'none'})"
            )
        spec = f"volume:{names[0]}"
    if spec.startswith("volume:"):
        return _volume(spec.removeprefix("volume:"))
    path = Path(spec)
    if not path.exists():
        raise FlError(f"source: no data file {spec} (nor a folder of that name)")
    return path
