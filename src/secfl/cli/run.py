"""``secfl run``: start a workload inside the TEE with its attested identity and secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from secfl.cli._common import read_optional
from secfl.errors import UsageError

__all__ = [
    "parse_volumes",
    "run",
]


def parse_volumes(values: list[str] | None, option: str = "--volume") -> dict[str, Path]:
    volumes: dict[str, Path] = {}
    for item in values or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{option}: '{item}' is not NAME=PATH")
        if name in volumes:
            raise UsageError(f"{option}: '{name}' given twice")
        volumes[name] = Path(path)
    return volumes


def run(
    argv: Annotated[
        list[str] | None, typer.Argument(help="The program to run and its arguments.")
    ] = None,
    spm: Annotated[str, typer.Option(help="SPM URL, https://HOST:PORT.")] = "",
    spm_pin: Annotated[str | None, typer.Option(help="SHA-256 of the SPM's TLS key.")] = None,
    spm_measurement: Annotated[
        list[str] | None,
        typer.Option(
            help="Accept an SPM proving this measurement: HEX, or FIELD=HEX,... (TDX: "
            "mrtd=HEX,rtmr1=HEX,rtmr2=HEX)."
        ),
    ] = None,
    sim_root: Annotated[
        str | None, typer.Option(help="Simulation root of a simulated SPM.")
    ] = None,
    policy: Annotated[str, typer.Option(help="Policy name.")] = "",
    service: Annotated[str, typer.Option(help="Service name in the policy.")] = "",
    volume: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a volume.")] = None,
    module: Annotated[
        str | None, typer.Option(help="Run this Python module from the code volumes, in-process.")
    ] = None,
    platform: Annotated[str, typer.Option(help="auto|simulated|tdx|snp|sgx")] = "auto",
    sim_dir: Annotated[str | None, typer.Option(help="Simulated TEE folder.")] = None,
) -> int:
    """Attest, receive secrets, open volumes, inject, and run PROGRAM (its exit code, or 128+N
    when signal N killed it)."""
    from secfl.launcher._launch import RunRequest, execute, prepare

    for flag, value in (("--spm", spm), ("--policy", policy), ("--service", service)):
        if not value:
            raise UsageError(f"{flag} is required")
    request = RunRequest(
        spm_url=spm,
        policy=policy,
        service=service,
        argv=list(argv or []),
        spm_pin=spm_pin,
        spm_measurements=list(spm_measurement or []),
        sim_root=read_optional(sim_root, "simulation root"),
        volumes=parse_volumes(volume),
        module=module,
        platform=platform,
        sim_dir=Path(sim_dir) if sim_dir else None,
        # the site's own credential, a file its host names (never the key itself)
        site_key=Path(key_file) if (key_file := os.environ.get("SECFL_SITE_KEY")) else None,
    )
    return execute(prepare(request))
