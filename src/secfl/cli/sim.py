"""``secfl sim``: the simulated TEE for development and CI."""

from __future__ import annotations

from typing import Annotated

import typer

from secfl.cli._common import out

__all__ = [
    "app",
    "init_cmd",
]

app = typer.Typer(
    help="The simulated TEE (development only; protects nothing).", no_args_is_help=True
)


@app.command("init")
def init_cmd(
    directory: Annotated[str, typer.Argument(help="Folder for the simulation root and key.")],
    force: Annotated[bool, typer.Option(help="Replace an existing simulation.")] = False,
) -> None:
    """Create a simulation root CA and a platform key certified by it."""
    from secfl._internal.x509util import fingerprint, load_pem_chain
    from secfl.tee import _simulated as simulated

    root = simulated.init(directory, force=force)
    digest = fingerprint(load_pem_chain(root.read_bytes(), "simulation root")[0])
    out.print(f"simulation root: {root}", markup=False)
    out.print(f"root sha256:     {digest}", markup=False)
    out.print(
        "verifiers accept this simulation only when given --sim-root " + str(root), markup=False
    )
