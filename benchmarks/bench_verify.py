"""Verifications per second for each kind of evidence, with and without collateral.

Run: ``.venv/bin/python benchmarks/bench_verify.py [--seconds 1.0]``. It prints
figures; it asserts nothing. Real vendor evidence comes from SECFL_TESTVECTORS
(default ../shared/testvectors); without it only the simulated TEE is measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from secfl.tee import _simulated as simulated
from secfl.tee._verify import verify


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Calls per second of ``fn`` over at least ``seconds`` (after one warm-up call)."""
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed, n


def cases(vectors: Path | None, sim_dir: Path) -> list[tuple[str, str, Callable[[], object]]]:
    sim = simulated.SimulatedPlatform(sim_dir, measurement=bytes(48))
    quote, root = sim.get_evidence(bytes(64)).quote, sim.root_pem
    out: list[tuple[str, str, Callable[[], object]]] = [
        ("simulated", "simulation root", lambda: verify(quote, sim_root=root)),
    ]
    if vectors is None:
        return out
    from secfl.tee._intel import IntelCollateral

    jul25, jun24 = datetime(2025, 7, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)
    for kind, name in (("sgx", "sgx_v3_quote"), ("tdx", "tdx_v4_quote")):
        raw = (vectors / "intel" / f"{name}.bin").read_bytes()
        coll = IntelCollateral.from_file(vectors / "intel" / f"{name}.collateral.json")
        out.append((kind, "signature chain only", lambda raw=raw: verify(raw, at=jul25)))
        out.append(
            (
                kind,
                "with collateral (dcap-qvl)",
                lambda raw=raw, c=coll: verify(raw, at=jul25, collateral=c),
            )
        )
    amd = vectors / "amd"
    report = (amd / "snp_milan_report.bin").read_bytes()
    vcek = (amd / "snp_milan_vcek.der").read_bytes()
    chain = (amd / "ask_ark_milan.pem").read_bytes()
    out.append(
        ("snp", "VCEK + ASK/ARK chain", lambda: verify(report, at=jun24, vcek=vcek, chain=chain))
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case")
    parser.add_argument(
        "--vectors", default=os.environ.get("SECFL_TESTVECTORS", "../shared/testvectors")
    )
    args = parser.parse_args()
    vectors = Path(args.vectors) if Path(args.vectors).is_dir() else None

    print(
        f"secfl verification benchmark — {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, one thread"
    )
    if vectors is None:
        print(f"(no vendor evidence at {args.vectors}: simulated only)")
    print(f"{'kind':<10} {'mode':<28} {'verifications/s':>16} {'ms each':>9} {'n':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        simulated.init(tmp)
        for kind, mode, fn in cases(vectors, Path(tmp)):
            per_s, n = rate(fn, args.seconds)
            print(f"{kind:<10} {mode:<28} {per_s:>16.1f} {1000 / per_s:>9.2f} {n:>6}")


if __name__ == "__main__":
    main()
