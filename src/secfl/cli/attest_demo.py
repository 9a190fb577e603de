"""``secfl attest demo``: the trust core at work on this machine and on real vendor evidence."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from secfl.cli._common import out

__all__ = [
    "attestation_demo",
]


def attestation_demo(
    vectors: Annotated[
        str | None,
        typer.Option(
            help="Real vendor evidence folder (default: $SECFL_TESTVECTORS, else "
            "shared/testvectors beside the source checkout)."
        ),
    ] = None,
) -> None:
    """Attest a workload in the simulated TEE and verify real Intel and AMD evidence."""
    from secfl.demo import attestation as lib

    folder = lib.find_vectors(vectors)
    with tempfile.TemporaryDirectory(prefix="secfl-demo-") as tmp:
        steps = lib.run(Path(tmp), folder)

    table = Table(title="secfl trust core: attestation decisions", show_lines=False)
    table.add_column("evidence")
    table.add_column("verifier must")
    table.add_column("verifier did")
    table.add_column("detail", overflow="fold")
    for step in steps:
        mark = "[green]" if step.as_expected else "[bold red]"
        table.add_row(
            escape(step.title),
            "accept" if step.expect_accept else "refuse",
            f"{mark}{'accepted' if step.accepted else 'refused'}[/]",
            escape(step.detail),
        )
    out.print(table)
    if folder is None:
        out.print(
            f"real Intel/AMD evidence not found at {lib.vectors_location()}: vendor steps "
            "skipped (give --vectors DIR or set SECFL_TESTVECTORS)",
            markup=False,
        )
    wrong = [s for s in steps if not s.as_expected]
    if wrong:
        out.print(f"[bold red]{len(wrong)} decision(s) were wrong[/]")
        raise typer.Exit(1)
    out.print(f"[green]all {len(steps)} decisions correct[/]")
