"""``secfl attest``: produce and verify attestation evidence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from secfl.cli._common import (
    out,
    parse_at,
    print_verbatim,
    read_input,
    read_optional,
    write_output,
)
from secfl.errors import UsageError

__all__ = [
    "KINDS",
    "PLATFORMS",
    "S",
    "app",
    "certs_cmd",
    "collateral_cmd",
    "quote_cmd",
    "verify_cmd",
]

if TYPE_CHECKING:
    from secfl.tee._evidence import KindOrAuto

app = typer.Typer(help="Produce and verify attestation evidence.", no_args_is_help=True)

KINDS: tuple[KindOrAuto, ...] = ("auto", "sgx", "tdx", "snp", "simulated")
PLATFORMS = ("auto", "simulated", "tdx", "snp", "sgx")

S = TypeVar("S", bound=str)


def _choice(value: str, allowed: tuple[S, ...], option: str) -> S:
    """``value`` as the one of ``allowed`` it equals, else a usage error."""
    for choice in allowed:
        if value == choice:
            return choice
    raise UsageError(f"{option}: '{value}' is not one of {', '.join(allowed)}")


@app.command("verify")
def verify_cmd(
    file: Annotated[
        str, typer.Argument(help="Evidence: raw, hex, or configfs-tsm JSON; - for stdin.")
    ],
    kind: Annotated[str, typer.Option(help="auto|sgx|tdx|snp|simulated")] = "auto",
    collateral: Annotated[
        str | None, typer.Option(help="Intel PCS/PCCS v4 collateral JSON (full TCB appraisal).")
    ] = None,
    vcek: Annotated[
        str | None, typer.Option(help="AMD VCEK or VLEK certificate (DER or PEM).")
    ] = None,
    chain: Annotated[str | None, typer.Option(help="AMD ASK (or ASVK) then ARK, PEM.")] = None,
    aux: Annotated[
        str | None, typer.Option(help="configfs-tsm auxblob (SNP certificate table).")
    ] = None,
    amd_crl: Annotated[
        str | None,
        typer.Option(
            help="AMD KDS CRL of the report's kind and product (https://kdsintf.amd.com/"
            "vcek/v1/Milan/crl, DER), or a folder of them as `spm serve --amd-crl` takes; "
            "without it the claims say amd_crl: unchecked.",
        ),
    ] = None,
    sim_root: Annotated[
        str | None, typer.Option(help="Simulation root CA (PEM): accept simulated evidence.")
    ] = None,
    at: Annotated[
        str | None, typer.Option(help="Verification time, ISO-8601 (default: now, UTC).")
    ] = None,
    allow_debug: Annotated[bool, typer.Option(help="Accept evidence from a debug TEE.")] = False,
) -> None:
    """Verify evidence offline and print its claims as one JSON object."""
    from dataclasses import replace

    from secfl.tee._amd_crl import file_lookup, folder_lookup
    from secfl.tee._evidence import Evidence
    from secfl.tee._verify import verify

    chosen = _choice(kind, KINDS, "--kind")
    when = parse_at(at)
    evidence = Evidence.parse(read_input(file, "evidence"), chosen)
    aux_blob = read_optional(aux, "auxblob")
    if aux_blob is not None:
        evidence = replace(evidence, aux=aux_blob)
    crl = None
    if amd_crl is not None:
        path = Path(amd_crl)
        if not path.exists():
            raise UsageError(f"--amd-crl: '{amd_crl}' does not exist")
        crl = folder_lookup(path) if path.is_dir() else file_lookup(path)
    claims = verify(
        evidence,
        at=when,
        collateral=read_optional(collateral, "collateral"),
        vcek=read_optional(vcek, "VCEK"),
        chain=read_optional(chain, "certificate chain"),
        sim_root=read_optional(sim_root, "simulation root"),
        allow_debug=allow_debug,
        amd_crl=crl,
    )
    print_verbatim(claims.to_json())


@app.command("quote")
def quote_cmd(
    report_data: Annotated[
        str, typer.Option(help="Up to 64 bytes of hex bound into the evidence (zero-padded).")
    ],
    platform: Annotated[str, typer.Option(help="auto|simulated|tdx|snp|sgx")] = "auto",
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="raw|hex|json (json: configfs-tsm form)")
    ] = "raw",
    sim_dir: Annotated[
        str | None, typer.Option(help="Simulated TEE folder (default $SECFL_SIM_DIR).")
    ] = None,
    measurement: Annotated[
        str | None, typer.Option(help="Simulated platform only: the 48-byte measurement, hex.")
    ] = None,
) -> None:
    """Produce evidence on this machine's TEE (or the simulated one)."""
    from secfl.tee._platforms import platform_by_name
    from secfl.tee._simulated import SimulatedPlatform

    try:
        data = bytes.fromhex(report_data)
    except ValueError:
        raise UsageError("--report-data: not hex") from None
    if len(data) > 64:
        raise UsageError(f"--report-data: {len(data)} bytes, at most 64")
    _choice(output_format, ("raw", "hex", "json"), "--format")
    tee = platform_by_name(
        _choice(platform, PLATFORMS, "--platform"),
        sim_dir=Path(sim_dir) if sim_dir else None,
    )
    if isinstance(tee, SimulatedPlatform):
        evidence = tee.get_evidence(data.ljust(64, b"\0"), measurement=measurement)
    elif measurement is not None:
        raise UsageError("--measurement: only the simulated platform takes a measurement")
    else:
        evidence = tee.get_evidence(data.ljust(64, b"\0"))
    if output_format == "json":
        blob = evidence.to_json().encode() + b"\n"
    elif output_format == "hex":
        if evidence.aux is not None:
            raise UsageError("--format hex: this evidence carries certificates; use json")
        blob = evidence.quote.hex().encode() + b"\n"
    else:
        blob = evidence.to_bytes()
    write_output(blob, output)


