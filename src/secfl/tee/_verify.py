"""``verify``: evidence in, :class:`Claims` out, or a :class:`VerificationError`.

Verification is offline: the time, the collateral and the certificates are
passed in. Nothing here reaches the network (fetchers live in ``pccs`` and ``kds``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from secfl.errors import VerificationError
from secfl.tee._amd_crl import CrlFloor, CrlLookup
from secfl.tee._claims import Claims
from secfl.tee._evidence import Evidence, KindOrAuto

__all__ = [
    "verify",
]


def verify(
    evidence: Evidence | bytes,
    *,
    at: datetime | None = None,
    kind: KindOrAuto = "auto",
    collateral: object | None = None,
    vcek: bytes | None = None,
    chain: bytes | None = None,
    sim_root: bytes | None = None,
    allow_debug: bool = False,
    amd_crl: CrlLookup | None = None,
    amd_crl_floor: CrlFloor | None = None,
) -> Claims:
    """Verify ``evidence`` at time ``at`` (default: now, UTC).

    - Intel (sgx, tdx): ``collateral`` (an :class:`~secfl.tee._intel.IntelCollateral`,
      its JSON text or dict) gives a full TCB appraisal; without it only the
      signature chain is checked and ``tcb_status`` is ``unknown``.
    - AMD (snp): ``vcek`` (the VCEK or VLEK, DER or PEM) and ``chain`` (ASK then ARK,
      PEM) unless the evidence carries a configfs-tsm certificate table; ``amd_crl``
      gives AMD's CRLs (:mod:`secfl.tee._amd_crl`), without which the claims say
      ``amd_crl: unchecked``; ``amd_crl_floor`` may refuse one older than one seen before.
    - simulated: accepted only against ``sim_root``, the simulation root CA (PEM).

    Debug evidence is refused unless ``allow_debug``.
    """
    ev = evidence if isinstance(evidence, Evidence) else Evidence.parse(evidence, kind)
    if kind != "auto" and ev.kind != kind:
        raise VerificationError(f"kind: evidence is {ev.kind}, not {kind}")
    when = _utc(at)

    if ev.kind in ("sgx", "tdx"):
        if vcek is not None or chain is not None or amd_crl is not None:
            raise VerificationError(
                f"options: --vcek/--chain/--amd-crl apply to snp evidence, not {ev.kind}"
            )
        from secfl.tee import _intel as intel

        claims = intel.verify_quote(ev.quote, at=when, collateral=collateral)
    elif ev.kind == "snp":
        if collateral is not None:
            raise VerificationError("options: collateral applies to Intel evidence, not snp")
        from secfl.tee import _amd as amd

        claims = amd.verify_report(
            ev.quote, at=when, vcek=vcek, chain=chain, aux=ev.aux, crl=amd_crl,
            crl_floor=amd_crl_floor,
        )  # fmt: skip
    else:
        if sim_root is None:
            raise VerificationError(
                "simulation: simulated evidence is accepted only with an explicit "
                "simulation root (--sim-root)"
            )
        from secfl.tee import _simulated as simulated

        claims = simulated.verify_quote(ev.quote, at=when, root_pem=sim_root)

    if claims.debug and not allow_debug:
        raise VerificationError(
            f"debug: the {claims.kind} evidence comes from a debug TEE; refused unless "
            "debug is explicitly allowed"
        )
    return claims


def _utc(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    return at.astimezone(UTC)
