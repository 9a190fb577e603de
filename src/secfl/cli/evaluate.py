"""``secfl eval robustness``: attacks against defences, with a report."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated

import typer

from secfl.cli._common import UsageError, out

app = typer.Typer(help="Evaluations (simulated federations with attackers).", no_args_is_help=True)


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise UsageError(f"{what}: '{text}' is not a comma-separated list of numbers") from None


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


@app.command("robustness")
def robustness_cmd(
    out_dir: Annotated[str, typer.Option("-o", "--out", help="Report folder.")] = "robustness",
    quick: Annotated[bool, typer.Option("--quick", help="The minutes-long preset (CI).")] = False,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated tasks.")] = None,
    clients: Annotated[int | None, typer.Option(help="Collaborators per run.")] = None,
    partitions: Annotated[
        str | None, typer.Option(help="Comma-separated: iid and/or Dirichlet alphas.")
    ] = None,
    malicious: Annotated[str | None, typer.Option(help="Comma-separated fractions.")] = None,
    attacks: Annotated[str | None, typer.Option(help="Comma-separated attacks.")] = None,
    defences: Annotated[str | None, typer.Option(help="Comma-separated defences.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds per cell.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds per run.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Local epochs per round.")] = None,
    samples: Annotated[int | None, typer.Option(help="Subsample the data set.")] = None,
    workers: Annotated[
        int, typer.Option(help="Processes running the grid side by side (one per core).")
    ] = 1,
    resume: Annotated[
        bool, typer.Option("--resume", help="Keep the runs already in the folder; run the rest.")
    ] = False,
    shard: Annotated[
        str | None, typer.Option(help="K/N: run only every N-th run from the K-th (a worker).")
    ] = None,
    report_only: Annotated[
        bool,
        typer.Option("--report-only", help="Run nothing: report the runs the folder holds."),
    ] = False,
) -> None:
    """Run every attack against every defence; write CSV, JSON, Markdown and PNGs.

    Each finished run is appended to ``runs*.jsonl`` in the report folder at once, so
    a long grid can be stopped and continued with ``--resume``; ``--workers N`` runs
    N processes (each with one torch thread) and writes the report when all are done;
    ``--report-only -o DIR`` reports a grid still under way (or stopped) from its
    folder, with the grid and command recorded there."""
    from dataclasses import replace

    from secfl.eval.folder import GridFolder, fan_out, parse_shard
    from secfl.eval.grid import FULL, QUICK, write_results

    grid = QUICK if quick else FULL
    stored = GridFolder.stored(Path(out_dir)) if report_only and not quick else None
    if stored:  # report on the grid the folder was made with, unless told otherwise
        grid = stored[0]
    parts = _names(partitions)
    changes = {
        "tasks": _names(tasks),
        "clients": clients,
        "partitions": None if parts is None else [
            None if p == "iid" else float(p) for p in parts
        ],
        "malicious": _floats(malicious, "--malicious"),
        "attacks": _names(attacks),
        "defences": _names(defences),
        "seeds": None if seeds is None else list(range(seeds)),
        "rounds": rounds,
        "epochs": epochs,
        "samples": samples,
    }  # fmt: skip
    grid = replace(grid, **{k: v for k, v in changes.items() if v is not None})
    given = {
        "--tasks": tasks, "--clients": clients, "--partitions": partitions,
        "--malicious": malicious, "--attacks": attacks, "--defences": defences,
        "--seeds": seeds, "--rounds": rounds, "--epochs": epochs, "--samples": samples,
    }  # fmt: skip
    opts = (["--quick"] if quick else []) + [
        a for k, v in given.items() if v is not None for a in (k, str(v))
    ] + ["-o", out_dir]  # fmt: skip
    command = "secfl eval robustness " + shlex.join(opts)
    if stored and not any(v is not None for v in given.values()):
        command = stored[1]
    part = parse_shard(shard)
    folder = GridFolder(Path(out_dir), grid, command)
    if workers < 1:
        raise UsageError(f"--workers: {workers} is not a positive number of processes")
    folder.claim(resume=resume or part != (0, 1), report_only=report_only)
    began = time.perf_counter()
    if workers > 1 and not report_only:
        fan_out(workers, ["eval", "robustness", *opts])
    elif not report_only:
        ev = folder.evaluation()
        todo = ev.pending(part)
        out.print(f"{len(todo)} runs to go" + (f" (shard {shard})" if shard else ""))
        ev.run(
            lambda i, n, label: out.print(f"[{i + 1}/{n}] {label}", markup=False),
            folder.sink(part),
            part,
        )
        if part != (0, 1):
            return  # the parent writes the report
    ev = folder.evaluation(seconds=time.perf_counter() - began)
    missing = len(ev.pending())
    paths = write_results(ev, folder.path, command)
    took = "" if report_only else f", {ev.seconds:.0f} s"
    out.print(f"report: {paths['report']} ({len(ev.rows())} runs{took})")
    if missing and report_only:
        out.print(f"{missing} runs of the grid are still to go (--resume runs them)")
    elif missing:
        raise UsageError(f"{missing} runs of the grid did not finish: run again with --resume")
