"""``secfl new task DIR``: start a task of your own from a working template."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from secfl.cli._common import out

__all__ = ["app", "new_task_cmd"]

app = typer.Typer(help="Start something new from a template: a task.", no_args_is_help=True)


@app.command("task")
def new_task_cmd(
    folder: Annotated[Path, typer.Argument(help="The folder to create (new or empty).")],
    name: Annotated[
        str | None, typer.Option(help="The task's name (default: the folder's name).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Write into a non-empty folder, over the template's files."),
    ] = False,
) -> None:
    """Write a working task: multi-file PyTorch regression code, synthetic CSV data for
    three sites plus validation and test, a test, federation settings and a README."""
    from secfl.cli._template import new_task

    made = new_task(folder, name=name, force=force)
    out.print(f"wrote task '{made.name}' to {folder} ({len(made.files)} files):", markup=False)
    rows = [
        ("code/task.py", "the task contract: name, build_model, load_data, train, evaluate"),
        (f"code/{made.package}/", "the task's own package: network, CSV reader, training"),
        ("data/site-1..3/", "synthetic CSV data, one folder per site"),
        ("data/validation/, data/test/", "held-out data the aggregator evaluates on"),
        ("federation.yaml", "the federation settings (a policy's federation section)"),
        ("test_task.py", "a test of the task alone"),
        ("README.md", "the quick loop, then how to go confidential"),
    ]
    for path, what in rows:
        out.print(f"  {path:<30} {what}", markup=False)
    out.print("next:", markup=False)
    out.print(f"  cd {folder}", markup=False)
    out.print("  python -m pytest test_task.py -q", markup=False)
    out.print(
        "  secfl simulate --task code --data data/site-1 --data data/site-2 "
        "--data data/site-3 --validation data/validation --test data/test "
        "--settings federation.yaml",
        markup=False,
    )
