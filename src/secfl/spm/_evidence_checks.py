"""What the SPM checks of a workload's evidence against its policy: the platform,
its TCB level (with Intel collateral when the SPM has a PCCS; SEV-SNP's against the
policy's ``min_snp_tcb``), debug mode, and the code measured; and what a session
remembers of it, for later versions and revocations.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from secfl.errors import CollateralFault, FetchError, Refused, SecflError, VerificationError
from secfl.policy._model import Policy, code_fields_text, pins_code
from secfl.spm._amd_crl import NOT_CONFIGURED, UNCHECKED_REFUSED, AmdCrls
from secfl.spm._revocation import platform_id, platform_ids
from secfl.tee._claims import TCB_ORDER, Claims
from secfl.tee._evidence import Evidence
from secfl.tee._intel_collateral import evaluation_number
from secfl.tee._verify import verify

if TYPE_CHECKING:  # (the fetching is loaded by an SPM started with --pccs only)
    from secfl.spm._collateral import CollateralSource

__all__ = [
    "check_evidence",
    "check_measurements",
    "check_named",
    "claims_identity",
    "platform_refusal",
    "snp_guest_refusal",
]


def check_evidence(
    policy: Policy,
    evidence: bytes,
    now: datetime,
    collateral: CollateralSource | None = None,
    amd_crls: AmdCrls | None = None,
) -> Claims:
    """The claims of genuine ``evidence`` of a platform, TCB level and debug mode the
    policy accepts, or :class:`Refused` naming the check that failed.

    With ``collateral`` (the SPM started with ``--pccs``), an SGX or TDX quote whose
    signature chain verified is appraised against its platform's collateral. If none
    can be had, the TCB stays ``unknown``: accepted only where the policy allows it for
    that kind. An SEV-SNP report's ``reported_tcb`` and ``launch_tcb`` are held against
    ``min_snp_tcb``, and its ASK/ASVK and VCEK/VLEK against AMD's CRL in ``amd_crls``
    (``--amd-crl DIR``); with no ``amd_crls`` (neither ``--amd-crl`` nor
    ``--no-amd-crl``) it is refused, and unchecked (``--no-amd-crl``) unless the policy
    allows it (``allow_unchecked_amd_crl``)."""
    platforms = policy.platforms
    try:
        ev = Evidence.parse(evidence)
        if ev.kind not in platforms.accept:
            raise Refused(f"platform: {ev.kind} evidence is not accepted by this policy")
        root = platforms.simulation_root.encode() if platforms.simulation_root else None
        crl, crl_floor = None, None
        if ev.kind == "snp":
            if amd_crls is None:
                raise Refused(NOT_CONFIGURED)
            if amd_crls.folder is None and not platforms.allow_unchecked_amd_crl:
                raise Refused(UNCHECKED_REFUSED)
            crl, crl_floor = amd_crls.lookup, amd_crls.floor
        claims = verify(
            ev, at=now, sim_root=root, allow_debug=platforms.allow_debug, amd_crl=crl,
            amd_crl_floor=crl_floor,
        )  # fmt: skip
        if collateral is not None and claims.kind in ("sgx", "tdx") and not claims.debug:
            claims = _appraised(ev, claims, now, collateral, policy)
    except SecflError as exc:
        if isinstance(exc, Refused):
            raise
        raise Refused(f"evidence: {exc}") from None
    check_named(policy, claims)
    floor = platforms.min_tcb_evaluation_data_number
    if floor is not None and claims.kind in ("sgx", "tdx") and claims.tcb_status == "unknown":
        raise Refused(  # the policy refuses this with allow_unknown_tcb; debug quotes too
            f"tcb: the policy requires Intel TCB evaluation {floor} or later, and this "
            f"{claims.kind} quote was not appraised ({_unappraised(claims, collateral)})"
        )
    if claims.kind == "snp":  # no vendor appraisal: the policy's floor (min_snp_tcb)
        why = platforms.snp_tcb_refusal(claims.platform)
        if why is not None:
            raise Refused(f"tcb: {why}")
    elif claims.kind != "simulated":
        if claims.tcb_status == "unknown":
            if not platforms.unknown_tcb_allowed(claims.kind):
                raise Refused(
                    f"tcb: the TCB status is unknown ({_unappraised(claims, collateral)}) and "
                    "the policy requires one"
                )
        elif TCB_ORDER.index(claims.tcb_status) > TCB_ORDER.index(platforms.min_tcb_status):
            raise Refused(
                f"tcb: status {claims.tcb_status} is below the policy's minimum "
                f"{platforms.min_tcb_status}"
            )
    return claims


def _unappraised(claims: Claims, collateral: CollateralSource | None) -> str:
    """Why an Intel quote's TCB is ``unknown``, for a refusal: it is of a debug TEE, which
    no appraisal rates, or the SPM has no PCCS, or its PCCS gave nothing. (Each said
    "start the SPM with --pccs URL", to an SPM started with it: found by a review.)"""
    if claims.debug:
        return "a debug TEE is not appraised: Intel's collateral rates none"
    if collateral is None:
        return "no collateral: start the SPM with --pccs URL"
    return f"the SPM's PCCS {collateral.url} gave no collateral"


def check_named(policy: Policy, claims: Claims) -> None:
    """Under ``require_platform_id``, refuse evidence that names no machine."""
    if policy.platforms.require_platform_id and not platform_ids(claims.platform):
        raise Refused(
            f"platform: this {claims.kind} evidence names no machine (a masked or VLEK-signed "
            "chip ID), and the policy requires one (require_platform_id) so that the board "
            "can revoke it"
        )


def _appraised(
    ev: Evidence, claims: Claims, now: datetime, collateral: CollateralSource, policy: Policy
) -> Claims:
    """``claims`` of a verified Intel quote, appraised with its platform's collateral;
    unchanged (TCB ``unknown``) when there is none and the policy allows that."""
    platforms = policy.platforms
    try:
        fetched = collateral.get(ev.quote)
    except FetchError as exc:
        if platforms.unknown_tcb_allowed(claims.kind):
            return claims
        raise Refused(
            f"collateral: the SPM has no collateral to appraise this {claims.kind} TCB "
            f"({exc}); the SPM's PCCS must answer"
        ) from None
    try:
        appraised = verify(ev, at=now, collateral=fetched, allow_debug=platforms.allow_debug)
    except (VerificationError, ValueError) as exc:  # ValueError: a defect, refused all the same
        if str(exc).startswith("tcb:"):  # dcap-qvl matches TCB levels after it has
            collateral.verified(ev.quote, fetched)  # checked the collateral's signatures
        else:
            collateral.rejected(
                ev.quote, fetched, str(exc), copy_fault=isinstance(exc, CollateralFault)
            )
        if isinstance(exc, VerificationError):
            raise
        raise VerificationError(f"collateral: {type(exc).__name__}: {exc}") from None
    collateral.verified(ev.quote, fetched)
    floor = platforms.min_tcb_evaluation_data_number
    used = min(evaluation_number(fetched.tcb_info), evaluation_number(fetched.qe_identity))
    if floor is not None and used < floor:
        collateral.rejected(ev.quote)  # ask the PCCS again soon
        raise Refused(
            f"tcb: the collateral is of TCB evaluation {used}, older than the policy's "
            f"minimum {floor} (min_tcb_evaluation_data_number): the SPM's PCCS must serve "
            "Intel's current collateral"
        )
    # the evaluation the appraisal used, for the session to remember
    return appraised.model_copy(
        update={"platform": {**appraised.platform, "tcb_evaluation": str(used)}}
    )


#: SEV-SNP guest policy bit 18: a migration agent (chosen at launch, by the host) may
#: export the guest's memory. Not part of the launch measurement.
_SNP_MIGRATE_MA = 1 << 18


def snp_guest_refusal(pins: Mapping[str, Any], measurements: Mapping[str, Any]) -> str | None:
    """What the launch measurement of an SEV-SNP guest does not cover, and the host
    chooses: the VMPL the report was asked at (software at a more privileged VMPL, a
    paravisor the host supplied, sees the guest) and a migration agent. Why ``pins``
    (an identity) does not accept them, or None: accepted only where it pins them
    (``vmpl``, ``policy``): found by a review."""
    vmpl = measurements.get("vmpl")
    if "vmpl" not in pins and vmpl != 0:
        return (
            f"the SEV-SNP report was asked for at VMPL {vmpl}, not 0: software at a more "
            "privileged level sees this guest; pin vmpl to accept it"
        )
    policy = measurements.get("policy")
    if "policy" not in pins and (not isinstance(policy, int) or policy & _SNP_MIGRATE_MA):
        return (
            "the SEV-SNP guest policy allows a migration agent (MIGRATE_MA), which can export "
            "the guest's memory; pin policy to accept it"
        )
    return None


def check_measurements(
    policy: Policy, service_name: str, kind: Any, measurements: dict[str, Any]
) -> None:
    """Refuse unless one of the service's identities for ``kind`` matches."""
    service = policy.service(service_name)
    assert service is not None
    guest = None  # why a matching SEV-SNP identity still refused (another may accept)
    for identity in service.identities(kind):
        if not pins_code(kind, identity):
            continue  # in a version stored before that rule: it would accept any code
        if all(
            str(measurements.get(k, "")).lower() == str(v).lower()
            if isinstance(v, str)
            else measurements.get(k) == v
            for k, v in identity.items()
        ):
            guest = snp_guest_refusal(identity, measurements) if kind == "snp" else None
            if guest is None:
                return
    if guest is not None:
        raise Refused(f"evidence: {guest} in the policy")
    mr = next(iter(measurements.values()), "")
    identities = service.identities(kind)
    if identities and not any(pins_code(kind, i) for i in identities):
        raise Refused(
            f"measurement: no {kind} identity of service '{service_name}' in policy "
            f"'{policy.name}' version {policy.version} names code (each must pin "
            f"{code_fields_text(kind)}): the board approves a version that does"
        )
    count = len(identities)
    pins = f"{count} {kind} identit{'y' if count == 1 else 'ies'}"
    raise Refused(
        f"measurement: {kind} measurement {mr} is not accepted for service '{service_name}' "
        f"of policy '{policy.name}' version {policy.version} (it pins {pins}): the "
        "program, its command line or its code differ from what the policy pins"
    )


