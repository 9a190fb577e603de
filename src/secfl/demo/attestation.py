"""The attestation demonstration behind ``secfl demo``.

It walks the trust core end to end: a simulated TEE measures and attests a
workload with a fresh nonce, a verifier accepts it only against the simulation
root, and every tampering is refused. With the real vendor evidence
(``SECFL_TESTVECTORS``) it also verifies Intel SGX/TDX quotes and AMD SEV-SNP
reports offline, with full TCB appraisal.

The evidence is found the same way from any working directory (:func:`find_vectors`):
the folder given, else ``$SECFL_TESTVECTORS``, else ``shared/testvectors`` beside this
source checkout; without it, the vendor steps are skipped and the demo says so.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from secfl.errors import DemoError, SecflError
from secfl.tee import _simulated as simulated
from secfl.tee._claims import Claims
from secfl.tee._measure import measure
from secfl.tee._verify import verify

__all__ = [
    "CHECKOUT_VECTORS",
    "VECTOR_FILES",
    "Step",
    "find_vectors",
    "run",
    "simulated_steps",
    "vectors_location",
    "vendor_steps",
]


#: Where a source checkout keeps the real vendor evidence: ``shared/testvectors`` beside
#: the repository (this file is ``<repository>/src/secfl/demo/attestation.py``).
CHECKOUT_VECTORS = Path(__file__).resolve().parents[3].parent / "shared" / "testvectors"

#: The files :func:`vendor_steps` reads, relative to the evidence folder.
VECTOR_FILES = (
    "intel/sgx_v3_quote.bin",
    "intel/sgx_v3_quote.collateral.json",
    "intel/tdx_v4_quote.bin",
    "intel/tdx_v4_quote.collateral.json",
    "intel/tdx_v5_quote_outdated.bin",
    "intel/tdx_v5_quote_outdated.collateral.json",
    "intel/sgx_v3_occlum_quote.bin",
    "amd/snp_milan_report.bin",
    "amd/snp_milan_vcek.der",
    "amd/snp_milan_vcek_b.der",
    "amd/ask_ark_milan.pem",
)


def vectors_location() -> Path:
    """Where the evidence is looked for when no folder is given: ``$SECFL_TESTVECTORS``
    (relative to the working directory, like any path a user sets), else
    :data:`CHECKOUT_VECTORS`; never a path relative to the working directory itself."""
    env = os.environ.get("SECFL_TESTVECTORS")
    return Path(os.path.realpath(Path(env).expanduser())) if env else CHECKOUT_VECTORS


def _missing(folder: Path) -> list[str]:
    return [name for name in VECTOR_FILES if not (folder / name).is_file()]


def find_vectors(folder: str | Path | None = None) -> Path | None:
    """The folder of real vendor evidence, the same from any working directory.

    ``folder`` when given (a folder without the evidence is a :class:`DemoError`: it was
    asked for); otherwise :func:`vectors_location` if it holds the evidence, else None
    and the vendor steps are skipped."""
    if folder is None:
        where = vectors_location()
        return None if _missing(where) else where
    path = Path(os.path.realpath(Path(folder).expanduser()))
    missing = _missing(path)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DemoError(
            f"vectors: {path} has no {missing[0]}{more}; give --vectors the folder that "
            "holds intel/ and amd/ vendor evidence, or leave it out to skip the vendor steps"
        )
    return path


@dataclass(frozen=True)
class Step:
    """One verification in the demo and whether it went as a verifier must."""

    title: str
    expect_accept: bool
    accepted: bool
    detail: str

    @property
    def as_expected(self) -> bool:
        return self.expect_accept == self.accepted


def _attempt(title: str, expect_accept: bool, check: Callable[[], Claims]) -> Step:
    try:
        claims = check()
    except SecflError as exc:
        return Step(title, expect_accept, False, str(exc))
    mr = next(iter(claims.measurements.values()))
    detail = (
        f"{claims.kind} v{claims.quote_version}, tcb {claims.tcb_status}, "
        f"measurement {str(mr)[:16]}…"
    )
    if claims.advisory_ids:
        detail += f", advisories {', '.join(claims.advisory_ids)}"
    return Step(title, expect_accept, True, detail)


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def simulated_steps(workdir: Path) -> Iterator[Step]:
    """Measure a workload, attest it in the simulated TEE, and try to cheat."""
    sim_dir, other_dir, code = workdir / "sim", workdir / "other-sim", workdir / "workload"
    simulated.init(sim_dir, force=True)
    simulated.init(other_dir, force=True)
    code.mkdir(parents=True, exist_ok=True)
    (code / "train.py").write_text("print('training inside the TEE')\n")
    command = "python train.py --rounds 10"
    measurement = measure([code], command)

    nonce = os.urandom(32)
    report_data = hashlib.sha512(nonce + b"tls-key-digest").digest()
    platform = simulated.SimulatedPlatform(sim_dir, measurement=measurement)
    evidence = platform.get_evidence(report_data)
    root = platform.root_pem
    other_root = (other_dir / simulated.ROOT_CERT).read_bytes()

    def genuine() -> Claims:
        claims = verify(evidence, sim_root=root)
        if claims.measurements["measurement"] != measurement:
            raise SecflError("measurement: not the workload's")
        if claims.report_data_bytes != report_data:
            raise SecflError("report_data: does not bind the nonce")
        return claims

    yield _attempt("simulated TEE, genuine workload", True, genuine)
    yield _attempt(
        "simulated evidence, verifier not given the simulation root",
        False,
        lambda: verify(evidence),
    )
    yield _attempt(
        "simulated evidence, another simulation's root",
        False,
        lambda: verify(evidence, sim_root=other_root),
    )
    yield _attempt(
        "simulated evidence, one measurement byte changed",
        False,
        lambda: verify(_flip(evidence.quote, 16), sim_root=root),
    )
    debug = simulated.SimulatedPlatform(sim_dir, measurement=measurement, debug=True)
    yield _attempt(
        "simulated debug TEE",
        False,
        lambda: verify(debug.get_evidence(report_data), sim_root=root),
    )


def vendor_steps(vectors: Path) -> Iterator[Step]:
    """Verify real Intel and AMD evidence offline, and refuse its modifications."""
    from secfl.tee._intel import IntelCollateral

    intel, amd = vectors / "intel", vectors / "amd"

    def quote(name: str) -> bytes:
        return (intel / name).read_bytes()

    def coll(name: str) -> IntelCollateral:
        return IntelCollateral.from_file(intel / name)

    from datetime import UTC, datetime

    jul25, mar26, jun24 = (
        datetime(2025, 7, 1, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2024, 6, 1, tzinfo=UTC),
    )
    sgx = quote("sgx_v3_quote.bin")
    yield _attempt(
        "Intel SGX quote v3 + collateral",
        True,
        lambda: verify(sgx, at=jul25, collateral=coll("sgx_v3_quote.collateral.json")),
    )
    yield _attempt(
        "Intel TDX quote v4 + collateral",
        True,
        lambda: verify(
            quote("tdx_v4_quote.bin"), at=jul25, collateral=coll("tdx_v4_quote.collateral.json")
        ),
    )
    yield _attempt(
        "Intel TDX quote v5, outdated platform",
        False,
        lambda: verify(
            quote("tdx_v5_quote_outdated.bin"),
            at=mar26,
            collateral=coll("tdx_v5_quote_outdated.collateral.json"),
        ),
    )
    yield _attempt(
        "Intel SGX quote, one byte of MRENCLAVE changed",
        False,
        lambda: verify(_flip(sgx, 48 + 64), at=jul25),
    )
    yield _attempt(
        "Intel SGX debug enclave (Occlum)",
        False,
        lambda: verify(quote("sgx_v3_occlum_quote.bin"), at=jun24),
    )
    report = (amd / "snp_milan_report.bin").read_bytes()
    vcek = (amd / "snp_milan_vcek.der").read_bytes()
    chain = (amd / "ask_ark_milan.pem").read_bytes()
    yield _attempt(
        "AMD SEV-SNP report (Milan) + VCEK + ASK/ARK",
        True,
        lambda: verify(report, at=jun24, vcek=vcek, chain=chain),
    )
    yield _attempt(
        "AMD SEV-SNP report, another chip's VCEK",
        False,
        lambda: verify(
            report, at=jun24, vcek=(amd / "snp_milan_vcek_b.der").read_bytes(), chain=chain
        ),
    )
    yield _attempt(
        "AMD SEV-SNP report, verified after its VCEK expired",
        False,
        lambda: verify(report, at=datetime(2031, 1, 1, tzinfo=UTC), vcek=vcek, chain=chain),
    )


def run(workdir: Path, vectors: Path | None) -> list[Step]:
    """Every step of the demo, in order."""
    steps = list(simulated_steps(workdir))
    if vectors is not None:
        steps.extend(vendor_steps(vectors))
    return steps
