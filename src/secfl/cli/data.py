"""``secfl data``: partition a task's dataset into shards, and inspect a shard."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secfl._internal.values import shown
from secfl.cli._common import out
from secfl.errors import UsageError

__all__ = [
    "app",
    "info_cmd",
    "split_cmd",
]

if TYPE_CHECKING:
    from secfl.tasks import ShardSummary, SplitReport

app = typer.Typer(
    help="Task data: split a dataset into collaborator shards, inspect a shard.",
    no_args_is_help=True,
)


def _labels(counts: Sequence[int], k: int = 3) -> str:
    """The ``k`` commonest labels with their shares, e.g. ``3 41% · 7 22% · 0 15%``."""
    total = sum(counts) or 1
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    return " · ".join(f"{c} {100 * counts[c] / total:.0f}%" for c in order[:k] if counts[c])


def _table(report: SplitReport) -> None:
    from rich.table import Table
    from rich.text import Text

    labels = report.target_scaling is None  # a regression's shards have no labels to count
    # the name is the task's: plain text, never markup, its control characters escaped
    title = Text(f"{shown(report.task)}: {len(report.client_shards)} clients")
    table = Table(title=title, title_justify="left")
    table.add_column("shard")
    table.add_column("role")
    table.add_column("samples", justify="right")
    if labels:
        table.add_column("classes", justify="right")
        table.add_column("top labels")
    shard: ShardSummary
    for shard in report.shards:
        present = sum(1 for c in shard.label_counts if c)
        counts = [f"{present}/{len(shard.label_counts)}", _labels(shard.label_counts)]
        table.add_row(shard.file, shard.role, str(shard.samples), *(counts if labels else []))
    out.print(table)


def _task(spec: str) -> object:
    """A built-in task's name as it is; a path: the user's task (a .py file, or a folder
    holding task.py), imported to call its load_pool()."""
    from secfl.tasks import builtin_task

    if builtin_task(spec) is not None:
        return spec
    if not os.path.exists(spec):  # (`Path.exists` raised on a name too long: a traceback)
        from secfl.tasks import task_names

        raise UsageError(
            f"--task: '{spec}' is neither a built-in task ({', '.join(task_names())}) nor "
            "a task's .py file or folder"
        )
    from secfl.fl._inputs import load_task

    return load_task(spec)


@app.command("split")
def split_cmd(
    task: Annotated[
        str,
        typer.Option(
            help="A built-in task (digits, breast-cancer, fashion-mnist, diabetes), or the "
            "path of your task (task.py or its folder) if it has load_pool()."
        ),
    ],
    clients: Annotated[int, typer.Option(help="Number of collaborator shards.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder to write the shards to.")],
    iid: Annotated[bool, typer.Option("--iid", help="IID partition (the default).")] = False,
    dirichlet: Annotated[
        float | None,
        typer.Option(
            "--dirichlet",
            help="Label skew: Dirichlet(ALPHA) class proportions (classification only).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same bytes.")] = 0,
    validation_fraction: Annotated[
        float, typer.Option(help="Share of the data held out for the aggregator's validation.")
    ] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Share held out for testing.")] = 0.2,
    samples: Annotated[
        int | None, typer.Option(help="Use a random subset of this many samples.")
    ] = None,
    min_samples: Annotated[
        int, typer.Option(help="Fewest training samples any collaborator gets.")
    ] = 10,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier split in the output folder.")
    ] = False,
) -> None:
    """Write client-NNN, validation and test shards (safetensors) and split.json."""
    from secfl.tasks import split

    if iid and dirichlet is not None:
        raise UsageError("give either --iid or --dirichlet ALPHA, not both")
    if not output:  # an unset variable in a script (-o "$OUT"): not the current folder
        raise UsageError("--output: the path is empty; name the folder to write the shards to")
    report = split(
        _task(task),
        clients,
        iid=True,
        dirichlet_alpha=dirichlet,
        seed=seed,
        out=Path(output),
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        samples=samples,
        min_samples=min_samples,
        overwrite=overwrite,
    )
    _table(report)
    kind = report.partition["kind"]
    how = f"dirichlet(alpha={report.partition['alpha']:g})" if kind == "dirichlet" else "iid"
    out.print(
        f"{how}, seed {report.seed}, split {report.split_id[:16]}, written to {report.out}",
        markup=False,
    )


@app.command("info")
def info_cmd(
    shard: Annotated[str, typer.Argument(help="A shard file written by `secfl data split`.")],
    task: Annotated[
        str | None, typer.Option(help="Refuse unless the shard is for this task.")
    ] = None,
) -> None:
    """Validate a shard and print what it holds."""
    from secfl.tasks import load_shard

    data = load_shard(Path(shard), task=task)
    meta = data.meta
    partition = meta["partition"]
    how = f"dirichlet(alpha={partition['alpha']:g})" if partition["kind"] == "dirichlet" else "iid"
    role = (
        f"client {meta['index']} of {meta['clients']}" if meta["role"] == "client" else meta["role"]
    )
    out.print(f"task:     {shown(meta['task'])}", markup=False)  # a name from a file
    out.print(f"role:     {role}", markup=False)
    out.print(f"samples:  {meta['samples']}", markup=False)
    out.print(f"features: {meta['feature_shape']} {meta['storage_dtype']}", markup=False)
    if "label_counts" in meta:
        counts = meta["label_counts"]
        out.print(f"labels:   {_labels(counts, k=len(counts))}", markup=False)
    else:
        scaling = meta["target_scaling"]
        out.print(
            f"targets:  values (regression), scaled by mean {scaling['offset'][0]:g} "
            f"and deviation {scaling['scale'][0]:g}",
            markup=False,
        )
    out.print(f"split:    {how}, seed {meta['seed']}, {meta['split']}", markup=False)
