"""``secfl bench rounds``'s result file and the overhead coefficients computed from two.

A result file (``secfl-bench-rounds/1``, JSON) records one machine's run: the host
(CPU count, Python, the TEE it runs in, if any), the workload (model size,
collaborators, rounds, local epochs, samples) and, for each mode run (``secure``,
``insecure``), the round times and the medians of whatever per-phase timings the
aggregator recorded. A file from one machine is the baseline of a run on another.

The coefficients are those of Casella et al. 2025 ("A performance analysis of
VM-based Trusted Execution Environments for Confidential Federated Learning",
arXiv:2501.11558): an overhead ``O_X = C_X * T_baseline``, so

    C_X = T_with_X / T_baseline - 1

with ``T`` the time per round over rounds 2..R, from round 1's commit to round R's
(round 1 carries start-up effects; the paper's ``T`` is a whole training's time, and
a round's own ``duration_s`` leaves out work the aggregator overlaps with the next):

- ``C_TLS``: secure transport against plain, on one machine. secfl's secure mode
  is more than TLS (mutual TLS with SPM-issued certificates, signed global
  models, a sealed checkpoint and an SPM counter increment every round), so this is
  the cost of all of it: ``T_secure / T_insecure - 1``.
- ``C_TEE``: the same secure workload inside a TEE against a machine without one:
  ``T_secure(this run) / T_secure(baseline) - 1``. The two machines must otherwise
  be alike (cores, clock): the coefficient is the ratio of two machines.

A baseline file is untrusted input: it is read bounded and validated field by field
(:func:`load_result`); a bad one is refused in one line naming the field.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secfl.errors import UsageError

__all__ = [
    "FORMAT",
    "MAX_RESULT_BYTES",
    "PAPER",
    "BenchResult",
    "Coefficient",
    "Host",
    "ModeResult",
    "Workload",
    "check_same_workload",
    "coefficients",
    "detect_tee",
    "load_result",
    "phase_medians",
]

FORMAT = "secfl-bench-rounds/1"
#: A result file is small (a few KiB); anything much larger is not one.
MAX_RESULT_BYTES = 1 << 20
Mode = Literal["secure", "insecure"]
Seconds = Annotated[float, Field(ge=0.0, le=1e7, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Text = Annotated[str, Field(max_length=128)]

#: Casella et al. 2025, Table/abstract: overhead coefficients over 100 rounds (their
#: figures, for comparison): model -> (C_TDX, C_TLS).
PAPER = {"ResNet-18": (0.126, 0.079), "MobileNetV3-Small": (0.245, 0.065)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Host(_Strict):
    machine: Text
    python: Text
    cpus: int = Field(ge=1, le=1 << 20)
    #: The TEE this ran in: none, tdx, snp or sgx (see :func:`detect_tee`).
    tee: Literal["none", "tdx", "snp", "sgx"]


class Workload(_Strict):
    model_params: int = Field(ge=1, le=10**11)
    clients: int = Field(ge=1, le=10_000)
    rounds: int = Field(ge=2, le=100_000)
    epochs: int = Field(ge=1, le=10_000)
    samples: int = Field(ge=1, le=10**9)


class ModeResult(_Strict):
    #: Every round's ``duration_s`` (round 1 first).
    rounds_s: list[Seconds] = Field(min_length=2, max_length=100_000)
    #: The median of rounds 2..R's ``duration_s`` (each round's own time).
    median_s: Annotated[float, Field(gt=0.0, le=1e7, allow_inf_nan=False)]
    #: Seconds per round from round 1's commit to round R's, seen from outside (what a
    #: training takes per round, overlapped work included): the ``T`` of the coefficients.
    cycle_s: Annotated[float, Field(gt=0.0, le=1e7, allow_inf_nan=False)]
    #: Medians of the aggregator's per-phase timings, milliseconds (what it recorded).
    phases_ms: dict[Name, Seconds] = Field(default_factory=dict, max_length=64)
    #: From starting the aggregator to its exit (one-off costs included).
    wall_s: Seconds


class BenchResult(_Strict):
    format: Literal["secfl-bench-rounds/1"]
    secfl: Text
    created: Text
    host: Host
    workload: Workload
    runs: dict[Mode, ModeResult] = Field(min_length=1, max_length=2)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


class Coefficient(_Strict):
    name: str
    value: float
    numerator: str
    denominator: str


def detect_tee() -> Literal["none", "tdx", "snp", "sgx"]:
    """The TEE this process runs in, from the guest devices Linux exposes (a label for
    the result; the coefficients' meaning depends on it)."""
    if os.path.exists("/dev/tdx_guest"):
        return "tdx"
    if os.path.exists("/dev/sev-guest"):
        return "snp"
    if os.path.exists("/dev/attestation/quote") or os.path.exists("/dev/sgx_enclave"):
        return "sgx"
    return "none"


def phase_medians(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Medians (ms) of the per-phase timings in the metrics entries of rounds 2..R, read
    defensively: a ``phases_ms`` mapping of numbers (milliseconds) or ``phases``
    (seconds), and top-level numeric
    ``*_s``/``*_ms`` fields other than the round's own duration. Whatever is missing or
    not a finite number is skipped."""
    found: dict[str, list[float]] = {}

    def add(name: str, value: Any, scale: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        if not math.isfinite(value) or value < 0 or len(name) > 64:
            return
        found.setdefault(name, []).append(float(value) * scale)

    for entry in entries[1:] or entries:
        for field, scale in (("phases_ms", 1.0), ("phases", 1e3)):
            phases = entry.get(field)
            if isinstance(phases, dict):
                for key, value in phases.items():
                    name = str(key)
                    if name.endswith("_ms"):
                        add(name.removesuffix("_ms"), value, 1.0)
                    else:
                        add(name.removesuffix("_s"), value, scale)
        for key, value in entry.items():
            if key in ("duration_s", "deadline_s"):
                continue
            if key.endswith("_ms"):
                add(key.removesuffix("_ms"), value, 1.0)
            elif key.endswith("_s"):
                add(key.removesuffix("_s"), value, 1e3)
    safe = {k: v for k, v in found.items() if all(c.isalnum() or c in "_.-" for c in k)}
    return {k: statistics.median(v) for k, v in sorted(safe.items())[:64]}


def load_result(path: Path, what: str = "baseline") -> BenchResult:
    """A result file, validated; :class:`UsageError` in one line naming what is wrong."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_RESULT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_RESULT_BYTES:
        raise UsageError(f"{what} {path}: larger than {MAX_RESULT_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise UsageError(f"{what} {path}: not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f"{what} {path}: field 'format': not {FORMAT!r}")
    try:
        return BenchResult.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise UsageError(f"{what} {path}: field '{where}': {first['msg']}") from None


def check_same_workload(mine: Workload, theirs: Workload) -> None:
    """Refuse a baseline of another workload (model, collaborators, epochs, samples; the
    number of rounds may differ): its ratio would measure the workload, not the TEE."""
    for field in ("model_params", "clients", "epochs", "samples"):
        if getattr(mine, field) != getattr(theirs, field):
            raise UsageError(
                f"baseline: field 'workload.{field}' is {getattr(theirs, field)}, this "
                f"run's is {getattr(mine, field)}: run the same workload on both machines"
            )


def _ratio(name: str, top: float, bottom: float, num: str, den: str) -> Coefficient:
    return Coefficient(name=name, value=top / bottom - 1.0, numerator=num, denominator=den)


def coefficients(current: BenchResult, baseline: BenchResult | None) -> list[Coefficient]:
    """The coefficients that the two results allow (see the module's docstring).

    ``C_TLS`` from this run when it has both modes, else this run's secure against the
    baseline's insecure (a ``--insecure`` run on this machine). ``C_TEE`` from the two
    secure runs, when the baseline has one. A baseline of another workload is refused:
    its ratio would measure the workload, not the TEE."""
    out: list[Coefficient] = []
    runs, base = current.runs, (baseline.runs if baseline is not None else {})
    if baseline is not None:
        check_same_workload(current.workload, baseline.workload)
    if "secure" in runs and "insecure" in runs:
        out.append(_ratio("C_TLS", runs["secure"].cycle_s, runs["insecure"].cycle_s,
                          "secure (this run)", "insecure (this run)"))  # fmt: skip
    elif "secure" in runs and "insecure" in base:
        out.append(_ratio("C_TLS", runs["secure"].cycle_s, base["insecure"].cycle_s,
                          "secure (this run)", "insecure (baseline)"))  # fmt: skip
    elif "insecure" in runs and "secure" in base:
        out.append(_ratio("C_TLS", base["secure"].cycle_s, runs["insecure"].cycle_s,
                          "secure (baseline)", "insecure (this run)"))  # fmt: skip
    if "secure" in runs and "secure" in base:
        assert baseline is not None
        out.append(_ratio("C_TEE", runs["secure"].cycle_s, base["secure"].cycle_s,
                          f"secure, TEE {current.host.tee} (this run)",
                          f"secure, TEE {baseline.host.tee} (baseline)"))  # fmt: skip
    return [c for c in out if math.isfinite(c.value)]
