"""Transaction operations on issued certificates and their revocations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from secfl.errors import SpmError
from secfl.spm._tx_base import TxBase
from secfl.spm.records import CertificateRecord, RevocationRecord, from_us, normalise_serial, to_us
from secfl.spm.schema import certificates_table, revocations_table


class CertificateOps(TxBase):
    """Certificates and revocations (part of :class:`secfl.spm.store.Tx`)."""

    # -- certificates
    def add_certificate(
        self, policy: str, service: str, serial: str | int, fingerprint: str, not_after: datetime
    ) -> None:
        serial = normalise_serial(serial)
        self._insert(
            certificates_table,
            {
                "policy": policy,
                "serial": serial,
                "service": service,
                "fingerprint": fingerprint,
                "not_after": to_us(not_after, "not_after"),
            },
            f"store: certificate serial {serial} of policy '{policy}' already exists",
        )

    @staticmethod
    def _certificate(row: Any) -> CertificateRecord:
        return CertificateRecord(
            policy=row.policy,
            serial=row.serial,
            service=row.service,
            fingerprint=row.fingerprint,
            not_after=from_us(row.not_after),
        )

    def get_certificate(self, policy: str, serial: str | int) -> CertificateRecord | None:
        t = certificates_table
        row = (
            self._c()
            .execute(select(t).where(t.c.policy == policy, t.c.serial == normalise_serial(serial)))
            .first()
        )
        return None if row is None else self._certificate(row)

    def certificates(self, policy: str, service: str | None = None) -> list[CertificateRecord]:
        t = certificates_table
        query = select(t).where(t.c.policy == policy)
        if service is not None:
            query = query.where(t.c.service == service)
        rows = self._c().execute(query.order_by(t.c.not_after, t.c.serial))
        return [self._certificate(r) for r in rows]

    # -- revocations
    def add_revocation(
        self, policy: str, serial: str | int, service: str, reason: str, at: datetime
    ) -> None:
        """Record a revocation; revoking the same serial twice is an :class:`SpmError`."""
        serial = normalise_serial(serial)
        if self.is_revoked(policy, serial):
            raise SpmError(
                f"store: certificate serial {serial} of policy '{policy}' is already revoked"
            )
        self._insert(
            revocations_table,
            {
                "policy": policy,
                "serial": serial,
                "service": service,
                "reason": reason,
                "at": to_us(at, "at"),
            },
            f"store: certificate serial {serial} of policy '{policy}' is already revoked",
        )

    def is_revoked(self, policy: str, serial: str | int) -> bool:
        t = revocations_table
        row = (
            self._c()
            .execute(
                select(t.c.serial).where(
                    t.c.policy == policy, t.c.serial == normalise_serial(serial)
                )
            )
            .first()
        )
        return row is not None

    def revocations(self, policy: str) -> list[RevocationRecord]:
        t = revocations_table
        rows = self._c().execute(select(t).where(t.c.policy == policy).order_by(t.c.at, t.c.serial))
        return [
            RevocationRecord(
                policy=r.policy,
                serial=r.serial,
                service=r.service,
                reason=r.reason,
                at=from_us(r.at),
            )
            for r in rows
        ]
