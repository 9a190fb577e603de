"""``secfl audit``: check the SPM's hash-chained audit log."""

from __future__ import annotations

from typing import Annotated

import typer

from secfl.cli._common import out
from secfl.errors import UsageError

__all__ = [
    "app",
    "verify_cmd",
]

app = typer.Typer(help="The SPM's audit log.", no_args_is_help=True)


@app.command("verify")
def verify_cmd(
    spm: Annotated[str | None, typer.Option(help="SPM URL (with --spm-pin).")] = None,
    spm_pin: Annotated[str | None, typer.Option(help="SHA-256 of the SPM's TLS key.")] = None,
    db: Annotated[str | None, typer.Option(help="Database URL of the SPM.")] = None,
    data: Annotated[str | None, typer.Option(help="The SPM's data folder (master key).")] = None,
) -> None:
    """Detect any modified, removed or reordered audit entry."""
    from secfl.spm._audit_verify import verify_database, verify_remote

    if spm:
        if not spm_pin:
            raise UsageError("--spm needs --spm-pin (from `secfl spm verify`)")
        count, head = verify_remote(spm, spm_pin)
    elif data or db:
        count, head = verify_database(data, db)
    else:
        raise UsageError("give --spm URL --spm-pin PIN, or --data DIR and/or --db URL")
    out.print(f"audit verify: OK, {count} entries, head {head}", markup=False)
    if spm is None and data is None:
        typer.echo(
            "note: without the SPM's data folder the head is not authenticated; "
            "removal of the newest entries together with the head row would go unseen",
            err=True,
        )
