"""How a robustness grid is asked for: a preset changed by ``secfl eval robustness``'s
options (:class:`GridOptions`, :func:`assemble_grid`), every setting checked
(:func:`check_grid`, :func:`check_names`) before a run starts, whether the grid comes
from a command line or from a folder's ``grid.json`` (which anyone may have edited).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from secfl.errors import FlError
from secfl.eval.grid import FULL, QUICK, Grid, defence_names, partition_name
from secfl.fl.strategies._clone_audit import MAX_CLONES
from secfl.tasks._split import MAX_CLIENTS

__all__ = [
    "MAX_CELLS",
    "MAX_COUNTS",
    "MAX_LIST",
    "MAX_MALICIOUS",
    "GridOptions",
    "assemble_grid",
    "check_grid",
    "check_names",
]


@dataclass(frozen=True)
class GridOptions:
    """Changes to a grid as ``secfl eval robustness`` takes them: comma-separated text
    for the lists, a count of seeds; None keeps the grid's own setting."""

    tasks: str | None = None
    clients: int | None = None
    #: ``iid`` and/or Dirichlet alphas.
    partitions: str | None = None
    malicious: str | None = None
    attacks: str | None = None
    defences: str | None = None
    seeds: int | None = None
    rounds: int | None = None
    epochs: int | None = None
    samples: int | None = None

    def given(self) -> dict[str, Any]:
        """The options given, by their command-line names (``--tasks``...), in order."""
        return {
            f"--{f.name}": getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def apply(self, grid: Grid) -> Grid:
        """``grid`` with these changes; :class:`FlError` names an option that is not
        a list of what it should hold."""
        changes: dict[str, Any] = {
            "tasks": _names(self.tasks),
            "clients": self.clients,
            "partitions": _partitions(self.partitions),
            "malicious": _floats(self.malicious, "--malicious"),
            "attacks": _names(self.attacks),
            "defences": _names(self.defences),
            "seeds": None if self.seeds is None else list(range(_seeds(self.seeds))),
            "rounds": self.rounds,
            "epochs": self.epochs,
            "samples": self.samples,
        }
        return dataclasses.replace(grid, **{k: v for k, v in changes.items() if v is not None})


def _seeds(count: int) -> int:
    """``--seeds``: checked before its list is made (a count of a billion is a refusal,
    not a billion-entry list)."""
    if not 1 <= count <= MAX_LIST:
        raise FlError(f"--seeds: {count} seeds per cell; give 1 to {MAX_LIST}")
    return count


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise FlError(f"{option}: '{text}' is not a comma-separated list of numbers") from None


def _partitions(text: str | None) -> list[float | None] | None:
    """``iid`` (None) and Dirichlet alphas."""
    if text is None:
        return None
    try:
        return [None if p.strip() == "iid" else float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise FlError(
            f"--partitions: '{text}' is not a comma-separated list of iid and numbers"
        ) from None


def assemble_grid(
    options: GridOptions,
    *,
    quick: bool = False,
    out: str,
    stored: tuple[Grid, str] | None = None,
) -> tuple[Grid, list[str], str]:
    """The grid a command line asks for, its options and the command that records it.

    The grid is the preset (:data:`QUICK` or :data:`FULL`), or ``stored`` (the grid
    and command a folder was made with, for a report on it), with ``options``
    applied. The options (``--quick``, those given, ``-o out``) are what workers
    are started with; the command is ``secfl eval robustness`` with them, or the
    stored command when nothing changes the stored grid."""
    grid = stored[0] if stored else QUICK if quick else FULL
    grid = options.apply(grid)
    check_grid(grid)
    check_names(grid)
    given = options.given()
    argv = (["--quick"] if quick else []) + [
        a for name, value in given.items() for a in (name, str(value))
    ] + ["-o", out]  # fmt: skip
    command = "secfl eval robustness " + shlex.join(argv)
    if stored and not given:
        command = stored[1]
    return grid, argv, command


#: At most this many entries in each list of a grid, and this many runs in a grid:
#: the full preset has about 11,000 runs (days on a small machine); a grid.json of a
#: few bytes or a typo on the command line must not make millions of them.
MAX_LIST = 1000
MAX_CELLS = 100_000
#: The malicious fractions a grid may hold: [0, 0.5). At half the collaborators or
#: more, the attackers are the majority, which no robust rule claims to withstand
#: (the presets and the published grids go up to 0.4).
MAX_MALICIOUS = 0.5
#: The largest of each count a grid may set: what its runs take (the data split's
#: collaborators, a federation's rounds, the clone audit's clones). Beyond them a run
#: fails hours into the grid, or never ends, and beyond 2**31 the folder's grid.json
#: could not even be read back to resume or report on it.
MAX_COUNTS = {"clients": MAX_CLIENTS, "rounds": 100_000, "epochs": 10_000,
              "samples": 10**9, "clones": MAX_CLONES}  # fmt: skip


def check_grid(grid: Grid, where: str = "--{}") -> None:
    """Every setting of ``grid`` in its range, each list and the whole grid bounded
    (:data:`MAX_LIST`, :data:`MAX_CELLS`): a setting no run can take (0 rounds, 1
    collaborator, a malicious majority) fails at once in one line, not as a traceback
    hours into a grid. ``where`` names a setting: ``--{}`` for the command line's
    options, another pattern for a folder's grid.json."""

    def refuse(name: str, problem: str) -> FlError:
        return FlError(f"{where.format(name)}: {problem}")

    for name in ("tasks", "partitions", "malicious", "attacks", "defences", "seeds"):
        size = len(getattr(grid, name))
        if size > MAX_LIST:
            raise refuse(name, f"{size} entries; give at most {MAX_LIST}")
    for name in ("partitions", "malicious", "seeds"):
        if not getattr(grid, name):
            raise refuse(name, "no value given; give at least one")
    if grid.clients < 2:
        raise refuse("clients", f"{grid.clients}, but a federation needs 2 or more; give 2 or more")
    for name in ("rounds", "epochs"):
        if getattr(grid, name) < 1:
            raise refuse(name, f"{getattr(grid, name)} {name}; give 1 or more")
    if grid.samples is not None and grid.samples < 1:
        raise refuse("samples", f"{grid.samples}; give 1 or more (or leave it out: all)")
    for frac in grid.malicious:
        if not (math.isfinite(frac) and 0 <= frac < MAX_MALICIOUS):
            raise refuse(
                "malicious", f"{frac} is not a fraction in [0, {MAX_MALICIOUS}); give e.g. 0,0.2"
            )
    for alpha in grid.partitions:
        if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
            raise refuse(
                "partitions",
                f"{alpha} is not a Dirichlet alpha (a finite number > 0); give iid or e.g. 0.5",
            )
    if grid.clones < 2:
        raise refuse("clones", f"{grid.clones} clones; give 2 or more")
    for name, top in MAX_COUNTS.items():
        if (value := getattr(grid, name)) is not None and value > top:
            shown = value if value < 10**15 else "more than 10**15"
            raise refuse(name, f"{shown} {name}; give at most {top}")
    if any(seed < 0 for seed in grid.seeds):
        raise refuse("seeds", "a negative seed; give seeds of 0 or more")
    if (cells := grid.cells()) > MAX_CELLS:
        raise FlError(
            f"the grid has {cells} runs, more than {MAX_CELLS}: give fewer "
            "tasks, partitions, malicious fractions, attacks, defences or seeds"
        )
    for frac in grid.malicious:  # the attackers a run has: round(frac * clients)
        m = round(frac * grid.clients)
        if frac > 0 and m == 0:
            raise refuse(
                "malicious", f"{frac} of {grid.clients} collaborators is no attacker (runs "
                f"named after an attack would run without one); give {1 / grid.clients:.3g} "
                "or more, or more collaborators",
            )  # fmt: skip
        if 2 * m >= grid.clients:
            raise refuse(
                "malicious", f"{frac} of {grid.clients} collaborators is {m} attackers, half "
                "or more; give a smaller fraction, or more collaborators",
            )  # fmt: skip
    _check_distinct(grid, refuse)


def _check_distinct(grid: Grid, refuse: Callable[[str, str], FlError]) -> None:
    """No two entries of a list that name the same runs (as a run's record names them:
    0.2 and 0.20, a Dirichlet alpha of 0.5 and 0.5000001): their runs would share one
    record, so a resume took the second for done and the report never counted the
    grid whole."""
    names: dict[str, list[Any]] = {
        "tasks": grid.tasks, "partitions": [partition_name(p) for p in grid.partitions],
        "malicious": [float(f) for f in grid.malicious], "attacks": grid.attacks,
        "defences": grid.defences, "seeds": grid.seeds,
    }  # fmt: skip
    for name, values in names.items():
        seen: dict[Any, int] = {}
        for i, value in enumerate(values):
            if value in seen:
                given = [("iid" if v is None else v) for v in getattr(grid, name)]
                first, again = (str(given[j])[:40] for j in (seen[value], i))
                raise refuse(
                    name, f"{first} and {again} name the same runs ({str(value)[:40]}); "
                    "give each once",
                )  # fmt: skip
            seen[value] = i


def check_names(grid: Grid) -> None:
    """Every task, attack and defence the grid names exists: a typo fails at once,
    listing the names, rather than after hours of runs."""
    from secfl.eval.attacks import available_attacks
    from secfl.tasks import task_names

    for option, names, known in (
        ("--tasks", grid.tasks, task_names()),
        ("--attacks", grid.attacks, available_attacks()),
        ("--defences", grid.defences, defence_names()),
    ):
        needed = option != "--attacks" or any(frac > 0 for frac in grid.malicious)
        if not names and needed:
            raise FlError(f"{option}: no name given (known: {', '.join(known)})")
        unknown = [name for name in names if name not in known]
        if unknown:
            raise FlError(
                f"{option}: unknown '{unknown[0][:40]}' (known: {', '.join(known)}); "
                "give a comma-separated list of these"
            )
