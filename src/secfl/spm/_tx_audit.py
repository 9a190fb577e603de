"""``tx.audit``: the hash-chained audit log of a transaction, and its authenticated head.

Entries appended in a transaction commit or roll back with the change they record.
The head (last seq, its hash) and its MAC are written once, when the transaction
(or a savepoint) ends, not at every append.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import ColumnElement, Connection, LargeBinary, cast, func, select
from sqlalchemy.exc import DBAPIError, OperationalError

from secfl.errors import AuditError, IntegrityError, SpmError
from secfl.spm import _audit
from secfl.spm._audit import AuditEntry
from secfl.spm._schema import INSERT, Q_HEAD, Q_HEAD_LOCK, Q_HEAD_UPDATE, audit_table
from secfl.spm._tx_base import TxView

if TYPE_CHECKING:
    from secfl.spm._tx import Tx

__all__ = ["AUDIT_HEAD_MAC", "AuditLog", "read_head"]

#: Meta key of the head MAC (see :func:`secfl.spm._audit.head_mac`).
AUDIT_HEAD_MAC = "audit_head_mac"


class AuditLog(TxView):
    """The audit log as one transaction sees it; it carries the head until commit."""

    def __init__(self, tx: Tx, audit_key: bytes | None) -> None:
        super().__init__(tx)
        self._key = audit_key
        self._head: tuple[int, str] | None = None
        #: Entries were appended since the head row and its MAC were last written.
        self._dirty = False

    def head(self) -> tuple[int, str]:
        """(last seq, its hash); (0, GENESIS) for an empty log."""
        if self._head is None:
            self._head = read_head(self._c(), self._tx.dialect, lock=False)
        return self._head

    def lock_head(self) -> tuple[int, str]:
        """Read the head under the writers' lock (PostgreSQL: ``FOR UPDATE`` of its
        row); the first statement of every write transaction."""
        self._head = read_head(self._c(), self._tx.dialect, lock=True)
        return self._head

    @property
    def known_head(self) -> tuple[int, str] | None:
        """The head as this transaction left it (None if it never read it)."""
        return self._head

    def append(
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
        if self._key is None and self._tx.meta.get(AUDIT_HEAD_MAC) is not None:
            raise SpmError("audit: this log is authenticated; open the store with its audit key")
        entry = _audit.make_entry(self.head(), event, policy, detail, at)
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
        self._dirty = True
        return entry

    def since(self, seq: int, limit: int = 1000, *, chars: int | None = None) -> list[AuditEntry]:
        """Entries with a seq greater than ``seq``, in order, at most ``limit``; with
        ``chars``, only as many as hold that many bytes of detail between them
        (at least one): what a page served over HTTP may cost the SPM's memory."""
        t = audit_table
        conn = self._c()
        if chars is not None:
            limit = min(limit, self._fitting(seq, limit, chars))
        # a detail too long for any entry is found by its length before the page is read
        # (PostgreSQL's driver reads a whole page into memory before the first row)
        page = (
            select(t.c.seq, self._bytes(t.c.detail).label("size"))
            .where(t.c.seq > seq)
            .order_by(t.c.seq)
            .limit(max(0, limit))
            .subquery()
        )
        long = conn.execute(
            select(page.c.seq)
            .where(page.c.size > _audit.MAX_DETAIL_CHARS)
            .order_by(page.c.seq)
            .limit(1)
        ).first()
        if long is not None:
            raise AuditError(
                f"audit: entry {long.seq} was modified (its detail is longer than any entry's)"
            )
        rows = conn.execute(select(t).where(t.c.seq > seq).order_by(t.c.seq).limit(max(0, limit)))
        return [_entry(r) for r in rows]

    def pages(self, after: int, *, upto: int | None = None) -> Iterator[list[AuditEntry]]:
        """The entries after ``after`` (up to seq ``upto`` when given), ascending, a page
        at a time: at most 1000 entries and :data:`~secfl.spm._audit.READ_CHARS` of
        detail each (at least one entry), what a reader of the whole log holds at once."""
        while upto is None or after < upto:
            limit = 1000 if upto is None else min(1000, upto - after)
            entries = self.since(after, limit, chars=_audit.READ_CHARS)
            if not entries:
                return
            yield entries
            after = entries[-1].seq

    def _fitting(self, seq: int, limit: int, chars: int) -> int:
        """How many of the ``limit`` entries after ``seq`` fit in ``chars`` bytes of
        detail (at least one), counted by the database: no detail is read to know."""
        t = audit_table
        running = (
            select(func.sum(self._bytes(t.c.detail)).over(order_by=t.c.seq).label("upto"))
            .where(t.c.seq > seq)
            .order_by(t.c.seq)
            .limit(max(0, limit))
            .subquery()
        )
        fit = (
            self._c()
            .execute(select(func.count()).select_from(running).where(running.c.upto <= chars))
            .scalar()
        )
        return max(1, int(fit or 0))

    def _bytes(self, column: ColumnElement[Any]) -> ColumnElement[int]:
        """The size of a text column in bytes, as the database counts it: SQLite's
        ``length()`` of a text stops at its first NUL, so a detail the database's host
        wrote as a NUL and a gigabyte was 0 long to the checks above and refused only
        once read into memory (a crash out of memory instead of a refusal)."""
        if self._tx.dialect == "postgresql":
            return func.octet_length(column)
        return func.length(cast(column, LargeBinary))

    def flush_head(self) -> None:
        """Write the audit head row and its MAC for the entries appended so far
        (called by the transaction: at commit and around savepoints)."""
        if not self._dirty or self._head is None:
            return
        seq, head_hash = self._head
        conn = self._w()
        conn.execute(Q_HEAD_UPDATE, {"b_new_seq": seq, "b_new_hash": head_hash})
        if self._key is not None:
            self._tx.meta.put(AUDIT_HEAD_MAC, _audit.head_mac(self._key, seq, head_hash).encode())
        self._dirty = False

    def reload_head(self) -> None:
        """Forget the entries of a savepoint that rolled back: read the head again."""
        self._head = read_head(self._c(), self._tx.dialect, lock=False)
        self._dirty = False


