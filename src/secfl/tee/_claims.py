"""What verified evidence says: one :class:`Claims` type for every kind of TEE."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "KINDS",
    "TCB_ORDER",
    "Claims",
    "Kind",
    "TcbStatus",
]

Kind = Literal["sgx", "tdx", "snp", "simulated"]
KINDS: tuple[Kind, ...] = ("sgx", "tdx", "snp", "simulated")

TcbStatus = Literal[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "unknown",
]

#: TCB statuses from best to worst; a policy's minimum compares by this order.
TCB_ORDER: tuple[TcbStatus, ...] = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "unknown",
)


class Claims(BaseModel):
    """The verified statements of one piece of evidence.

    ``measurements`` holds the kind's identity of the code:

    - sgx: mrenclave, mrsigner, isv_prod_id, isv_svn
    - tdx: mrtd, rtmr0..rtmr3, mrconfigid, mrowner, mrownerconfig, mrseam
    - snp: measurement, host_data, policy, vmpl (plus id_key_digest, author_key_digest)
    - simulated: measurement

    Digests are lowercase hex; counters and policy words are integers.
    ``tcb_status`` is ``unknown`` when no collateral was given (signature chain only).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    quote_version: int
    measurements: dict[str, str | int]
    report_data: str = Field(pattern=r"^[0-9a-f]{128}$")
    debug: bool
    tcb_status: TcbStatus
    advisory_ids: list[str] = Field(default_factory=list)
    platform: dict[str, str] = Field(default_factory=dict)
    simulated: bool = False

    @property
    def report_data_bytes(self) -> bytes:
        return bytes.fromhex(self.report_data)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the CLI prints exactly this."""
        from secfl._internal.canonical import canonical_json

        return canonical_json(self.model_dump(mode="json")).decode("utf-8")
