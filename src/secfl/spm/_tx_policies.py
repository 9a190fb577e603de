"""``tx.policies``, ``tx.secrets`` and ``tx.data_keys``: policy versions, their sealed
secret values, and each policy's wrapped data key with its recovery shares."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import insert, select, update

from secfl._internal.values import quoted
from secfl.errors import SpmError
from secfl.spm._records import PolicyRecord, SecretRecord, from_us, to_us
from secfl.spm._schema import (
    Q_CURRENT_POLICY,
    Q_SECRET,
    policies_table,
    policy_keys_table,
    secrets_table,
)
from secfl.spm._tx_base import TxView

__all__ = ["DataKeys", "Policies", "Secrets"]


class Policies(TxView):
    """Board-approved policy versions: added once, never changed, never gone back."""

    def _record(self, row: Any) -> PolicyRecord:
        self._verify(
            policies_table, row, f"policy {quoted(row.name)} version {quoted(row.version)}"
        )
        return PolicyRecord(
            name=row.name,
            version=row.version,
            digest=row.digest,
            predecessor=row.predecessor,
            document=row.document,
            signatures=row.signatures,
            created_at=from_us(row.created_at),
        )

    def current(self, name: str) -> PolicyRecord | None:
        """The latest version of policy ``name`` (a version older than one this SPM
        has seen is a rollback: :class:`IntegrityError`)."""
        row = self._c().execute(Q_CURRENT_POLICY, {"b_name": name}).first()
        floors = self._floors
        if row is None:
            if floors is not None:
                floors.check_policy(name, 0, learn=False, since=self._tx.since)
            return None
        record = self._record(row)
        if floors is not None:
            floors.check_policy(
                name, record.version, learn=not self._tx.writable, since=self._tx.since
            )
        return record

    def version(self, name: str, version: int) -> PolicyRecord | None:
        """Version ``version`` of policy ``name``, None if there is none."""
        t = policies_table
        row = self._c().execute(select(t).where(t.c.name == name, t.c.version == version)).first()
        return None if row is None else self._record(row)

    def by_digest(self, name: str, digest: str) -> PolicyRecord | None:
        """The version of policy ``name`` whose document has ``digest``, None if none."""
        t = policies_table
        row = self._c().execute(select(t).where(t.c.name == name, t.c.digest == digest)).first()
        return None if row is None else self._record(row)

    def history(self, name: str) -> list[PolicyRecord]:
        """Every version of policy ``name``, oldest first."""
        t = policies_table
        rows = self._c().execute(select(t).where(t.c.name == name).order_by(t.c.version))
        return [self._record(r) for r in rows]

    def names(self) -> list[str]:
        """The name of every stored policy, sorted."""
        t = policies_table
        rows = self._c().execute(select(t.c.name).distinct().order_by(t.c.name))
        return [r.name for r in rows]

    def add(self, record: PolicyRecord) -> None:
        """Store a new version; a (name, version) or (name, digest) already present is
        an :class:`SpmError` (checks the caller's predecessor logic cannot replace)."""
        self._w()
        if self.version(record.name, record.version) is not None:
            raise SpmError(f"store: policy '{record.name}' version {record.version} already exists")
        if self.by_digest(record.name, record.digest) is not None:
            raise SpmError(
                f"store: policy '{record.name}' already has a version with digest {record.digest}"
            )
        self._insert(
            policies_table,
            self._signed(
                policies_table,
                {
                    "name": record.name,
                    "version": record.version,
                    "digest": record.digest,
                    "predecessor": record.predecessor,
                    "document": record.document,
                    "signatures": record.signatures,
                    "created_at": to_us(record.created_at, "created_at"),
                },
            ),
            f"store: policy '{record.name}' version {record.version} conflicts with a stored one",
        )
        self._note(("policy", record.name, record.version))


class Secrets(TxView):
    """Secret values, each sealed under its policy's data key."""

    def record(self, row: Any) -> SecretRecord:
        """The record of a stored row, refused unless its MAC verifies and it is the row
        this SPM stored last (a MAC cannot tell an old row from the current one)."""
        self._verify(
            secrets_table, row, f"secret {quoted(row.name)} of policy {quoted(row.policy)}"
        )
        floors = self._floors
        if floors is not None:
            digest = hashlib.sha256(bytes(row.ciphertext)).hexdigest()
            floors.check_secret(row.policy, row.name, digest, self._pending(row.policy, row.name))
        return SecretRecord(
            policy=row.policy,
            name=row.name,
            kind=row.kind,
            definition_digest=row.definition_digest,
            ciphertext=bytes(row.ciphertext),
            created_at=from_us(row.created_at),
        )

    def get(self, policy: str, name: str) -> SecretRecord | None:
        """Secret ``name`` of ``policy``, None if there is none."""
        row = self._c().execute(Q_SECRET, {"b_policy": policy, "b_name": name}).first()
        return None if row is None else self.record(row)

    def of_policy(self, policy: str) -> list[SecretRecord]:
        """Every secret of ``policy``, by name."""
        t = secrets_table
        rows = self._c().execute(select(t).where(t.c.policy == policy).order_by(t.c.name))
        return [self.record(r) for r in rows]

    def _pending(self, policy: str, name: str) -> str | None:
        """The digest of the row this transaction stored as (policy, name), if it did."""
        stored = [c[3] for c in self._tx.changes if c[:3] == ("secret", policy, name)]
        return stored[-1] if stored else None

    def put(self, record: SecretRecord, reason: str) -> None:
        """Insert or replace the secret (policy, name), chained into the audit log as
        ``secret.stored`` with the SHA-256 of its ciphertext and ``reason``: from then on
        only that row is the secret's (an older one, restored with its MAC, is a
        rollback)."""
        t = secrets_table
        values = self._signed(
            t,
            {
                "policy": record.policy,
                "name": record.name,
                "kind": record.kind,
                "definition_digest": record.definition_digest,
                "ciphertext": bytes(record.ciphertext),
                "created_at": to_us(record.created_at, "created_at"),
            },
        )
        conn = self._w()
        done = conn.execute(
            update(t).where(t.c.policy == record.policy, t.c.name == record.name).values(**values)
        )
        if done.rowcount == 0:
            conn.execute(insert(t).values(**values))
        self.log_stored(record, reason)

    def log_stored(self, record: SecretRecord, reason: str) -> None:
        """Chain ``record`` into the audit log as the secret's stored row (``put`` does;
        so does the start, once, for a row an SPM older than these entries stored)."""
        digest = hashlib.sha256(bytes(record.ciphertext)).hexdigest()
        self._note(("secret", record.policy, record.name, digest))
        detail = {"secret": record.name, "sha256": digest, "reason": reason}
        self._tx.audit.append("secret.stored", record.policy, detail)


class DataKeys(TxView):
    """Each policy's data key, wrapped under the master key, and its recovery shares."""

    def _row(self, policy: str) -> Any:
        t = policy_keys_table
        row = self._c().execute(select(t).where(t.c.policy == policy)).first()
        if row is not None:
            self._verify(t, row, f"the data key of policy '{policy}'")
            floors = self._floors
            if floors is not None:
                floors.check_data_key(policy, hashlib.sha256(bytes(row.wrapped)).hexdigest())
        return row

    def get(self, policy: str) -> bytes | None:
        """The policy's data key, wrapped under the master key."""
        row = self._row(policy)
        return None if row is None else bytes(row.wrapped)

    def shares(self, policy: str) -> str | None:
        """The recovery shares (JSON) of the policy's data key."""
        row = self._row(policy)
        return None if row is None else str(row.shares)

    def put(self, policy: str, wrapped: bytes, shares_json: str) -> None:
        """Insert or replace the wrapped data key of ``policy`` and its recovery shares."""
        t = policy_keys_table
        values = self._signed(
            t, {"policy": policy, "wrapped": bytes(wrapped), "shares": shares_json}
        )
        conn = self._w()
        done = conn.execute(update(t).where(t.c.policy == policy).values(**values))
        if done.rowcount == 0:
            conn.execute(insert(t).values(**values))
