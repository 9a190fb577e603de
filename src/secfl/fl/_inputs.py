"""Where a workload's task code and data come from: a volume, a built-in, a file.

A spec is ``volume:NAME`` (a volume ``secfl run`` opened and verified, found under
``$SECFL_VOLUMES/NAME``), the name of a built-in task, or a path. A task volume
holds one Python module (``task.py``, or its only ``.py`` file) defining the task
contract: ``name``, ``build_model``, ``load_data``, ``train``, ``evaluate``.

Only ``--insecure`` takes a path. A workload's measurement covers its command
line, not the files a path on it names (in simulation: the program, the code
volumes' tags and the argv), so the host could swap such a file for its own code
or data under an approved measurement. In secure mode a task is a volume (its tag
is measured or pinned by the policy) or a built-in (code inside the measured
install), and data is a volume (verified by the launcher against the policy):
:func:`require_measured` refuses anything else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from collections.abc import Set as AbstractSet
from pathlib import Path

from secfl.errors import FlError
from secfl.tasks._base import Task
from secfl.tasks._registry import as_task, builtin_task

__all__ = ["VOLUME_NAME", "data_path", "load_task", "require_measured", "volumes_dir"]

#: A volume's name, as policies write it (no path separators, no dot-dot).
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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


def _only(folder: Path, suffix: str, preferred: str | None = None) -> Path:
    if preferred and (folder / preferred).is_file():
        return folder / preferred
    found = sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file())
    if len(found) != 1:
        raise FlError(f"source: {folder.name} holds {len(found)} {suffix} files, expected one")
    return found[0]


def load_task(spec: str) -> Task:
    """The task named by ``spec`` (``volume:NAME``, a built-in name, or a .py path)."""
    if spec.startswith("volume:"):
        path = _only(_volume(spec.removeprefix("volume:")), ".py", "task.py")
    elif (builtin := builtin_task(spec)) is not None:
        return builtin
    else:
        path = Path(spec)
        if not path.is_file():
            raise FlError(f"source: '{spec}' is neither a built-in task nor a file")
    tag = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(f"secfl_task_{tag}", path)
    if module_spec is None or module_spec.loader is None:
        raise FlError(f"source: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise FlError(f"source: the task module {path.name} failed: {exc}") from None
    return as_task(module)


def data_path(spec: str | None, *, exclude: AbstractSet[str] = frozenset()) -> Path:
    """The shard file named by ``spec``; ``None``: the workload's only data volume
    (every volume but those in ``exclude``, e.g. the task volume)."""
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
        return _only(_volume(spec.removeprefix("volume:")), ".safetensors")
    path = Path(spec)
    if not path.is_file():
        raise FlError(f"source: no data file {spec}")
    return path
