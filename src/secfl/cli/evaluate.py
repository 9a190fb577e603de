"""``secfl eval robustness``: attacks against defences, with a report."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from secfl.cli._common import UsageError, err, out

if TYPE_CHECKING:
    from secfl.eval.folder import GridFolder

__all__ = ["app", "robustness_cmd"]

app = typer.Typer(help="Evaluations (simulated federations with attackers).", no_args_is_help=True)


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
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run the grid on a Ray cluster: auto, HOST:PORT, ray://HOST:10001, "
            "or local (a new instance with this machine's CPUs).",
        ),
    ] = None,
) -> None:
    """Run every attack against every defence; write CSV, JSON, Markdown and PNGs.

    Each finished run is appended to ``runs*.jsonl`` in the report folder at once, so
    a long grid can be stopped and continued with ``--resume``; ``--workers N`` runs
    N processes (each with one torch thread) and writes the report when all are done;
    ``--report-only -o DIR`` reports a grid still under way (or stopped) from its
    folder, with the grid and command recorded there; ``--ray ADDRESS`` runs each
    run as a task on a Ray cluster (:mod:`secfl.eval.ray_engine`), into the same
    folder, so ``--resume`` continues a grid with either engine."""
    from secfl.eval.folder import MAX_WORKERS, GridFolder, fan_out, parse_shard
    from secfl.eval.options import GridOptions, assemble_grid

    options = GridOptions(
        tasks=tasks, clients=clients, partitions=partitions, malicious=malicious,
        attacks=attacks, defences=defences, seeds=seeds, rounds=rounds, epochs=epochs,
        samples=samples,
    )  # fmt: skip
    # a report on a folder is on the grid it was made with, unless told otherwise
    stored = GridFolder.stored(Path(out_dir)) if report_only and not quick else None
    grid, argv, command = assemble_grid(options, quick=quick, out=out_dir, stored=stored)
    part = parse_shard(shard)
    if workers < 1:
        raise UsageError(f"--workers: {workers} is not a positive number of processes")
    if workers > MAX_WORKERS:
        raise UsageError(
            f"--workers: {workers} processes; give 1 to {MAX_WORKERS} (one per core helps: "
            f"this machine has {os.cpu_count() or 1})"
        )
    _check_ray(ray_address, workers=workers, shard=shard, report_only=report_only)
    folder = GridFolder(Path(out_dir), grid, command)
    folder.claim(resume=resume or part != (0, 1), report_only=report_only)
    began = time.perf_counter()
    if ray_address is not None:
        _run_on_ray(folder, ray_address, command)
    elif not report_only:
        again = f" --workers {workers}" if workers > 1 else f" --shard {shard}" if shard else ""
        try:
            if workers > 1:
                fan_out(workers, ["eval", "robustness", *argv])
            else:
                _run_shard(folder, part, shard)
        except KeyboardInterrupt:
            _stopped(folder, f"{command} --resume{again}")
        if part != (0, 1):
            return  # the parent writes the report
    _report(folder, command, time.perf_counter() - began, report_only=report_only)


def _run_shard(folder: GridFolder, part: tuple[int, int], shard: str | None) -> None:
    """Run the runs of shard ``part`` the folder does not hold yet, saying which."""
    ev = folder.evaluation()
    todo = ev.pending(part)
    out.print(f"{len(todo)} runs to go" + (f" (shard {shard})" if shard else ""))
    ev.run(
        lambda i, n, label: out.print(f"[{i + 1}/{n}] {label}", markup=False),
        folder.sink(part),
        part,
    )


def _check_ray(address: str | None, *, workers: int, shard: str | None,
               report_only: bool) -> None:  # fmt: skip
    """``--ray`` is an engine of its own: it takes no process workers nor a shard."""
    if address is None:
        return
    for given, option in ((workers > 1, "--workers"), (shard is not None, "--shard"),
                          (report_only, "--report-only")):  # fmt: skip
        if given:
            raise UsageError(f"--ray runs the whole grid on the cluster: leave out {option}")
    from secfl.eval.ray_engine import check_address

    check_address(address)


def _run_on_ray(folder: GridFolder, address: str, command: str) -> None:
    """Run the folder's pending runs on Ray; an interrupt keeps what finished and
    says, in one line, what continues it."""
    from secfl.eval.ray_engine import run_on_ray

    todo = len(folder.evaluation().pending())
    out.print(f"{todo} runs to go on Ray ({address})")
    try:
        run_on_ray(folder, address,
                   lambda i, n, label: out.print(f"[{i}/{n}] {label}", markup=False))  # fmt: skip
    except KeyboardInterrupt:
        _stopped(folder, f"{command} --resume --ray {shlex.quote(address)}")


def _stopped(folder: GridFolder, again: str) -> NoReturn:
    """An interrupted grid: one line saying that the finished runs are kept and what
    continues it (exit code 130)."""
    err.print(
        f"stopped: the finished runs are kept in {folder.path}; continue with: {again}",
        markup=False,
    )
    raise typer.Exit(130) from None


def _report(folder: GridFolder, command: str, seconds: float, *, report_only: bool) -> None:
    """Write the report of the runs the folder holds; a grid run here that did not
    finish is an error, a grid reported on while under way is not."""
    from secfl.eval.report import write_results

    ev = folder.evaluation(seconds=seconds)
    missing = len(ev.pending())
    paths = write_results(ev, folder.path, command)
    took = "" if report_only else f", {ev.seconds:.0f} s"
    out.print(f"report: {paths['report']} ({len(ev.rows())} runs{took})")
    if missing and report_only:
        out.print(f"{missing} runs of the grid are still to go (--resume runs them)")
    elif missing:
        raise UsageError(f"{missing} runs of the grid did not finish: run again with --resume")
