"""A policy's platform rules: which evidence the SPM accepts, and the TCB it requires.

Intel's TCB is appraised with Intel's collateral (``min_tcb_status``); when the SPM has
none, the status is ``unknown``, accepted only where ``allow_unknown_tcb`` says so. AMD
publishes no appraisal for SEV-SNP: its TCB is the report's ``reported_tcb`` (the TCB
the VCEK/VLEK was issued for, so firmware below it cannot sign such a report) and
``launch_tcb`` (the firmware's when the guest was launched), each held against the
board's floor per product line (``min_snp_tcb``).

``allow_unknown_tcb`` is ``true`` (every kind, as before) or the kinds it covers
(``[snp]``): a policy accepting SEV-SNP without a floor no longer has to waive Intel's
appraisal too, which a host blocking the SPM's PCCS could then skip (found by a review).
The fields added here are left out of the canonical form while unset, so that every
digest computed before them stands.

``allow_unchecked_amd_crl``: an SPM started with ``--no-amd-crl`` checks no SEV-SNP
chain against AMD's CRLs (a revoked ASK/ASVK is accepted); the SPM's command line is
its host's, so that alone would let the host turn revocation off for every policy.
Its SEV-SNP evidence is accepted only under a policy whose board set this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from secfl.policy._fields import Pem, StrictModel
from secfl.tee._claims import KINDS, Kind, TcbStatus
from secfl.tee._snp_report import Product, tcb_from_text

__all__ = ["Platforms", "SnpTcb", "check_platforms", "platform_warnings"]

Spl = Annotated[int, Field(strict=True, ge=0, le=255)]


class SnpTcb(StrictModel):
    """The lowest security patch levels (SPLs) of one SEV-SNP product line accepted."""

    bootloader: Spl
    tee: Spl
    snp: Spl
    microcode: Spl
    #: Turin's firmware has one more (its FMC): required for Turin, refused otherwise.
    fmc: Spl | None = None

    @model_serializer(mode="wrap")
    def _unset_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.fmc is None:
            data.pop("fmc", None)
        return data

    def levels(self) -> dict[str, int]:
        """The floor of each SPL the floor names."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Platforms(StrictModel):
    """Which evidence the SPM accepts for this policy's services."""

    accept: list[Kind] = Field(min_length=1, max_length=len(KINDS))
    min_tcb_status: TcbStatus = "UpToDate"
    #: Accept ``tcb_status: unknown`` (evidence verified without collateral): ``true``
    #: for every kind, or the kinds it covers (``[snp]``).
    allow_unknown_tcb: bool | Annotated[list[Kind], Field(max_length=len(KINDS))] = False
    allow_debug: bool = False
    #: PEM of the simulation root; required when ``simulated`` is accepted.
    simulation_root: Pem | None = None
    #: The oldest Intel TCB evaluation (``tcbEvaluationDataNumber``) an appraisal may use:
    #: the board raises it after an Intel TCB recovery, so that collateral from before the
    #: recovery (valid for up to 30 more days) no longer rates a platform. Left out of
    #: the canonical form while unset, so that every digest computed before it stands.
    min_tcb_evaluation_data_number: int | None = Field(default=None, ge=1, le=(1 << 31) - 1)
    #: Refuse evidence that names no machine (a masked or VLEK-signed SEV-SNP report's
    #: chip ID is zeros), which no ``platform`` revocation could then stop. Left out of
    #: the canonical form while false, like the field above.
    require_platform_id: bool = False
    #: Per SEV-SNP product line, the lowest ``reported_tcb`` accepted (SPLs differ
    #: between lines); a report of a line it does not name is refused. Left out of the
    #: canonical form while unset.
    min_snp_tcb: Annotated[dict[Product, SnpTcb], Field(min_length=1)] | None = None
    #: Accept SEV-SNP evidence that an SPM started with ``--no-amd-crl`` checked against
    #: no AMD CRL (a revoked AMD signing key would pass). Left out of the canonical form
    #: while false.
    allow_unchecked_amd_crl: bool = False

    @model_serializer(mode="wrap")
    def _unset_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.min_tcb_evaluation_data_number is None:
            data.pop("min_tcb_evaluation_data_number", None)
        if not self.require_platform_id:
            data.pop("require_platform_id", None)
        if self.min_snp_tcb is None:
            data.pop("min_snp_tcb", None)
        if not self.allow_unchecked_amd_crl:
            data.pop("allow_unchecked_amd_crl", None)
        return data

    @field_validator("allow_unknown_tcb")
    @classmethod
    def _kinds_in_order(cls, value: bool | list[Kind]) -> bool | list[Kind]:
        # the order of the kinds means nothing: keep it out of the canonical form
        if isinstance(value, bool):
            return value
        if not value:
            raise ValueError("list the kinds whose unknown TCB is accepted (e.g. [snp]), or false")
        if len(set(value)) != len(value):
            raise ValueError("a kind is listed twice")
        return sorted(value, key=KINDS.index)

    @field_validator("min_snp_tcb")
    @classmethod
    def _fmc_for_turin(cls, value: dict[Product, SnpTcb] | None) -> dict[Product, SnpTcb] | None:
        for product, floor in (value or {}).items():
            if product == "Turin" and floor.fmc is None:
                raise ValueError("Turin: give fmc too (the SPL of Turin's firmware FMC)")
            if product != "Turin" and floor.fmc is not None:
                raise ValueError(f"{product}: fmc is Turin's alone; leave it out")
        return value

    @field_validator("simulation_root")
    @classmethod
    def _one_certificate(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            certs = x509.load_pem_x509_certificates(value.encode())
        except (ValueError, UnicodeError):
            raise ValueError("not a PEM certificate") from None
        if len(certs) != 1:
            raise ValueError(f"must be one certificate, not {len(certs)}")
        # Re-encoded for the same reason as board keys: a stable canonical form.
        return certs[0].public_bytes(serialization.Encoding.PEM).decode()

    def unknown_tcb_allowed(self, kind: str) -> bool:
        """Whether evidence of ``kind`` with ``tcb_status: unknown`` is accepted."""
        allowed = self.allow_unknown_tcb
        return allowed if isinstance(allowed, bool) else kind in allowed

    def snp_tcb_refusal(self, platform: Mapping[str, Any]) -> str | None:
        """Why the SEV-SNP TCB in ``platform`` (the claims' ``product`` and
        ``reported_tcb`` and ``launch_tcb``) is refused, or None. Under ``min_snp_tcb``
        each SPL of both must reach its product line's floor (``allow_unknown_tcb`` does
        not waive it): firmware updated under a running guest reports a new TCB, but the
        guest was launched and measured by the old firmware (``launch_tcb``, found by a
        review). Without a floor, only ``allow_unknown_tcb`` accepts it."""
        floors = self.min_snp_tcb
        if floors is None:
            if self.unknown_tcb_allowed("snp"):
                return None
            return (
                "SEV-SNP has no vendor TCB appraisal and the policy sets no minimum: the "
                "board sets platforms.min_snp_tcb (per product line, the lowest bootloader, "
                "tee, snp and microcode SPLs), or allow_unknown_tcb: [snp] to accept any"
            )
        reported = tcb_from_text(platform.get("reported_tcb"))
        launched = tcb_from_text(platform.get("launch_tcb"))
        if reported is None or launched is None:  # a session attested before the claims
            return (  # gave them: it attests again
                "the SEV-SNP evidence gives no reported_tcb and launch_tcb to hold against "
                "min_snp_tcb (a session attested before this release: it attests again)"
            )
        product = str(platform.get("product", ""))
        floor = next((f for line, f in floors.items() if line == product), None)
        if floor is None:
            return (
                f"the policy's min_snp_tcb has no floor for {product} CPUs (only "
                f"{', '.join(floors)}): the board adds one"
            )
        for which, tcb in (("reported_tcb", reported), ("launch_tcb", launched)):
            for name, least in floor.levels().items():
                have = tcb.get(name)
                if have is None or have < least:
                    shown = have if have is not None else "?"
                    return (
                        f"the SEV-SNP {which} has {name}={shown}, below the policy's "
                        f"min_snp_tcb.{product}.{name}={least}: the host must run AMD "
                        "firmware and microcode at or above the floor"
                        + (" and launch the guest again on it" if which == "launch_tcb" else "")
                    )
        return None


def check_platforms(p: Platforms) -> None:
    """The rules between the platform fields (ValueError naming the field)."""
    allowed = p.allow_unknown_tcb
    for kind in allowed if isinstance(allowed, list) else []:
        if kind == "simulated":
            raise ValueError(
                "platforms.allow_unknown_tcb: simulated evidence has no TCB to appraise; "
                "leave it out"
            )
        if kind not in p.accept:
            raise ValueError(f"platforms.allow_unknown_tcb: '{kind}' is not in platforms.accept")
    intel = [k for k in ("sgx", "tdx") if p.unknown_tcb_allowed(k)]
    if p.min_tcb_evaluation_data_number is not None and intel:
        raise ValueError(
            "platforms.min_tcb_evaluation_data_number: requires an appraised TCB, which "
            f"allow_unknown_tcb waives for {' and '.join(intel)} (a host that blocks the "
            "PCCS would skip it); set one or the other"
        )
    if p.min_snp_tcb is not None:
        if "snp" not in p.accept:
            raise ValueError("platforms.min_snp_tcb: 'snp' is not in platforms.accept")
        if isinstance(allowed, list) and "snp" in allowed:
            raise ValueError(
                "platforms.allow_unknown_tcb: lists snp, whose TCB min_snp_tcb checks; "
                "leave snp out (or min_snp_tcb)"
            )


def platform_warnings(p: Platforms) -> list[str]:
    """What a board should know before signing these rules."""
    intel = [k for k in ("sgx", "tdx") if k in p.accept]
    if p.allow_unknown_tcb is True and "snp" in p.accept and intel:
        return [
            f"platforms.allow_unknown_tcb: true accepts {' and '.join(intel)} evidence "
            "without TCB appraisal too, which a host can force by blocking the SPM's "
            "PCCS; to accept SEV-SNP without min_snp_tcb, write allow_unknown_tcb: [snp]"
        ]
    if "snp" in p.accept and p.min_snp_tcb is None and not p.unknown_tcb_allowed("snp"):
        return [
            "platforms.accept: snp, but every SEV-SNP report will be refused: set "
            "platforms.min_snp_tcb (the lowest SPLs per product line) or "
            "allow_unknown_tcb: [snp]"
        ]
    return []