def _cache_dir(cache: str | None, name: str) -> Path | None:
    """``--cache DIR``; default ``$XDG_CACHE_HOME/secfl/NAME``; ``--cache none`` disables."""
    if cache == "none":
        return None
    if cache:
        return Path(cache)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "secfl" / name


@app.command("collateral")
def collateral_cmd(
    file: Annotated[str, typer.Argument(help="An Intel quote (raw, hex or JSON); - for stdin.")],
    pccs: Annotated[str, typer.Option(help="PCCS or Intel PCS base URL (API v4).")],
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
    cache: Annotated[str | None, typer.Option(help="Cache folder, or 'none'.")] = None,
) -> None:
    """Fetch a quote's collateral (JSON for `attest verify --collateral`)."""
    from secfl.tee._evidence import Evidence
    from secfl.tee._pccs import PccsClient

    evidence = Evidence.parse(read_input(file, "evidence"))
    if evidence.kind not in ("sgx", "tdx"):
        raise UsageError(f"collateral: {evidence.kind} evidence has no Intel collateral")
    with PccsClient(pccs, _cache_dir(cache, "pccs")) as client:
        collateral = client.get_collateral(evidence.quote)
    write_output(collateral.to_json().encode() + b"\n", output)


@app.command("certs")
def certs_cmd(
    file: Annotated[str, typer.Argument(help="An SEV-SNP report (raw, hex or JSON); - for stdin.")],
    vcek_out: Annotated[str, typer.Option(help="Where to write the VCEK (DER).")],
    chain_out: Annotated[str, typer.Option(help="Where to write the ASK and ARK (PEM).")],
    kds: Annotated[str, typer.Option(help="AMD KDS base URL.")] = "https://kdsintf.amd.com",
    product: Annotated[
        str | None, typer.Option(help="Milan|Genoa|Turin (default: from the report).")
    ] = None,
    cache: Annotated[str | None, typer.Option(help="Cache folder, or 'none'.")] = None,
) -> None:
    """Fetch a report's VCEK and its ASK/ARK chain from AMD KDS."""
    from secfl.tee._evidence import Evidence
    from secfl.tee._kds import KdsClient

    evidence = Evidence.parse(read_input(file, "evidence"), "snp")
    with KdsClient(kds, _cache_dir(cache, "kds")) as client:
        vcek, chain = client.get_certs(evidence.quote, product)
    write_output(vcek, vcek_out)
    write_output(chain, chain_out)
    out.print(f"VCEK -> {vcek_out}; ASK/ARK -> {chain_out}", markup=False)


# (its own module: the demo's table and temporary folders are no part of verifying)
from secfl.cli.attest_demo import attestation_demo  # noqa: E402

app.command("demo")(attestation_demo)