_NO_TABLES = (
    "store: the database has no SPM tables: it is not an SPM's database, or they were "
    "dropped outside the SPM (check the database URL)"
)


def read_head(
    conn: Connection, dialect: Literal["sqlite", "postgresql"], *, lock: bool
) -> tuple[int, str]:
    """The head row (seq, hash), checked to be one; ``lock`` takes the writers' lock."""
    query = Q_HEAD_LOCK if lock and dialect == "postgresql" else Q_HEAD
    try:
        row = conn.execute(query).first()
    except OperationalError as exc:
        if "no such table" in str(exc.orig) or "does not exist" in str(exc.orig):
            raise SpmError(_NO_TABLES) from None
        raise
    except DBAPIError as exc:
        if "does not exist" in str(exc.orig):
            raise SpmError(_NO_TABLES) from None
        raise
    if row is None:
        raise SpmError(
            "store: the audit head row is missing: the database was changed outside the SPM "
            "or is not an SPM's (check the database URL, or restore it from a backup)"
        )
    seq, head_hash = row.seq, row.hash
    if (
        not isinstance(seq, int)
        or isinstance(seq, bool)
        or not 0 <= seq < 2**62
        or not isinstance(head_hash, str)
        or not (head_hash == _audit.GENESIS or len(head_hash) == 64)
    ):
        raise IntegrityError(
            "integrity: the audit head row is corrupt (not a sequence number and hash)"
        )
    return seq, head_hash


def _entry(row: Any) -> AuditEntry:
    seq = row.seq
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq < 2**62:
        raise AuditError("audit: an entry was modified (its seq is not a sequence number)")
    if isinstance(row.detail, str | bytes) and len(row.detail) > _audit.MAX_DETAIL_CHARS:
        raise AuditError(
            f"audit: entry {seq} was modified (its detail of {len(row.detail)} characters is "
            "longer than any entry's)"
        )
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
