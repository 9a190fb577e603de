"""The SPM's durable state: SQLite (default) or PostgreSQL through SQLAlchemy Core.

Everything goes through transactions::

    store = Store("sqlite:///var/lib/secfl/spm.db", audit_key=master.derive("audit"))
    store.create_all()
    with store.transaction() as tx:          # one atomic, durable write transaction
        value = tx.counters.increment("fl", "round")
        tx.audit.append("counter.increment", "fl", {"counter": "round", "value": value})

**Writers are serialised**, so that the audit chain and the counters can never fork
and every write transaction sees the result of the one before it:

- SQLite: a process-wide lock per :class:`Store` (threads queue on it instead of
  polling SQLite's busy handler), then ``BEGIN IMMEDIATE``, which takes SQLite's
  write lock at once; other *processes* on the same file wait on it up to the busy
  timeout (30 s). WAL mode lets readers go on meanwhile; ``synchronous=FULL`` makes
  each commit durable (fsynced) before :meth:`Store.transaction` returns.
- PostgreSQL: every write transaction starts with ``SELECT ... FROM audit_head
  WHERE id = 1 FOR UPDATE``. The single row is a mutex shared by every SPM replica
  on the database; PostgreSQL queues waiters fairly, and under READ COMMITTED each
  later statement of the lock holder sees everything committed before it got the
  lock. Writers all take this one lock first, so they cannot deadlock, and no
  SERIALIZABLE retry loop is needed. Commits are durable with PostgreSQL's default
  ``synchronous_commit = on``.

Read-only work (:meth:`Store.read`, :meth:`Store.audit_since`, :meth:`Store.verify_audit`)
takes no lock and sees one consistent snapshot (SQLite: a deferred transaction in
WAL mode; PostgreSQL: REPEATABLE READ).

Timestamps: every ``datetime`` in or out of this API is timezone-aware UTC (naive
ones are refused); the database keeps integer microseconds since the epoch. Audit
entries carry their time as an ISO-8601 UTC string (see :mod:`secfl.spm._audit`).

Errors: a refused write (a duplicate policy version, an unknown counter...) and an
unreachable or failing database are :class:`SpmError` with a one-line message,
never a raw SQLAlchemy exception.

Layout: this module holds :class:`Store` (write and read transactions, the checks
of the audit head); the engine, its SQLite settings and the URLs it accepts are
:mod:`secfl.spm._engine`; a transaction and its operations, one view per concern
(``tx.counters``, ``tx.policies``...), are :class:`secfl.spm._tx.Tx`; the tables and
prebuilt statements are in :mod:`secfl.spm._schema`, the records in
:mod:`secfl.spm._records` (importable from here too).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import Connection, insert, inspect, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import IntegrityError as DbIntegrityError

from secfl.errors import AuditError, IntegrityError, SpmError
from secfl.spm import _audit
from secfl.spm._audit import GENESIS, AuditEntry
from secfl.spm._engine import db_error, normalise_url, open_engine
from secfl.spm._floor_changes import replayed
from secfl.spm._integrity import Integrity
from secfl.spm._records import (
    CertificateRecord,
    PolicyRecord,
    RevocationRecord,
    SecretRecord,
    SessionRecord,
    normalise_serial,
)
from secfl.spm._schema import (
    SCHEMA_UPGRADES,
    SCHEMA_VERSION,
    audit_head_table,
    audit_table,
    meta_table,
    metadata,
)
from secfl.spm._tx import Tx
from secfl.spm._tx_audit import AUDIT_HEAD_MAC
from secfl.spm._tx_sessions import NONCE_GRACE

__all__ = [
    "AUDIT_HEAD_MAC",
    "NONCE_GRACE",
    "CertificateRecord",
    "PolicyRecord",
    "RevocationRecord",
    "SecretRecord",
    "SessionRecord",
    "Store",
    "Tx",
    "normalise_serial",
]


class Store:
    """The SPM's database. ``audit_key`` (derived from the master key) authenticates the
    head of the audit log; without it appends are not authenticated (tests, tools)."""

    def __init__(
        self,
        url: str,
        *,
        audit_key: bytes | None = None,
        integrity: Integrity | None = None,
        read_only: bool = False,
    ) -> None:
        parsed = normalise_url(url)
        self.url = parsed.render_as_string(hide_password=True)
        self.dialect: Literal["sqlite", "postgresql"] = (
            "sqlite" if parsed.drivername.startswith("sqlite") else "postgresql"
        )
        self._audit_key = audit_key
        #: With it, every row is MAC'd and checked, and nothing may go back
        #: (secfl.spm._integrity); without it (tests, tools) rows are taken as they are.
        self.integrity = integrity
        #: Read only (``secfl audit``): nothing is created or written, not even the file.
        self.read_only = read_only
        self._local = threading.local()
        self._engine = open_engine(parsed, read_only=read_only)
        #: SQLite: the process-wide writer lock and its one writer connection.
        self._write_lock: threading.Lock | None = (
            threading.Lock() if self.dialect == "sqlite" else None
        )
        self._writer: Connection | None = None

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def close(self) -> None:
        if self._write_lock is not None:
            with self._write_lock:
                writer, self._writer = self._writer, None
                if writer is not None:
                    writer.close()
        self._engine.dispose()
        if self.integrity is not None and self.integrity.anchor is not None:
            self.integrity.anchor.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_all(self) -> None:
        """Create the tables and the audit head row (idempotent; safe for replicas)."""
        if self.read_only:
            raise SpmError("store: opened read only: nothing is created")
        row = None
        try:
            with self._engine.connect() as conn:
                with conn.begin():
                    metadata.create_all(conn)
                with conn.begin():
                    if conn.execute(select(audit_head_table.c.id)).first() is None:
                        conn.execute(insert(audit_head_table).values(id=1, seq=0, hash=GENESIS))
                    row = conn.execute(
                        select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                    ).first()
                    if row is None:
                        conn.execute(
                            insert(meta_table).values(key="schema_version", value=SCHEMA_VERSION)
                        )
                    elif bytes(row.value) in SCHEMA_UPGRADES:
                        conn.execute(
                            update(meta_table)
                            .where(meta_table.c.key == "schema_version")
                            .values(value=SCHEMA_VERSION)
                        )
                        row = None
        except DbIntegrityError:
            pass  # another replica initialised it at the same moment
        except DBAPIError as exc:
            raise db_error(exc) from None
        if row is not None and bytes(row.value) != SCHEMA_VERSION:
            found = bytes(row.value)[:16].decode("ascii", "replace")
            raise SpmError(
                f"store: the database has schema version {found}, this SPM needs "
                f"{SCHEMA_VERSION.decode()} (rows authenticated by the SPM); run the release "
                "that made it, or start the SPM on a new database and have the board submit "
                "the policies again (docs/operations.md: The SPM's master key and backups)"
            )

    def schema_version(self) -> bytes | None:
        """The schema version the database records; None if it has no SPM tables
        (another program's database, or an SPM's never started). Reads only."""
        try:
            with self._engine.connect() as conn:
                tables = inspect(conn)
                spm = (meta_table, audit_head_table, audit_table)
                if not all(tables.has_table(t.name) for t in spm):
                    return None
                row = conn.execute(
                    select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).first()
        except DBAPIError as exc:
            raise db_error(exc) from None
        value = None if row is None else row.value
        return bytes(value) if isinstance(value, bytes | memoryview) else b""

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One atomic, durable write transaction, serialised with every other writer.

        Commits when the block ends, rolls back if it raises. Not reentrant: opening a
        write transaction inside another one in the same thread is an :class:`SpmError`.
        """
        if self.read_only:
            raise SpmError("store: opened read only: nothing is written")
        if getattr(self._local, "writing", False):
            raise SpmError("store: nested write transactions are not supported")
        self._local.writing = True
        try:
            with self._write_connection() as conn:
                try:
                    with conn.begin():
                        tx = self._tx(conn, writable=True)
                        head = tx.audit.lock_head()
                        self.check_head(tx, head)
                        self._catch_up(tx, head)
                        try:
                            yield tx
                            tx.audit.flush_head()
                        finally:
                            tx.close()
                except DBAPIError as exc:
                    self._drop_writer()
                    raise db_error(exc) from None
            self._committed(tx)
        finally:
            self._local.writing = False

    def _tx(self, conn: Connection, *, writable: bool) -> Tx:
        return Tx(
            conn,
            writable=writable,
            dialect=self.dialect,
            integrity=self.integrity,
            audit_key=self._audit_key,
        )

    def check_head(self, tx: Tx, head: tuple[int, str]) -> None:
        """Refuse a database whose audit head (read in ``tx``) is not authentic or
        went back."""
        if self.integrity is None:
            return
        if self._audit_key is not None:
            mac = tx.meta.get(AUDIT_HEAD_MAC)
            try:
                _audit.check_head_mac(
                    self._audit_key, head[0], head[1], None if mac is None else mac.decode()
                )
            except (AuditError, UnicodeDecodeError) as exc:
                raise IntegrityError(f"integrity: {exc}") from None
        self.integrity.floors.check_head(*head, since=tx.since)

    def _catch_up(self, tx: Tx, head: tuple[int, str]) -> None:
        """Raise the floors by what other SPMs sharing this database committed since
        this one last looked (verified as a continuation of the chain it knows)."""
        if self.integrity is None:
            return
        floors = self.integrity.floors
        seq, known = floors.head
        if head[0] <= seq or not known:
            return
        verifier = _audit.ChainVerifier(start_hash=known, start_seq=seq + 1)
        changes: list[tuple[Any, ...]] = []  # applied only once the chain verified to the head
        try:
            for entries in tx.audit.pages(seq):
                for entry in entries:
                    verifier.feed(entry)
                    changes += replayed(entry.event, entry.policy, entry.detail)
            verifier.finish(head)
        except AuditError as exc:
            raise IntegrityError(f"integrity: {exc} (after entry {floors.head[0]})") from None
        for change in changes:
            floors.apply(change)
        floors.raise_head(*head)

    def sync(self) -> None:
        """Check the database's head and learn what other SPMs committed (read only)."""
        if self.integrity is None:
            return
        with self.read() as tx:
            head = tx.audit.head()
            self.check_head(tx, head)
            self._catch_up(tx, head)

    def _committed(self, tx: Tx) -> None:
        """After a commit: raise the floors by what it changed, move the anchor."""
        if self.integrity is None:
            return
        for change in tx.changes:
            self.integrity.floors.apply(change)
        head = tx.audit.known_head
        if head is not None:
            self.integrity.floors.raise_head(*head)
            if self.integrity.anchor is not None:
                self.integrity.anchor.write(*head)

    @contextmanager
    def _write_connection(self) -> Iterator[Connection]:
        """SQLite: the one writer connection, kept open, under the process-wide lock
        (pool checkouts would cost more than the increments themselves). PostgreSQL:
        a pooled connection; the audit_head row lock serialises."""
        if self._write_lock is None:
            try:
                with self._engine.connect() as conn:
                    yield conn
            except DBAPIError as exc:
                raise db_error(exc) from None
            return
        with self._write_lock:
            if self._writer is None:
                try:
                    conn = self._engine.connect()
                except DBAPIError as exc:
                    raise db_error(exc) from None
                conn.execution_options(secfl_begin="BEGIN IMMEDIATE")
                self._writer = conn
            yield self._writer

    def _drop_writer(self) -> None:
        """Forget the SQLite writer connection after a database error; the next
        transaction opens a fresh one."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.invalidate()
                writer.close()
            except DBAPIError:
                pass

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A read-only transaction over one consistent snapshot; takes no write lock."""
        try:
            with self._engine.connect() as conn:
                if self.dialect == "postgresql":
                    conn.execution_options(isolation_level="REPEATABLE READ")
                else:
                    conn.execution_options(secfl_begin="BEGIN")
                with conn.begin():
                    tx = self._tx(conn, writable=False)
                    try:
                        yield tx
                    finally:
                        tx.close()
        except DBAPIError as exc:
            raise db_error(exc) from None

    def audit_since(
        self, seq: int, limit: int = 1000, *, chars: int | None = None
    ) -> list[AuditEntry]:
        """Entries after ``seq`` (0: from the start), in order, at most ``limit`` (and,
        with ``chars``, as many as hold that much detail: at least one)."""
        with self.read() as tx:
            return tx.audit.since(seq, limit, chars=chars)

    def audit_head(self) -> tuple[int, str]:
        """The log's head (last seq, its hash), as committed."""
        with self.read() as tx:
            return tx.audit.head()

    def verify_audit(self, audit_key: bytes, *, page: int = 1000) -> int:
        """Verify the whole log in the database and its authenticated head; return the
        number of entries. :class:`AuditError` names the first problem found: a modified,
        missing or reordered entry, a removed tail, or a rewritten (rehashed) chain."""
        return self.verify_audit_head(audit_key, page=page)[0]

    def verify_audit_head(
        self, audit_key: bytes, *, page: int = 1000, seen: tuple[int, str] | None = None
    ) -> tuple[int, tuple[int, str]]:
        """:meth:`verify_audit`, and the head verified; ``seen``: a head read before,
        which the log must still hold (:class:`~secfl.spm._audit.ChainVerifier`)."""
        with self.read() as tx:
            head = tx.audit.head()
            mac = tx.meta.get(AUDIT_HEAD_MAC)
            _audit.check_head_mac(
                audit_key, head[0], head[1], None if mac is None else mac.decode()
            )
            try:  # the snapshot verified is the one checked against the floors: a head
                # restored with its old MAC after the store opened is a rollback
                self.check_head(tx, head)
            except IntegrityError as exc:
                raise AuditError(str(exc)) from None

            def since(after: int, limit: int) -> list[AuditEntry]:
                return tx.audit.since(after, limit, chars=_audit.READ_CHARS)

            return _audit.verify_pages(since, head, page, seen=seen), head