def claims_identity(claims: Claims) -> dict[str, Any]:
    """What a session remembers of its attestation, to check it against later policy
    versions and revocations: kind, measurements, the platform's IDs (the first shown)."""
    identity: dict[str, Any] = {
        "kind": claims.kind,
        "measurements": dict(claims.measurements),
        "platform": platform_id(claims.platform),
        "platforms": platform_ids(claims.platform),
        # what the platform rules weighed, so that a version that tightens them ends
        # the sessions it would refuse now (found by a review)
        "debug": claims.debug,
        "tcb_status": claims.tcb_status,
    }
    if "tcb_evaluation" in claims.platform:
        identity["tcb_evaluation"] = int(claims.platform["tcb_evaluation"])
    if claims.kind == "snp":  # what min_snp_tcb weighs; allow_unchecked_amd_crl
        identity["snp_tcb"] = {
            k: claims.platform.get(k, "") for k in ("product", "reported_tcb", "launch_tcb")
        }
        if claims.platform.get("amd_crl") == "unchecked":  # (--no-amd-crl)
            identity["amd_crl_unchecked"] = True
    return identity


def platform_refusal(policy: Policy, identity: dict[str, Any]) -> str | None:
    """Why ``policy``'s platform rules refuse what a session was attested as (the rules
    :func:`check_evidence` applies, on what the session remembers), or None. Sessions
    attested before their identity held these (no ``tcb_status``) are not judged here."""
    if "tcb_status" not in identity:
        return None
    platforms, kind = policy.platforms, identity["kind"]
    if identity.get("debug") and not platforms.allow_debug:
        return "evidence from a debug TEE is no longer accepted"
    if platforms.require_platform_id and not identity.get("platforms"):
        return "evidence that names no machine is no longer accepted (require_platform_id)"
    if kind == "simulated":
        return None
    status = identity["tcb_status"]
    floor = platforms.min_tcb_evaluation_data_number
    if floor is not None and kind in ("sgx", "tdx"):
        used = identity.get("tcb_evaluation")
        if not isinstance(used, int) or used < floor:
            return f"the policy now requires Intel TCB evaluation {floor} or later"
    if kind == "snp":
        if identity.get("amd_crl_unchecked") and not platforms.allow_unchecked_amd_crl:
            return "SEV-SNP evidence unchecked against AMD's CRLs is no longer accepted"
        return platforms.snp_tcb_refusal(identity.get("snp_tcb") or {})
    if status == "unknown":
        if platforms.unknown_tcb_allowed(kind):
            return None
        return "an unknown TCB is no longer accepted"
    if status not in TCB_ORDER or TCB_ORDER.index(status) > TCB_ORDER.index(
        platforms.min_tcb_status
    ):
        return f"TCB status {status} is below the policy's minimum {platforms.min_tcb_status}"
    return None
