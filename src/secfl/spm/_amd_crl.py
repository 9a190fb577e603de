"""The SPM's AMD CRLs: ``secfl spm serve --amd-crl DIR``, or its operator's ``--no-amd-crl``.

The SPM has no network to reach AMD's KDS, so its operator keeps AMD's CRLs in a
folder, one file per key kind and product line as KDS serves them (DER, or PEM):
``vcek-Milan.crl`` from ``https://kdsintf.amd.com/vcek/v1/Milan/crl``,
``vlek-Milan.crl`` from ``.../vlek/v1/Milan/crl``, and so on for Genoa and Turin
(:func:`secfl.tee._amd_crl.crl_file_name`). A file is read when a report needs it,
so a fresh CRL dropped in replaces the old one without a restart. The folder is the
host's: its files are checked (signed by the pinned ARK, current), never trusted;
the host can withhold one (SEV-SNP evidence is then refused), but not put back an
older one still within its dates, from before a revocation: once a CRL of a key kind
and product verified, one issued earlier (an older thisUpdate) is refused,
``rollback: ...``, across restarts too (the floor is in the SPM's audit log,
``collateral.verified``: :mod:`secfl.spm._collateral_floors`).

Fail closed: an SPM started with neither setting refuses SEV-SNP evidence, saying
how to start it. ``--no-amd-crl`` leaves SEV-SNP evidence unchecked against
revocation; the SPM says so when it starts and records it in its ``spm.started``
audit event, and accepts such evidence only for a policy whose board allows it
(``platforms.allow_unchecked_amd_crl``): the command line is the host's, and would
otherwise turn revocation off for every policy unseen (found by a review).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from secfl.errors import VerificationError
from secfl.spm._collateral_floors import CollateralFloors, MemoryFloors, amd_record_of
from secfl.tee._amd_crl import CrlLookup, crl_url, folder_lookup
from secfl.tee._snp_report import PRODUCTS

__all__ = [
    "NOT_CONFIGURED",
    "UNCHECKED_REFUSED",
    "AmdCrls",
    "describe",
]

#: Why SEV-SNP evidence is refused by an SPM started with ``--no-amd-crl`` for a policy
#: that does not accept it.
UNCHECKED_REFUSED = (
    "crl: this SPM was started with --no-amd-crl, so it checks no AMD CRL (a revoked AMD "
    "signing key, ASK/ASVK, would pass), and the policy does not accept that: start the "
    "SPM with --amd-crl DIR, or the board sets platforms.allow_unchecked_amd_crl: true"
)

#: Why SEV-SNP evidence is refused by an SPM started with neither setting.
NOT_CONFIGURED = (
    "crl: this SPM has no AMD CRLs, so it cannot tell a revoked AMD signing key (ASK/ASVK) "
    "from a good one: start it with --amd-crl DIR (AMD KDS CRLs, e.g. vcek-Milan.crl from "
    "https://kdsintf.amd.com/vcek/v1/Milan/crl), or with --no-amd-crl to accept SEV-SNP "
    "evidence unchecked against revocation where the policy allows it "
    "(platforms.allow_unchecked_amd_crl)"
)


def describe(crls: AmdCrls | None) -> str:
    """What an SPM checks SEV-SNP evidence against, for its start line and its
    ``spm.started`` audit event."""
    if crls is None:
        return "none (neither --amd-crl nor --no-amd-crl): SEV-SNP evidence is refused"
    if crls.folder is None:
        return (
            "unchecked (--no-amd-crl): a revoked AMD ASK/ASVK is accepted where the policy "
            "allows it (platforms.allow_unchecked_amd_crl), SEV-SNP refused elsewhere"
        )
    return str(crls.folder)


@dataclass
class AmdCrls:
    """AMD's CRLs in ``folder``; ``folder=None``: the operator's explicit opt-out.

    ``floors``: the thisUpdate of the newest CRL of each kind and product verified,
    none older taken (the SPM sets its audited floors: :class:`~secfl.spm.
    _collateral_floors.AuditedFloors`)."""

    folder: Path | None
    floors: CollateralFloors = field(default_factory=MemoryFloors, compare=False)

    @property
    def lookup(self) -> CrlLookup | None:
        """What :func:`secfl.tee._verify.verify` takes as ``amd_crl`` (None: unchecked)."""
        return None if self.folder is None else folder_lookup(self.folder)

    def floor(self, kind: str, product: str, this_update: datetime, label: str) -> None:
        """Refuse a verified CRL issued before the newest one of its kind and product
        this SPM verified (a rollback by the host); else raise the floor to it, in the
        audit log before the evidence it checked is answered."""
        self.floors.refresh()  # what other SPMs sharing the database verified
        seconds = int(this_update.timestamp())
        floor = self.floors.get(("amd-crl", kind, product))
        if seconds < floor:
            seen = datetime.fromtimestamp(floor, UTC).isoformat()
            raise VerificationError(
                f"rollback: the {label} in {self.folder} is older than the one of {seen} "
                f"this SPM verified: put a current one there ({crl_url(kind, product)})"
            )
        if seconds > floor:
            record = amd_record_of(kind, product, seconds)
            self.floors.hold(record)
            self.floors.persist(record)

    def served(self) -> dict[str, str]:
        """The CRLs of the folder, base64, to serve beside the SPM's own SEV-SNP
        evidence (``GET /v1/attestation``): a client checking this SPM checks them as
        the SPM checks workloads' (they are the ARK's: their source needs no trust).
        Those missing or unreadable are left out (the client then refuses, naming it)."""
        found: dict[str, str] = {}
        if self.folder is None:
            return found
        lookup = folder_lookup(self.folder)
        for kind in ("vcek", "vlek"):
            for product in PRODUCTS:
                try:
                    data = lookup(kind, product)
                except VerificationError:
                    continue
                if data is not None:
                    found[f"{kind}-{product}"] = base64.b64encode(data).decode()
        return found
