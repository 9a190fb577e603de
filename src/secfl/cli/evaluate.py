"""``secfl eval robustness``: attacks against defences, with a report."""

from __future__ import annotations

import json
import os
import shlex
import sys
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
) -> None:
    """Run every attack against every defence; write CSV, JSON, Markdown and PNGs.

    Each finished run is appended to ``runs*.jsonl`` in the report folder at once, so
    a long grid can be stopped and continued with ``--resume``; ``--workers N`` runs
    N processes (each with one torch thread) and writes the report when all are done."""
    from dataclasses import replace

    from secfl.fl.evaluation import FULL, QUICK, Evaluation, append_record, load_records

    grid = QUICK if quick else FULL
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
    if workers < 1:
        raise UsageError(f"--workers: {workers} is not a positive number of processes")
    part = _shard(shard)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = {
        k: getattr(grid, k) for k in ("clients", "rounds", "epochs", "samples", "clones")
    }
    settings = folder / "grid.json"
    if resume or part != (0, 1):
        if settings.exists() and json.loads(settings.read_text()) != fingerprint:
            raise UsageError(
                f"{folder}: its runs were made with other settings "
                f"({settings.read_text().strip()}, not {json.dumps(fingerprint)}); "
                "use another folder"
            )
    elif any(folder.glob("runs*.jsonl")):
        raise UsageError(f"{folder} already holds runs: add --resume to keep them, or empty it")
    # atomically: parallel workers read it while others write it
    fresh = settings.with_name(f".grid.json.{os.getpid()}")
    fresh.write_text(json.dumps(fingerprint) + "\n")
    os.replace(fresh, settings)
    ev = Evaluation(grid, load_records(folder))
    if workers > 1:
        began = time.perf_counter()
        _fan_out(workers, opts)
        ev = Evaluation(grid, load_records(folder), seconds=time.perf_counter() - began)
    else:
        todo = ev.pending(part)
        out.print(f"{len(todo)} runs to go" + (f" (shard {shard})" if shard else ""))
        sink = folder / f"runs-{part[0]}of{part[1]}.jsonl"
        ev.run(
            lambda i, n, label: out.print(f"[{i + 1}/{n}] {label}", markup=False),
            lambda record: append_record(sink, record),
            part,
        )
        if part != (0, 1):
            return  # the parent writes the report
    missing = len(ev.pending())
    command = "secfl eval robustness " + shlex.join(opts)
    from secfl.fl.evaluation import write_results

    paths = write_results(ev, folder, command.strip())
    out.print(f"report: {paths['report']} ({len(ev.rows())} runs, {ev.seconds:.0f} s)")
    if missing:
        raise UsageError(f"{missing} runs of the grid did not finish: run again with --resume")


def _shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit()) or not 0 <= int(k) < int(n):
        raise UsageError(f"--shard: '{text}' is not K/N with 0 <= K < N")
    return (int(k), int(n))


def _fan_out(workers: int, opts: list[str]) -> None:
    """Run ``workers`` copies of this command, each on its own shard, and wait."""
    import subprocess

    entry = "import sys; from secfl.cli.main import main; sys.exit(main(sys.argv[1:]))"
    base = [sys.executable, "-c", entry, "eval", "robustness", *opts, "--resume"]
    procs = [subprocess.Popen([*base, "--shard", f"{k}/{workers}"]) for k in range(workers)]
    failed = [k for k, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise UsageError(f"workers {failed} failed (see above); run again with --resume")
