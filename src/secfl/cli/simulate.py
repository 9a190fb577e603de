"""``secfl simulate``: a user's own task federated in one process, without TEEs.

The quick loop before any policy exists: the same settings parser, sampling,
seeds, strategies and checks as a real federation (:mod:`secfl.fl._local`), each
site a data folder on this machine, the data and the model in plain text.
"""

from __future__ import annotations

import json
import os
import stat
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from secfl.cli._common import err, out
from secfl.errors import TaskError, UsageError

if TYPE_CHECKING:
    from rich.table import Table

    from secfl.fl._config import FederationConfig

__all__ = ["DEBUG_ENV", "load_settings", "simulate"]

#: Set to 1 for the traceback of an exception raised by the task's code (as --debug).
DEBUG_ENV = "SECFL_DEBUG"


def load_settings(path: Path | None, rounds: int | None) -> FederationConfig:
    """The federation settings: a policy's (or a settings file's) ``federation``
    section, or the file as settings; defaults without one. ``rounds`` overrides."""
    from secfl.fl._config import FederationConfig
    from secfl.fl._startup import read_settings

    settings: dict[str, Any] = dict(read_settings(path)) if path is not None else {}
    if rounds is not None:
        settings["rounds"] = rounds
    return FederationConfig.parse(settings)


def simulate(
    task: Annotated[
        str,
        typer.Option(
            "--task",
            metavar="PATH",
            help="The task: the folder holding task.py (and its own modules), a .py file, "
            "or a built-in task's name.",
        ),
    ],
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            metavar="PATH",
            help="One site's data: the folder (or file) its load_data reads. Repeat for "
            "each site; the folder's name is the site's name.",
        ),
    ],
    validation: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Validation data: evaluated after every round."),
    ] = None,
    test: Annotated[
        Path | None, typer.Option(metavar="PATH", help="Test data: evaluated after every round.")
    ] = None,
    settings: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            "--policy",
            metavar="PATH",
            help="Federation settings: a policy or a YAML file with a federation section, or "
            "the settings alone. Without it: the defaults (10 rounds of fedavg, at least "
            "2 sites).",
        ),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(metavar="N", help="Rounds to run (overrides the settings).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Write the final model here as plain safetensors (not encrypted: this "
            "loop runs without TEEs).",
        ),
    ] = None,
    metrics: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Write every round's metrics here, one JSON line each."),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help=f"Show the traceback when the task's code raises (or {DEBUG_ENV}=1)."
        ),
    ] = False,
) -> None:
    """Run your own task as a federation in one process, without TEEs.

    Each --data folder is one site. The rounds are the federation's: the same settings
    parser, sampling, per-site seeds, aggregation strategies and update checks, so what
    trains here trains the same way under `secfl run`; nothing is attested, encrypted or
    signed. Prints a table of the rounds: the train loss, then the validation and test
    metrics (the objective's marked with *).
    """
    from secfl.tasks._contract import task_errors_shown

    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with task_errors_shown():  # the owner's own machine: the task's messages are shown
            _simulate(task, data, validation, test, settings, rounds, output, metrics)
    except TaskError as exc:  # the task's own exception is its cause (see task_call)
        cause = exc.__cause__
        if cause is None:
            raise
        if debug:
            err.print(_user_traceback(cause), markup=False)
            raise
        raise type(exc)(f"{exc}; --debug shows the traceback") from None


def _simulate(
    task_spec: str,
    data: list[Path],
    validation_path: Path | None,
    test_path: Path | None,
    settings: Path | None,
    rounds: int | None,
    output: Path | None,
    metrics_path: Path | None,
) -> None:
    from rich.live import Live

    from secfl.fl._inputs import load_task
    from secfl.fl._local import Site, check_sites, load_site, run_local

    if not data:
        raise UsageError("give each site's data with --data PATH (one per site)")
    given = [("--data", p) for p in data] + [
        ("--validation", validation_path),
        ("--test", test_path),
    ]
    for option, path in given:
        if path is not None and not path.exists():
            raise UsageError(f"{option}: {path} does not exist; give a folder or file of data")
    for option, path in (("--output", output), ("--metrics", metrics_path)):
        if path is not None and str(path) == "-":  # refused before the run, not after it
            raise UsageError(
                f"{option} -: standard output carries the rounds' table; give a file name"
            )
    if output is not None:
        _check_output(output)
    config = load_settings(settings, rounds)
    config.strategy_object()  # an unknown rule or setting refused before anything is said
    names = _site_names(data)
    check_sites(names, config)
    task = load_task(task_spec)
    sites = [
        load_site(task, name, path, max_samples=config.max_samples)
        for name, path in zip(names, data, strict=True)
    ]
    held_out: dict[str, Site | None] = {
        k: load_site(task, k, p) if p is not None else None
        for k, p in (("validation", validation_path), ("test", test_path))
    }
    lines = _open_metrics(metrics_path)
    out.print(
        f"simulating '{task.name}': {len(sites)} site{'s' if len(sites) > 1 else ''} "
        f"({', '.join(f'{s.name} {s.samples}' for s in sites)} samples), "
        f"{config.rounds} rounds of {config.strategy}; no TEE, plain data",
        markup=False,
    )
    history: list[dict[str, Any]] = []
    # On a terminal the table grows round by round; elsewhere (a log, a pipe) it is
    # printed once, at the end or when a round fails.
    live = Live(_table(history), console=out, auto_refresh=False)
    if out.is_terminal:
        live.start()

    def on_round(entry: dict[str, Any]) -> None:
        history.append(entry)
        if out.is_terminal:
            live.update(_table(history), refresh=True)
        if lines is not None:
            lines.write(json.dumps(entry, sort_keys=True) + "\n")
            lines.flush()

    try:
        run = run_local(
            task,
            sites,
            config,
            validation=_data(held_out["validation"]),
            test=_data(held_out["test"]),
            on_round=on_round,
        )
    finally:
        if out.is_terminal:
            live.stop()
        elif history:
            out.print(_table(history))
        if lines is not None:
            lines.close()
    _summary(run.best, config)
    if output is not None:
        _write_model(run.params, output, run.scores.summary())


