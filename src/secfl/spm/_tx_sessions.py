"""``tx.nonces`` and ``tx.sessions``: single-use attestation nonces, and the sessions
attestation opens."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from secfl.spm._records import SessionRecord, from_us, to_us
from secfl.spm._schema import Q_SESSION, nonces_table, sessions_table
from secfl.spm._tx_base import TxView

__all__ = ["NONCE_GRACE", "Nonces", "Sessions"]

#: Expired nonces are kept this long (reported as "expired", not "unknown"), then pruned.
NONCE_GRACE = timedelta(minutes=10)


class Nonces(TxView):
    """Spent nonces: each one is accepted once."""

    def spend(self, nonce: bytes, expires_at: datetime) -> bool:
        """Record a self-authenticating nonce as used: True the first time, False if
        it was spent before (one INSERT; the primary key makes it single-use)."""
        t = nonces_table
        # the one dialect's module, not both: an SPM on SQLite never loads PostgreSQL's
        # (every start would pay for it)
        if self._tx.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            insert: Any = pg_insert(t)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            insert = sqlite_insert(t)
        done = self._w().execute(
            insert.values(nonce=bytes(nonce), expires_at=to_us(expires_at, "expires_at"), used=True)
            .on_conflict_do_nothing(index_elements=[t.c.nonce])
            .returning(t.c.nonce)
        )
        return done.first() is not None

    def prune(self, now: datetime) -> int:
        """Delete the nonces expired before ``now - NONCE_GRACE``; return how many went."""
        conn = self._w()
        horizon = to_us(now, "now") - int(NONCE_GRACE.total_seconds() * 1_000_000)
        t = nonces_table
        return conn.execute(delete(t).where(t.c.expires_at < horizon)).rowcount


class Sessions(TxView):
    """Attestation sessions, by the SHA-256 of their token."""

    def add(
        self,
        token_sha256: bytes,
        policy: str,
        service: str,
        policy_version: int,
        expires_at: datetime,
        *,
        serial: str = "",
        identity: str = "{}",
    ) -> None:
        """Open a session for ``service`` until ``expires_at``; ``serial`` is its
        certificate and ``identity`` what it was attested as (JSON), so that later
        policy versions and revocations can be checked against it."""
        self._insert(
            sessions_table,
            self._signed(
                sessions_table,
                {
                    "token_sha256": bytes(token_sha256),
                    "policy": policy,
                    "service": service,
                    "policy_version": policy_version,
                    "expires_at": to_us(expires_at, "expires_at"),
                    "serial": serial,
                    "identity": identity,
                },
            ),
            "store: a session with this token already exists",
        )

    def get(self, token_sha256: bytes) -> SessionRecord | None:
        """The session, expired or not (the caller compares ``expires_at`` with its clock)."""
        row = self._c().execute(Q_SESSION, {"b_token": bytes(token_sha256)}).first()
        if row is None:
            return None
        return self._record(row)

    def _record(self, row: Any) -> SessionRecord:
        self._verify(sessions_table, row, "a session")
        return SessionRecord(
            token_sha256=bytes(row.token_sha256),
            policy=row.policy,
            service=row.service,
            policy_version=row.policy_version,
            expires_at=from_us(row.expires_at),
            serial=row.serial,
            identity=row.identity,
        )

    def of_policy(self, policy: str) -> list[SessionRecord]:
        """Every session of ``policy`` still stored (expired ones until pruned)."""
        t = sessions_table
        rows = self._c().execute(select(t.c.token_sha256).where(t.c.policy == policy))
        found = [self.get(bytes(r.token_sha256)) for r in rows]
        return [s for s in found if s is not None]

    def live_of_policy(self, policy: str, now: datetime) -> list[SessionRecord]:
        """The sessions of ``policy`` not expired at ``now``, in one query (the
        revocation list reads them on every request: every peer asks every 10 s)."""
        t = sessions_table
        rows = self._c().execute(
            select(t).where(t.c.policy == policy, t.c.expires_at > to_us(now, "now"))
        )
        return [self._record(row) for row in rows]

    def delete(self, token_sha256: bytes) -> None:
        """Delete one session (its workload attested again: secfl.spm._renewal)."""
        t = sessions_table
        self._w().execute(delete(t).where(t.c.token_sha256 == bytes(token_sha256)))

    def prune(self, now: datetime) -> int:
        """Delete the sessions expired at ``now``; return how many went."""
        conn, t = self._w(), sessions_table
        return conn.execute(delete(t).where(t.c.expires_at <= to_us(now, "now"))).rowcount
