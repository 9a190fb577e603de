"""Whether an attested SPM is the one a client expects: its code and its TCB.

:func:`expected_identity` matches the SPM's claims against the measurements the
client was told to expect; :func:`appraise` appraises Intel evidence with its
collateral against a minimum TCB status. :meth:`SpmClient.verify
<secfl.spm.client.SpmClient.verify>` runs both on first contact, before it trusts the
key the evidence binds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from secfl.errors import VerificationError
from secfl.tee._claims import TCB_ORDER, Claims, TcbStatus
from secfl.tee._evidence import Evidence
from secfl.tee._intel_collateral import IntelCollateral
from secfl.tee._verify import verify

__all__ = ["appraise", "expected_identity"]


def appraise(
    evidence: Evidence,
    claims: Claims,
    collateral: Callable[[bytes], IntelCollateral],
    min_tcb: TcbStatus,
    at: datetime | None = None,
    allow_debug: bool = False,
) -> Claims:
    """``claims`` of Intel ``evidence`` (already verified) appraised with its collateral,
    or :class:`VerificationError` when its TCB is below ``min_tcb``."""
    if claims.kind not in ("sgx", "tdx"):
        raise VerificationError(
            f"pccs: the SPM's evidence is {claims.kind}; a PCCS appraises SGX and TDX only"
        )
    claims = verify(evidence, at=at, collateral=collateral(evidence.quote), allow_debug=allow_debug)
    status = claims.tcb_status
    if status == "unknown" or TCB_ORDER.index(status) > TCB_ORDER.index(min_tcb):
        raise VerificationError(f"tcb: the SPM's TCB status is {status}, below {min_tcb}")
    return claims


def expected_identity(claims: Claims, expected: Sequence[str]) -> None:
    """Refuse unless ``claims`` match one of ``expected``: each the kind's primary
    measurement (HEX), or claim fields (``FIELD=HEX,...``) that name code as a policy's
    identity must (:func:`~secfl.policy._model.pins_code`). A TD is named by its mrtd,
    rtmr1 and rtmr2 together: an SPM expected by its MRTD alone (the firmware) was any
    SPM booted on that firmware (found by a review)."""
    from secfl.policy._model import CODE_ALL, ZEROS_MEAN, code_fields_text, pins_code
    from secfl.spm._evidence_checks import snp_guest_refusal

    primary = str(next(iter(claims.measurements.values()), "")).lower()
    guest = None  # why a matching SEV-SNP expectation still refused
    for text in expected:
        text = text.strip().lower()
        pins: dict[str, str] = {}
        if "=" not in text:
            if claims.kind in CODE_ALL or text != primary:
                continue
        else:
            pins = dict(part.partition("=")[::2] for part in text.split(","))
            if not pins_code(claims.kind, pins) or not all(  # type: ignore[arg-type]
                str(claims.measurements.get(k, "")).lower() == v for k, v in pins.items()
            ):
                continue
        guest = snp_guest_refusal(pins, claims.measurements) if claims.kind == "snp" else None
        if guest is None:
            return
    if guest is not None:
        raise VerificationError(f"measurement: {guest} in the expected measurement")
    zeros = [  # expectations that name code only by zeros
        (f"{k}={v[:8]}…", ZEROS_MEAN[k])
        for pins in (
            dict(p.partition("=")[::2] for p in t.strip().lower().split(",")) for t in expected
        )
        if not pins_code(claims.kind, pins)  # type: ignore[arg-type]
        for k, v in pins.items()
        if k in ZEROS_MEAN and v and not v.strip("0")
    ]
    if zeros:
        shown, how = zeros[0]
        raise VerificationError(
            f"measurement: the expected {shown} is all zeros, which every {claims.kind} SPM "
            f"{how} reports whatever it runs: expect {code_fields_text(claims.kind)}"
        )
    if claims.kind in CODE_ALL and not any("=" in t for t in expected):
        raise VerificationError(
            f"measurement: a {claims.kind} SPM is named by {code_fields_text(claims.kind)} "
            "together: expect FIELD=HEX,... (its first measurement covers only the firmware)"
        )
    shown = ", ".join(t.strip().lower() for t in expected)
    raise VerificationError(
        f"measurement: the SPM runs {claims.kind} measurement {primary}, which is not the "
        f"expected one ({shown}): it runs other code than expected (another secfl release or "
        "install, or another SPM); compare with what its operator published (`secfl spm "
        "measurement` on its host) and trust it only once they match"
    )
