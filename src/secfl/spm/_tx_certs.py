"""``tx.certificates`` and ``tx.revocations``: the certificates the SPM issued, and
what the board revoked (certificates, services, measurements, platforms)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select

from secfl._internal.values import quoted
from secfl.errors import SpmError
from secfl.spm._records import (
    REVOCATION_KINDS,
    CertificateRecord,
    RevocationRecord,
    from_us,
    normalise_serial,
    to_us,
)
from secfl.spm._schema import certificates_table, revocations_table
from secfl.spm._tx_base import TxView

__all__ = ["Certificates", "Revocations"]


class Certificates(TxView):
    """Certificates issued to attested services, by policy and serial."""

    def add(
        self, policy: str, service: str, serial: str | int, fingerprint: str, not_after: datetime
    ) -> None:
        """Record a certificate issued to ``service``; a serial issued twice is refused."""
        serial = normalise_serial(serial)
        self._insert(
            certificates_table,
            self._signed(
                certificates_table,
                {
                    "policy": policy,
                    "serial": serial,
                    "service": service,
                    "fingerprint": fingerprint,
                    "not_after": to_us(not_after, "not_after"),
                },
            ),
            f"store: certificate serial {serial} of policy '{policy}' already exists",
        )

    def _record(self, row: Any) -> CertificateRecord:
        self._verify(
            certificates_table, row, f"certificate {quoted(row.serial)} of {quoted(row.policy)}"
        )
        return CertificateRecord(
            policy=row.policy,
            serial=row.serial,
            service=row.service,
            fingerprint=row.fingerprint,
            not_after=from_us(row.not_after),
        )

    def get(self, policy: str, serial: str | int) -> CertificateRecord | None:
        """The certificate ``serial`` of ``policy`` (any hex form), None if unknown."""
        t = certificates_table
        row = (
            self._c()
            .execute(select(t).where(t.c.policy == policy, t.c.serial == normalise_serial(serial)))
            .first()
        )
        return None if row is None else self._record(row)

    def of_policy(self, policy: str, service: str | None = None) -> list[CertificateRecord]:
        """The certificates of ``policy`` (of one ``service``), soonest to expire first."""
        t = certificates_table
        query = select(t).where(t.c.policy == policy)
        if service is not None:
            query = query.where(t.c.service == service)
        rows = self._c().execute(query.order_by(t.c.not_after, t.c.serial))
        return [self._record(r) for r in rows]


class Revocations(TxView):
    """The board's revocations, and what this SPM knows was revoked (its floors)."""

    def add(
        self,
        policy: str,
        serial: str | int | None,
        service: str,
        reason: str,
        at: datetime,
        *,
        kind: str = "certificate",
        subject: str | None = None,
    ) -> None:
        """Record a revocation of ``kind`` (default: the certificate ``serial``);
        revoking the same thing twice is an :class:`SpmError`."""
        if kind not in REVOCATION_KINDS:
            raise SpmError(f"revocation: unknown kind '{kind}'")
        if kind == "certificate":
            subject = normalise_serial(serial if serial is not None else subject or "")
        if not subject:
            raise SpmError(f"revocation: a {kind} revocation names its subject")
        if self.is_revoked(policy, subject, kind=kind):
            raise SpmError(f"revocation: {kind} {subject} of policy '{policy}' is already revoked")
        self._insert(
            revocations_table,
            self._signed(
                revocations_table,
                {
                    "policy": policy,
                    "kind": kind,
                    "subject": subject,
                    "service": service,
                    "reason": reason,
                    "at": to_us(at, "at"),
                },
            ),
            f"revocation: {kind} {subject} of policy '{policy}' is already revoked",
        )
        self._note(("revoke", policy, kind, subject))

    def lift(self, policy: str, kind: str, subject: str) -> bool:
        """Readmit what a revocation named; False if it was not revoked."""
        if kind == "certificate":
            subject = normalise_serial(subject)
        t = revocations_table
        done = self._w().execute(
            delete(t).where(t.c.policy == policy, t.c.kind == kind, t.c.subject == subject)
        )
        self._note(("readmit", policy, kind, subject))
        return done.rowcount > 0 or (kind, subject) in self._floor_revoked(policy)

    def _floor_revoked(self, policy: str) -> set[tuple[str, str]]:
        floors = self._floors
        return set() if floors is None else floors.revoked_in(policy)

    def is_revoked(self, policy: str, subject: str | int, *, kind: str = "certificate") -> bool:
        """Whether ``subject`` (a certificate serial by default) is revoked in ``policy``."""
        if kind == "certificate":
            subject = normalise_serial(subject)
        return (kind, str(subject)) in self.in_force(policy)

    def in_force(self, policy: str) -> set[tuple[str, str]]:
        """Every (kind, subject) revoked in ``policy``: the rows, and what this SPM
        knows was revoked even if a row went missing (fail closed)."""
        found = {(r.kind, r.subject) for r in self.of_policy(policy)}
        return found | self._floor_revoked(policy)

    def of(self, policy: str, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of ``keys`` (kind, subject) are revoked in ``policy``: their rows (each
        MAC checked) and what this SPM knows was revoked. For a session's write, which
        names a handful of keys: the rows of other subjects are neither read nor checked."""
        if not keys:
            return set()
        t = revocations_table
        named = or_(*(and_(t.c.kind == kind, t.c.subject == subject) for kind, subject in keys))
        found = set()
        for r in self._c().execute(select(t).where(t.c.policy == policy, named)):
            self._verify(t, r, f"a revocation of policy '{policy}'")
            found.add((r.kind, r.subject))
        floors = self._floors
        return found | (set() if floors is None else floors.revoked_of(policy, keys))

    def of_policy(self, policy: str) -> list[RevocationRecord]:
        """The revocation rows of ``policy``, oldest first, each MAC checked."""
        t = revocations_table
        rows = self._c().execute(
            select(t).where(t.c.policy == policy).order_by(t.c.at, t.c.kind, t.c.subject)
        )
        out = []
        for r in rows:
            self._verify(t, r, f"a revocation of policy '{policy}'")
            out.append(
                RevocationRecord(
                    policy=r.policy,
                    kind=r.kind,
                    subject=r.subject,
                    service=r.service,
                    reason=r.reason,
                    at=from_us(r.at),
                )
            )
        return out
