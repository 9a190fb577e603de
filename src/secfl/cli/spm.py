"""``secfl spm``: run the Security Policy Manager and verify one before trusting it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from secfl.cli._common import out, read_optional
from secfl.errors import UsageError

if TYPE_CHECKING:
    from secfl.spm._amd_crl import AmdCrls
    from secfl.tee._amd_crl import CrlLookup

__all__ = [
    "app",
    "measurement_cmd",
    "parse_listen",
    "serve_cmd",
    "verify_cmd",
]

app = typer.Typer(help="The Security Policy Manager.", no_args_is_help=True)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host or len(port) > 5 or int(port) > 65535:
        raise UsageError(f"--listen: '{listen}' is not HOST:PORT (port 0 to 65535)")
    return host.strip("[]"), int(port)


@app.command("serve")
def serve_cmd(
    data: Annotated[str, typer.Option(help="Data folder (master key, SQLite database).")],
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve HTTPS on (port 0: any).")
    ] = "127.0.0.1:8443",
    db: Annotated[str | None, typer.Option(help="Database URL (default SQLite in --data).")] = None,
    platform: Annotated[str, typer.Option(help="auto|simulated|tdx|snp|sgx")] = "auto",
    sim_dir: Annotated[str | None, typer.Option(help="Simulated TEE folder.")] = None,
    name: Annotated[
        list[str] | None, typer.Option(help="Extra DNS name or IP for the certificate.")
    ] = None,
    ready_file: Annotated[
        str | None, typer.Option(help="Write {url, tls_spki_sha256, measurement} here once up.")
    ] = None,
    max_connections: Annotated[
        int, typer.Option(help="Open connections at most (also kept below the file limit).")
    ] = 1000,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds for a connection's TLS handshake and request headers.")
    ] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds for a request's body.")] = 30.0,
    pccs: Annotated[
        str | None,
        typer.Option(
            help="PCCS (or Intel PCS) URL: appraise SGX/TDX TCB levels with Intel's collateral."
        ),
    ] = None,
    pccs_timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="With --pccs: how long one fetch of a platform's collateral may take "
            "(an attestation waits for it).",
        ),
    ] = 10.0,
    amd_crl: Annotated[
        str | None,
        typer.Option(
            help="Folder of AMD KDS CRLs (vcek-Milan.crl from https://kdsintf.amd.com/vcek/v1/"
            "Milan/crl, vlek-Milan.crl, ... Genoa, Turin): SEV-SNP evidence whose ASK/ASVK "
            "or VCEK/VLEK they revoke is refused.",
        ),
    ] = None,
    no_amd_crl: Annotated[
        bool,
        typer.Option(
            "--no-amd-crl",
            help="Accept SEV-SNP evidence unchecked against AMD's CRLs (logged at start). "
            "Without this or --amd-crl, SEV-SNP evidence is refused.",
        ),
    ] = False,
    new_anchor: Annotated[
        bool,
        typer.Option(
            "--new-anchor",
            help="Make the audit anchor anew over a database that holds an SPM's state "
            "(a second SPM on a shared database); recorded in the audit log.",
        ),
    ] = False,
) -> None:
    """Serve the SPM over HTTPS; its TLS key is made and kept inside its TEE.

    Connections that stall (half-sent headers or bodies, silent sockets) are closed
    after the timeouts, and at most --max-connections are open at once. With --pccs,
    every SGX and TDX quote is appraised against Intel's collateral for its platform
    (TCB status, advisories, revoked keys); without it their TCB is unknown, which
    only a policy whose allow_unknown_tcb covers them accepts. SEV-SNP evidence is
    checked against AMD's CRLs in --amd-crl DIR (a stale or missing one is a refusal),
    or knowingly not (--no-amd-crl); with neither it is refused."""
    from secfl._internal.httpguard import Limits
    from secfl.spm._amd_crl import describe
    from secfl.spm._server import listen_sockets, open_spm, serve

    host, port = parse_listen(listen)
    if pccs is not None:
        from secfl.spm._collateral import pccs_url  # (only then: it loads httpx)

        pccs_url(pccs)  # before the data folder is touched
    if not 1 <= pccs_timeout <= 120:  # (NaN too)
        raise UsageError("--pccs-timeout: between 1 and 120 seconds")
    amd_crls = _amd_crls(amd_crl, no_amd_crl)
    limits = Limits(
        max_connections=max_connections, header_timeout=header_timeout, body_timeout=body_timeout
    )
    sockets = listen_sockets(host, port)  # a port in use: one line, before anything opens
    try:
        spm = open_spm(
            data, db_url=db, platform=platform, sim_dir=sim_dir, names=[host, *(name or [])],
            pccs_url=pccs, pccs_timeout=pccs_timeout, new_anchor=new_anchor,
            amd_crls=amd_crls,
        )  # fmt: skip
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    out.print(
        f"secfl SPM on {host}:{sockets[0].getsockname()[1]}, TLS key sha256 "
        f"{spm.identity.spki_sha256}, platform {spm.platform.name}",
        markup=False,
    )
    out.print(f"AMD CRLs: {describe(amd_crls)}", markup=False)
    try:
        serve(spm, host, port, ready_file=ready_file, limits=limits, sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
        spm.close()  # pending commits finished, the refusal budget's count written


def _amd_crls(folder: str | None, opt_out: bool) -> AmdCrls | None:
    """``--amd-crl DIR`` (an existing folder) or ``--no-amd-crl``, not both."""
    from pathlib import Path

    from secfl.spm._amd_crl import AmdCrls

    if folder is not None and opt_out:
        raise UsageError("--amd-crl, --no-amd-crl: give one, not both")
    if opt_out:
        return AmdCrls(None)
    if folder is None:
        return None
    path = Path(folder).absolute()
    if not path.is_dir():
        raise UsageError(f"--amd-crl: '{folder}' is not a folder")
    return AmdCrls(path)


@app.command("verify")
def verify_cmd(
    url: Annotated[str, typer.Argument(help="https://HOST:PORT of the SPM.")],
    expect_measurement: Annotated[
        list[str],
        typer.Option(
            help="A measurement the SPM may run (repeatable): HEX, or FIELD=HEX,... (a TDX "
            "SPM: mrtd=HEX,rtmr1=HEX,rtmr2=HEX)."
        ),
    ],
    sim_root: Annotated[
        str | None, typer.Option(help="Simulation root, for a simulated SPM.")
    ] = None,
    allow_debug: Annotated[bool, typer.Option(help="Accept a debug TEE.")] = False,
    pccs: Annotated[
        str | None, typer.Option(help="PCCS (or Intel PCS) URL: appraise an SGX/TDX SPM's TCB.")
    ] = None,
    min_tcb: Annotated[
        str, typer.Option(help="With --pccs: the lowest TCB status accepted.")
    ] = "UpToDate",
    amd_crl: Annotated[
        str | None,
        typer.Option(
            help="An SEV-SNP SPM: AMD's CRL of its kind and product (FILE, DER), or a folder "
            "of them as `spm serve --amd-crl` takes; without it, the ones the SPM serves."
        ),
    ] = None,
) -> None:
    """Attest the SPM and print the digest of its TLS key, to pin it. An SEV-SNP SPM's
    AMD chain is checked against AMD's CRL (--amd-crl, else the SPM's own, served beside
    its evidence: signed by AMD, so its source needs no trust); without one it is refused."""
    from secfl.spm._collateral import pccs_url
    from secfl.spm.client import SpmClient
    from secfl.tee._claims import TCB_ORDER
    from secfl.tee._pccs import PccsClient

    if pccs is None and min_tcb != "UpToDate":
        raise UsageError("--min-tcb: applies with --pccs (without it the TCB is not appraised)")
    if min_tcb not in TCB_ORDER[:-1]:
        raise UsageError(f"--min-tcb: '{min_tcb}' is not one of {', '.join(TCB_ORDER[:-1])}")
    fetcher = None if pccs is None else PccsClient(pccs_url(pccs))
    try:
        client, claims = SpmClient.verify(
            url,
            expect_measurement=expect_measurement,
            sim_root=read_optional(sim_root, "simulation root"),
            allow_debug=allow_debug,
            collateral=None if fetcher is None else fetcher.get_collateral,
            min_tcb=min_tcb,
            amd_crl=_crl_lookup(amd_crl),
        )
    finally:
        if fetcher is not None:
            fetcher.close()
    client.close()
    out.print(client.pin, markup=False)
    typer.echo(
        f"verified: {claims.kind} SPM, measurement {next(iter(claims.measurements.values()))}, "
        f"tcb {claims.tcb_status}{', SIMULATED' if claims.simulated else ''}",
        err=True,
    )


def _crl_lookup(path_text: str | None) -> CrlLookup | None:
    """``--amd-crl FILE|DIR`` (as ``secfl attest verify`` takes it)."""
    from pathlib import Path

    from secfl.tee._amd_crl import file_lookup, folder_lookup

    if path_text is None:
        return None
    path = Path(path_text)
    if not path.exists():
        raise UsageError(f"--amd-crl: '{path_text}' does not exist")
    return folder_lookup(path) if path.is_dir() else file_lookup(path)


@app.command("measurement")
def measurement_cmd() -> None:
    """Print the measurement a simulated SPM from this installation reports."""
    from secfl.spm._identity import code_measurement

    out.print(code_measurement(), markup=False)
