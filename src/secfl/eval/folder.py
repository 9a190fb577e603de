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
import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from secfl._internal.files import atomic_write, open_regular, open_regular_fd
from secfl.errors import FlError
from secfl.eval.grid import Evaluation, Grid
from secfl.eval.options import check_grid
from secfl.fl._untrusted import check_tree, read_json_file

__all__ = [
    "FINGERPRINT",
    "GRID_FIELDS",
    "MAX_FIGURE",
    "MAX_RECORD_BYTES",
    "MAX_SETTINGS_BYTES",
    "GridFolder",
    "append_record",
    "check_record",
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
#: A line of ``runs*.jsonl`` is one run's record (a few KB for tens of rounds); a
#: longer one is skipped as malformed, unread.
MAX_RECORD_BYTES = 1 << 20
#: The most ``--workers`` processes: one per core is what helps; 100,000 forked
#: ran the machine out of memory and process slots before the first run.
MAX_WORKERS = 256


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
    # ASCII digits only: "²".isdigit() is true, and int() of it a ValueError
    numbers = all(x.isascii() and x.isdigit() and len(x) <= 9 for x in (k, n))
    if not numbers or not 0 <= int(k) < int(n):
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
        if not settings.exists():  # (not is_file: a FIFO there is refused, not passed over)
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
            elif any(self.path.glob("runs*.jsonl")):  # runs of settings no one knows
                raise FlError(
                    f"{self.path} holds runs but no grid.json (the settings they were made "
                    "with), so they cannot be told comparable: use another folder"
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
    """A folder's ``grid.json`` as a JSON object, bounded (see :mod:`secfl.fl._untrusted`),
    from a regular file: a FIFO planted there is refused, not waited on for ever."""
    try:
        doc = read_json_file(path, "grid", MAX_SETTINGS_BYTES, regular=True)
        if not isinstance(doc, dict):
            raise FlError(f"grid: {path} holds a {type(doc).__name__}")
        check_tree(doc, f"grid: {path}", max_int=2**31)
    except FlError as exc:
        raise FlError(
            f"{exc}: not a grid's settings (a JSON object is expected); use another folder"
        ) from None
    return doc


def grid_from(doc: Any, path: Path) -> Grid:
    """The :class:`Grid` a ``grid.json`` records, each field of its type and in its
    range (:func:`~secfl.eval.options.check_grid`): a grid.json of a few bytes edited to
    lists of thousands of values is refused, not turned into millions of runs."""
    if not isinstance(doc, dict) or set(doc) - set(GRID_FIELDS):
        raise FlError(f"grid: {path}: its grid has unknown settings or is not an object")
    for name, check in GRID_FIELDS.items():
        if name in doc and not check(doc[name]):
            raise FlError(f"grid: {path}: the grid's '{name}' has the wrong type")
    try:
        grid = Grid(**doc)
    except TypeError:  # a field the grid needs is missing
        raise FlError(f"grid: {path}: its grid lacks a setting") from None
    try:
        check_grid(grid, where="the grid's '{}'")
    except FlError as exc:
        raise FlError(f"grid: {path} (edited?): {exc}; use another folder") from None
    return grid


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


#: How long workers told to stop (an interrupt of the parent) may take to end.
STOP_WAIT_S = 10.0


def fan_out(workers: int, argv: Sequence[str]) -> None:
    """Run ``secfl <argv> --resume --shard K/workers`` for every K side by side, and
    wait for all; a failed worker loses only its run under way (``--resume`` again).

    The workers ignore SIGINT: a Ctrl-C (or a ``kill -INT`` of this process alone) is
    this process's, which stops them (SIGTERM) and waits for them before it goes on
    as a ``KeyboardInterrupt``. Workers left running after their parent stopped went
    on appending runs unseen, and a ``--resume`` then ran the same runs beside them."""
    entry = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
             "from secfl.cli.main import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip
    base = [sys.executable, "-c", entry, *argv, "--resume"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for k in range(workers):
            procs.append(subprocess.Popen([*base, "--shard", f"{k}/{workers}"]))
        codes = [p.wait() for p in procs]
    except BaseException:
        _stop(procs)
        raise
    failed = [k for k, code in enumerate(codes) if code != 0]
    if failed:
        raise FlError(f"workers {failed} failed (see above); run again with --resume")


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """End the workers still running (what they finished is in the folder) and wait."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every record in ``folder/runs*.jsonl``. The folder may hold what anyone put
    there, so each file is read only if it is a regular file reached without a
    symbolic link (a FIFO planted as ``runs-x.jsonl`` is a refusal, not a hang), line
    by line, each line bounded (:data:`MAX_RECORD_BYTES`); a line that is not a run's
    record (:func:`check_record`: cut short by a killed run, not UTF-8, edited) is
    skipped with a warning."""
    records = []
    for path in sorted(folder.glob("runs*.jsonl")):
        try:
            with open_regular(path, follow=False) as fh:
                while line := fh.readline(MAX_RECORD_BYTES + 1):
                    record = _record(line) if len(line) <= MAX_RECORD_BYTES else None
                    while line[-1:] != b"\n" and (line := fh.readline(MAX_RECORD_BYTES)):
                        record = None  # too long: the rest of it is read, not kept
                    if record is None:
                        log.warning("%s: skipping a malformed line (a run cut short?)", path.name)
                        continue
                    records.append(record)
        except OSError as exc:
            raise FlError(
                f"{path}: cannot read it as a file of runs ({_why(exc)}): "
                "remove it, or use another folder"
            ) from None
    return records


def _why(exc: OSError) -> str:
    """Why a runs file cannot be opened, in words: a link is named as such."""
    return "a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))


def _record(line: bytes) -> dict[str, Any] | None:
    """The run record on one line of a runs file, or None if it holds none."""
    try:  # UnicodeDecodeError is a ValueError; a 400-digit number overflows a float
        record = json.loads(line.decode("utf-8"))
        return record if check_record(record) else None
    except (ValueError, RecursionError, OverflowError):
        return None


#: A record's fields (:meth:`secfl.eval.grid.Run.record`) and the check of each: the
#: report computes with them, so a "0" for 0 or a list for a number is refused when
#: read, not met as a traceback while reporting (nor silently coerced: a seed of 0.5
#: or true is not seed 0 or 1).
_NAMES = ("task", "partition", "attack", "defence")
#: The figures that are fractions (an accuracy, a rate), in [0, 1]; the others
#: (seconds, ratios, a round) are in [0, MAX_FIGURE]. Outside (NaN, an infinity, a
#: 400-digit integer) a figure is not a run's: it would be shown as "nan", ranked
#: anywhere, or stop the report with an OverflowError when averaged.
_RATES = ("backdoor_success", "tpr", "fpr_mean")
_METRICS = (*_RATES, "aggregate_s", "audit_ratio", "audit_round_ratio", "diverged_round",
            "seconds")  # fmt: skip
MAX_FIGURE = 1e15


def _number(v: Any) -> TypeGuard[int | float]:
    """A JSON number: not true or false (a bool is an int to Python), not "0"."""
    return type(v) in (int, float)


def _figure(v: Any, top: float) -> bool:
    """A JSON number in [0, ``top``] (NaN compares false: refused too)."""
    return _number(v) and 0 <= v <= top


def check_record(record: Any) -> TypeGuard[dict[str, Any]]:
    """Whether ``record`` is a run's record as :meth:`~secfl.eval.grid.Run.record`
    writes it, each field of its exact type: text names, a fraction in [0, 1] for the
    malicious fraction, an integer seed, a fraction in [0, 1] for the accuracy, a
    number in its range (:data:`MAX_FIGURE`) or nothing ("" or null) for each other
    figure, a list of objects for the rounds."""
    if not isinstance(record, dict):
        return False
    if any(not isinstance(record.get(k), str) for k in _NAMES):
        return False
    if not isinstance(record.get("error", ""), str):
        return False
    malicious, seed = record.get("malicious"), record.get("seed")
    if not (_figure(malicious, 1) and type(seed) is int):
        return False
    if "accuracy" in record and not _figure(record["accuracy"], 1):
        return False
    for k in _METRICS:
        top = 1 if k in _RATES else MAX_FIGURE
        if k in record and not (_figure(record[k], top) or record[k] in ("", None)):
            return False
    rounds = record.get("rounds", [])
    return isinstance(rounds, list) and all(isinstance(r, dict) for r in rounds)


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    """One line, one ``write``: shards that share a file never interleave lines; a line
    left unfinished by a killed run is ended first, so it costs only itself."""
    data = (json.dumps(record, default=str) + "\n").encode()
    # a regular file, not through a symbolic link: a link planted at the path is not
    # written through, a FIFO is refused at once rather than blocking the worker
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = open_regular_fd(path, flags, 0o644)
    except OSError as exc:
        raise FlError(
            f"{path}: cannot add a run to it ({_why(exc)}): remove it, then run again with --resume"
        ) from None
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        written = os.write(fd, data)
    except OSError as exc:  # a full disk, a file size limit: one line, not a traceback
        raise FlError(
            f"{path}: cannot add a run to it ({_why(exc)}): free some space, then run "
            "again with --resume"
        ) from None
    finally:
        os.close(fd)
    if written != len(data):  # a short write: the line is cut (and skipped when read)
        raise FlError(
            f"{path}: only part of a run could be added to it (the disk is full?): free "
            "some space, then run again with --resume"
        )
