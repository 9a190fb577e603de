"""``secfl measure``: the digest a policy pins for a workload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from secfl.cli._common import out


def measure(
    paths: Annotated[list[str], typer.Argument(help="Files and folders of the workload.")],
    cmd: Annotated[str | None, typer.Option("--cmd", help="The command line it runs.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the canonical manifest and the digest.")
    ] = False,
) -> None:
    """Print the SHA-384 over the canonical manifest of PATHS and the command."""
    from secfl.tee import measure as m

    targets = [Path(p) for p in paths]
    if as_json:
        manifest = m.manifest(targets, cmd)
        out.print(
            json.dumps({"sha384": m.measure(targets, cmd), "manifest": manifest}, indent=2),
            markup=False,
        )
    else:
        out.print(m.measure(targets, cmd), markup=False)
