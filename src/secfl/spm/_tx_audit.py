"""Transaction operations on the audit log: appending entries, reading them back, and
writing the authenticated head (row and MAC) when the transaction ends."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select

from secfl.errors import AuditError, SpmError
from secfl.spm import audit as _audit
from secfl.spm._tx_meta import MetaOps
from secfl.spm.audit import AuditEntry
from secfl.spm.schema import INSERT, Q_HEAD_UPDATE, audit_table

#: Meta key of the head MAC (see :func:`secfl.spm.audit.head_mac`).
AUDIT_HEAD_MAC = "audit_head_mac"


class AuditOps(MetaOps):
    """The hash-chained audit log and its head (part of :class:`secfl.spm.store.Tx`)."""

    def audit_head(self) -> tuple[int, str]:
        """(last seq, its hash); (0, GENESIS) for an empty log."""
        if self._head is None:
            self._head = self._store._read_head(self._c(), lock=False)
        return self._head

    def append_audit(
        self,
        event: str,
        policy: str | None,
        detail: dict[str, Any],
        *,
        at: datetime | None = None,
    ) -> AuditEntry:
        """Append an entry in this transaction (so it commits or rolls back with the
        change it records) and move the authenticated head."""
        conn = self._w()
        key = self._store._audit_key
        if key is None and self.get_meta(AUDIT_HEAD_MAC) is not None:
            raise SpmError("audit: this log is authenticated; open the store with its audit key")
        entry = _audit.make_entry(self.audit_head(), event, policy, detail, at)
        conn.execute(
            INSERT[audit_table],
            {
                "seq": entry.seq,
                "at": entry.at,
                "event": entry.event,
                "policy": entry.policy,
                "detail": _audit.canonical_json(entry.detail).decode("utf-8"),
                "prev_hash": entry.prev_hash,
                "hash": entry.hash,
            },
        )
        self._head = (entry.seq, entry.hash)
        self._head_dirty = True
        return entry

    def audit_since(self, seq: int, limit: int = 1000) -> list[AuditEntry]:
        """Entries with a seq greater than ``seq``, in order, at most ``limit``."""
        t = audit_table
        rows = self._c().execute(
            select(t).where(t.c.seq > seq).order_by(t.c.seq).limit(max(0, limit))
        )
        return [_entry(r) for r in rows]

    def _flush_head(self) -> None:
        """Write the audit head row and its MAC for the entries appended so far."""
        if not self._head_dirty or self._head is None:
            return
        seq, head_hash = self._head
        conn = self._w()
        conn.execute(Q_HEAD_UPDATE, {"b_new_seq": seq, "b_new_hash": head_hash})
        key = self._store._audit_key
        if key is not None:
            self.set_meta(AUDIT_HEAD_MAC, _audit.head_mac(key, seq, head_hash).encode())
        self._head_dirty = False


def _entry(row: Any) -> AuditEntry:
    seq = row.seq
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq < 2**62:
        raise AuditError("audit: an entry was modified (its seq is not a sequence number)")
    try:
        detail = json.loads(row.detail)
    except (ValueError, TypeError, RecursionError):
        raise AuditError(f"audit: entry {seq} was modified (its detail is not JSON)") from None
    if not isinstance(detail, dict):
        raise AuditError(f"audit: entry {seq} was modified (its detail is not an object)")
    texts = (row.at, row.event, row.prev_hash, row.hash)
    if not all(isinstance(t, str) for t in texts) or not (
        row.policy is None or isinstance(row.policy, str)
    ):
        raise AuditError(f"audit: entry {seq} was modified (a field has the wrong type)")
    return AuditEntry(
        seq=int(row.seq),
        at=row.at,
        event=row.event,
        policy=row.policy,
        detail=detail,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
