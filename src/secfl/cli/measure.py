"""``secfl measure``: the digest a policy pins for a workload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from secfl.cli._common import out, print_verbatim
from secfl.errors import UsageError

__all__ = [
    "measure",
]


def measure(
    paths: Annotated[list[str], typer.Argument(help="Files and folders of the workload.")],
    cmd: Annotated[str | None, typer.Option("--cmd", help="The command line it runs.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the canonical manifest and the digest.")
    ] = False,
    for_run: Annotated[
        bool,
        typer.Option(
            "--for-run", help="PATHS are `-- PROGRAM ARGS` of `secfl run`: print its measurement."
        ),
    ] = False,
    code_volume: Annotated[
        list[str] | None, typer.Option(help="With --for-run: NAME=PATH of a code volume.")
    ] = None,
    module: Annotated[str | None, typer.Option(help="With --for-run: the --module run.")] = None,
) -> None:
    """Print the SHA-384 over the canonical manifest of PATHS and the command."""
    from secfl.tee import _measure as m

    # an option the other form ignores was a digest of something else, printed as if
    # it covered it (found by a review)
    if not for_run and (code_volume or module is not None):
        raise UsageError(
            "--code-volume and --module measure a `secfl run`: add --for-run and give its "
            "program after -- (secfl measure --for-run --code-volume NAME=PATH -- PROGRAM ARGS)"
        )
    if for_run and (cmd is not None or as_json):
        raise UsageError(
            "--cmd and --json measure files and a command, not a `secfl run`: with "
            "--for-run, give the program and its arguments after --"
        )
    if for_run:
        from secfl.cli.run import parse_volumes
        from secfl.launcher._measurement import resolve_program, run_measurement
        from secfl.shield import peek_tag

        tags = {n: peek_tag(p) for n, p in parse_volumes(code_volume, "--code-volume").items()}
        program = None if module else resolve_program(paths[0])
        argv = ["-m", module, *paths] if module else paths
        out.print(run_measurement(program, argv, tags), markup=False)
        return

    targets = [Path(p) for p in paths]
    if as_json:
        manifest = m.manifest(targets, cmd)
        print_verbatim(
            json.dumps({"sha384": m.measure(targets, cmd), "manifest": manifest}, indent=2)
        )
    else:
        out.print(m.measure(targets, cmd), markup=False)