def _user_traceback(exc: BaseException) -> str:
    """The traceback of the task's exception from the first frame outside secfl (the
    task's own code), not secfl's frames that called it."""
    package = str(Path(__file__).resolve().parents[1])
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(package):
            break
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


def _data(site: Any) -> Any:
    return None if site is None else site.data


def _site_names(paths: list[Path]) -> list[str]:
    """Each site's name: its folder's (a file's name without its extension), as the
    federation will call the site. The same data twice, or two sites of one name, is
    refused: it would train one site's data as two sites'."""
    seen: dict[Path, Path] = {}
    named: dict[str, Path] = {}
    for path in paths:
        where = Path(os.path.realpath(path))  # (Path.resolve raises on a link loop)
        if where in seen:
            raise UsageError(
                f"--data: {path} is given twice (as {seen[where]} too); give each site's data once"
            )
        seen[where] = path
        name = where.name if path.is_dir() else where.stem
        if not name:
            raise UsageError(f"--data: {path} has no name to call its site by; give a folder")
        if name in named:
            raise UsageError(
                f"--data: two sites would be named '{name}' ({named[name]} and {path}): a site "
                "is named after its folder (a file: its name without the extension); rename one"
            )
        named[name] = path
    return list(named)


def _open_metrics(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return open(path, "w", encoding="utf-8")  # closed after the run
    except OSError as exc:
        raise UsageError(f"--metrics: cannot write {path}: {exc.strerror or exc}") from None


def _table(history: list[dict[str, Any]]) -> Table:
    """The rounds so far: sites, then every score but the sample counts (which never
    change); the objective's column marked ``*``."""
    from rich.table import Table

    first = history[0] if history else {}
    chosen = history[-1].get("objective_metric") if history else None
    columns = [
        k for k in first if k.startswith(("train_", "val_", "test_")) and k.split("_", 1)[1] != "n"
    ]
    table = Table(title_justify="left", show_edge=False)
    table.add_column("round", justify="right")
    table.add_column("sites", justify="right")
    for key in columns:
        star = "*" if key == chosen else ""
        table.add_column(key.replace("_", " ", 1) + star, justify="right")
    for entry in history:
        table.add_row(
            str(entry["round"]),
            str(entry["updates"]),
            *(f"{entry[k]:.4g}" if k in entry else "" for k in columns),
        )
    return table


def _summary(best: dict[str, Any] | None, config: FederationConfig) -> None:
    objective = config.objective
    if best is None:
        out.print(
            f"objective {objective.metric} ({objective.mode}): no round reported it; give "
            "--validation data to score the global model",
            markup=False,
        )
        return
    out.print(
        f"best round by {best['objective_metric']} ({objective.mode}): {best['round']} "
        f"({best['objective']:.4g}); the final model is round {config.rounds}'s",
        markup=False,
    )


def _check_output(path: Path) -> None:
    """Refuse, before the rounds run, a ``--output`` that cannot be written: a folder,
    or a file in a folder that does not exist or is not writable (the model was lost
    after the whole run, for a typo in its path)."""
    folder = path.parent
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            raise UsageError(f"--output: {path} is a folder; give a file name")
    except (FileNotFoundError, NotADirectoryError):
        pass  # a new file: its folder is checked below
    except OSError as exc:
        raise UsageError(f"--output: cannot use {path}: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise UsageError(f"--output: {folder} is not a folder; create it, or give another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--output: {folder} is not writable; give another path")


def _write_model(params: Any, path: Path, metadata: dict[str, str]) -> None:
    from secfl._internal.files import atomic_write
    from secfl.fl._tensors import to_bytes

    try:
        atomic_write(path, to_bytes(params, metadata), mode=0o600)
    except OSError as exc:
        raise UsageError(f"--output: cannot write {path}: {exc.strerror or exc}") from None
    out.print(
        f"final model: {path} (plain safetensors, not encrypted: a federation seals it "
        "to its owner)",
        markup=False,
    )
