"""``secfl eval robustness``: attacks against defences, with a report."""

from __future__ import annotations

import json
import shlex
import sys
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
) -> None:
    """Run every attack against every defence; write CSV, JSON, Markdown and PNGs."""
    from dataclasses import replace

    from secfl.fl.evaluation import FULL, QUICK, Evaluation, Run, write_results

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
    ev = Evaluation(grid)
    total = sum(1 for _ in grid.scenarios())
    out.print(f"{total} runs")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "runs.jsonl"  # one line per finished run, as they finish

    def keep(run: Run) -> None:
        with open(partial, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(run.row(), default=str) + "\n")

    ev.run(lambda i, n, label: out.print(f"[{i + 1}/{n}] {label}", markup=False), keep)
    command = "secfl eval robustness " + shlex.join(sys.argv[3:] if len(sys.argv) > 3 else [])
    paths = write_results(ev, Path(out_dir), command.strip())
    out.print(f"report: {paths['report']} ({total} runs, {ev.seconds:.0f} s)")
