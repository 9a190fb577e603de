"""A grid's report folder: its settings, its finished runs, and the workers adding to it.

A grid of thousands of runs takes hours to days on a small machine, so it must
survive being stopped, split across processes and continued. Each finished run is
one line of ``runs-KofN.jsonl`` (K/N the worker's shard; ``runs-ray.jsonl`` for a
grid run on Ray, :mod:`secfl.eval.ray_engine`), written with one ``write`` the
moment it ends; ``grid.json`` records what makes runs comparable
(clients, rounds, epochs, samples, clones, and a digest of each task's model and
training settings), and a folder holding runs made otherwise is refused rather
than silently mixed. It also keeps the whole grid and the command that made it, so
a folder can be reported on from its path alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from secfl._internal.files import atomic_write
from secfl.errors import FlError
from secfl.eval.grid import Evaluation, Grid, key
from secfl.fl._untrusted import check_tree, read_json_file

__all__ = [
    "FINGERPRINT",
    "GRID_FIELDS",
    "MAX_SETTINGS_BYTES",
    "GridFolder",
    "append_record",
    "fan_out",
    "grid_from",
    "load_records",
    "model_digest",
    "parse_shard",
    "read_settings",
]

log = logging.getLogger("secfl.eval.grid")

#: The grid settings that must agree for runs to be compared in one report.
FINGERPRINT = ("clients", "rounds", "epochs", "samples", "clones")
#: A grid.json records settings and a command: small.
MAX_SETTINGS_BYTES = 1 << 20


def model_digest(task_name: str) -> str:
    """What a task trains (its network and default training settings), in 16 hex
    digits: runs of a changed model are not comparable with the old ones."""
    from secfl.tasks._registry import get_task

    task = get_task(task_name)
    text = repr(task.build_model(0)) + json.dumps(dict(task.default_config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``; ``None`` is the whole grid, ``(0, 1)``."""
    if text is None:
        return (0, 1)
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit()) or not 0 <= int(k) < int(n):
        raise FlError(f"--shard: '{text}' is not K/N with 0 <= K < N")
    return (int(k), int(n))


class GridFolder:
    """The folder of one grid's runs (see the module docstring)."""

    def __init__(self, path: Path, grid: Grid, command: str = "") -> None:
        self.path = path
        self.grid = grid
        self.command = command
        self.settings = path / "grid.json"

    @staticmethod
    def stored(path: Path) -> tuple[Grid, str] | None:
        """The grid and command recorded in ``path/grid.json``, if it records them
        (folders written before it did hold only the fingerprint); a grid.json that
        is not a grid's settings is refused."""
        settings = path / "grid.json"
        if not settings.is_file():
            return None
        found = read_settings(settings)
        if "grid" not in found or "command" not in found:
            return None
        return grid_from(found["grid"], settings), str(found["command"])

    def fingerprint(self) -> dict[str, Any]:
        return {
            **{k: getattr(self.grid, k) for k in FINGERPRINT},
            "models": {t: model_digest(t) for t in self.grid.tasks},
        }

    def claim(self, *, resume: bool = False, report_only: bool = False) -> None:
        """Check that this grid's runs may go (or be read) here; record its settings.

        Without ``resume`` a folder that already holds runs is refused: a new grid
        does not quietly absorb an old one's results."""
        if report_only and not self.settings.exists():
            raise FlError(f"{self.path}: no grid.json, so no runs of a grid to report")
        if resume or report_only:
            if self.settings.exists():
                mine = self.fingerprint()
                stored = read_settings(self.settings)
                found = {k: stored.get(k) for k in mine}
                if found != mine:  # a task's model changed, or a setting
                    raise FlError(
                        f"{self.path}: its runs were made with other settings "
                        f"({json.dumps(found)}, not {json.dumps(mine)}); "
                        "use another folder"
                    )
        elif any(self.path.glob("runs*.jsonl")):
            raise FlError(f"{self.path} already holds runs: add --resume to keep them, or empty it")
        if report_only:
            return
        record = {**self.fingerprint(), "grid": dataclasses.asdict(self.grid),
                  "command": self.command}  # fmt: skip
        try:  # atomically: other workers read it meanwhile
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write(self.settings, (json.dumps(record) + "\n").encode(), fsync=False)
        except OSError as exc:
            raise FlError(f"{self.path}: cannot write grid.json: {exc.strerror or exc}") from None

    def evaluation(self, seconds: float = 0.0) -> Evaluation:
        """The grid with every run this folder holds."""
        return Evaluation(self.grid, load_records(self.path), seconds=seconds)

    def sink(self, shard: tuple[int, int]) -> Callable[[Mapping[str, Any]], None]:
        """Where a worker of ``shard`` appends each finished run."""
        path = self.path / f"runs-{shard[0]}of{shard[1]}.jsonl"
        return lambda record: append_record(path, record)


def read_settings(path: Path) -> dict[str, Any]:
    """A folder's ``grid.json`` as a JSON object, bounded (see :mod:`secfl.fl._untrusted`)."""
    try:
        doc = read_json_file(path, "grid", MAX_SETTINGS_BYTES)
        if not isinstance(doc, dict):
            raise FlError(f"grid: {path} holds a {type(doc).__name__}")
        check_tree(doc, f"grid: {path}", max_int=2**31)
    except FlError as exc:
        raise FlError(
            f"{exc}: not a grid's settings (a JSON object is expected); use another folder"
        ) from None
    return doc


def grid_from(doc: Any, path: Path) -> Grid:
    """The :class:`Grid` a ``grid.json`` records, each field of its type."""
    if not isinstance(doc, dict) or set(doc) - set(GRID_FIELDS):
        raise FlError(f"grid: {path}: its grid has unknown settings or is not an object")
    for name, check in GRID_FIELDS.items():
        if name in doc and not check(doc[name]):
            raise FlError(f"grid: {path}: the grid's '{name}' has the wrong type")
    try:
        return Grid(**doc)
    except TypeError:  # a field the grid needs is missing
        raise FlError(f"grid: {path}: its grid lacks a setting") from None


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(type(x) is int for x in v)


def _strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _numbers(v: Any, none: bool = False) -> bool:
    return isinstance(v, list) and all(
        (x is None and none) or (isinstance(x, int | float) and not isinstance(x, bool)) for x in v
    )


def _count(v: Any) -> bool:
    return type(v) is int and v >= 0


#: A grid.json's grid fields and the check of each.
GRID_FIELDS: dict[str, Callable[[Any], bool]] = {
    "tasks": _strs, "clients": _count, "partitions": lambda v: _numbers(v, none=True),
    "malicious": _numbers, "attacks": _strs, "defences": _strs, "seeds": _ints,
    "rounds": _count, "epochs": _count, "samples": lambda v: v is None or _count(v),
    "clones": _count,
}  # fmt: skip


def fan_out(workers: int, argv: Sequence[str]) -> None:
    """Run ``secfl <argv> --resume --shard K/workers`` for every K side by side, and
    wait for all; a failed worker loses only its run under way (``--resume`` again)."""
    entry = "import sys; from secfl.cli.main import main; sys.exit(main(sys.argv[1:]))"
    base = [sys.executable, "-c", entry, *argv, "--resume"]
    procs = [subprocess.Popen([*base, "--shard", f"{k}/{workers}"]) for k in range(workers)]
    failed = [k for k, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise FlError(f"workers {failed} failed (see above); run again with --resume")


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every record in ``folder/runs*.jsonl``; a line cut short by a killed run is skipped."""
    records = []
    for path in sorted(folder.glob("runs*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                key(record)
            except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
                log.warning("%s: skipping a malformed line (a run cut short?)", path.name)
                continue
            records.append(record)
    return records


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    """One line, one ``write``: shards that share a file never interleave lines; a line
    left unfinished by a killed run is ended first, so it costs only itself."""
    data = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
    finally:
        os.close(fd)
