"""The SPM's durable state: SQLite (default) or PostgreSQL through SQLAlchemy Core.

Everything goes through transactions::

    store = Store("sqlite:///var/lib/secfl/spm.db", audit_key=master.derive("audit"))
    store.create_all()
    with store.transaction() as tx:          # one atomic, durable write transaction
        value = tx.increment("fl", "round")
        tx.append_audit("counter.increment", "fl", {"counter": "round", "value": value})

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
entries carry their time as an ISO-8601 UTC string (see :mod:`secfl.spm.audit`).

Errors: a refused write (a duplicate policy version, an unknown counter...) and an
unreachable or failing database are :class:`SpmError` with a one-line message,
never a raw SQLAlchemy exception.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError

from secfl.errors import AuditError, SpmError
from secfl.spm import audit as _audit
from secfl.spm.audit import GENESIS, AuditEntry

#: Meta key of the head MAC (see :func:`secfl.spm.audit.head_mac`).
AUDIT_HEAD_MAC = "audit_head_mac"
SCHEMA_VERSION = b"1"
#: Expired nonces are kept this long (reported as "expired", not "unknown"), then pruned.
NONCE_GRACE = timedelta(minutes=10)
BUSY_TIMEOUT_MS = 30_000


# --- schema ---------------------------------------------------------------------------------

metadata = MetaData()

meta_table = Table(
    "meta",
    metadata,
    Column("key", String(), primary_key=True),
    Column("value", LargeBinary(), nullable=False),
)

audit_head_table = Table(
    "audit_head",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=False),
    Column("seq", BigInteger(), nullable=False),
    Column("hash", String(), nullable=False),
)

audit_table = Table(
    "audit",
    metadata,
    Column("seq", BigInteger(), primary_key=True, autoincrement=False),
    Column("at", String(), nullable=False),
    Column("event", String(), nullable=False),
    Column("policy", String(), nullable=True, index=True),
    Column("detail", Text(), nullable=False),
    Column("prev_hash", String(), nullable=False),
    Column("hash", String(), nullable=False),
)

policies_table = Table(
    "policies",
    metadata,
    Column("name", String(), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("digest", String(), nullable=False),
    Column("predecessor", String(), nullable=False),
    Column("document", Text(), nullable=False),
    Column("signatures", Text(), nullable=False),
    Column("created_at", BigInteger(), nullable=False),
    PrimaryKeyConstraint("name", "version"),
    UniqueConstraint("name", "digest", name="uq_policies_name_digest"),
)

secrets_table = Table(
    "secrets",
    metadata,
    Column("policy", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("kind", String(), nullable=False),
    Column("definition_digest", String(), nullable=False),
    Column("ciphertext", LargeBinary(), nullable=False),
    Column("created_at", BigInteger(), nullable=False),
    PrimaryKeyConstraint("policy", "name"),
)

policy_keys_table = Table(
    "policy_keys",
    metadata,
    Column("policy", String(), primary_key=True),
    Column("wrapped", LargeBinary(), nullable=False),
    Column("shares", Text(), nullable=False),
)

nonces_table = Table(
    "nonces",
    metadata,
    Column("nonce", LargeBinary(), primary_key=True),
    Column("expires_at", BigInteger(), nullable=False, index=True),
    Column("used", Boolean(), nullable=False),
)

sessions_table = Table(
    "sessions",
    metadata,
    Column("token_sha256", LargeBinary(), primary_key=True),
    Column("policy", String(), nullable=False),
    Column("service", String(), nullable=False),
    Column("policy_version", Integer(), nullable=False),
    Column("expires_at", BigInteger(), nullable=False, index=True),
)

counters_table = Table(
    "counters",
    metadata,
    Column("policy", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("value", BigInteger(), nullable=False),
    PrimaryKeyConstraint("policy", "name"),
)

certificates_table = Table(
    "certificates",
    metadata,
    Column("policy", String(), nullable=False),
    Column("serial", String(), nullable=False),
    Column("service", String(), nullable=False),
    Column("fingerprint", String(), nullable=False),
    Column("not_after", BigInteger(), nullable=False),
    PrimaryKeyConstraint("policy", "serial"),
)

revocations_table = Table(
    "revocations",
    metadata,
    Column("policy", String(), nullable=False),
    Column("serial", String(), nullable=False),
    Column("service", String(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("at", BigInteger(), nullable=False),
    PrimaryKeyConstraint("policy", "serial"),
)

volume_tags_table = Table(
    "volume_tags",
    metadata,
    Column("policy", String(), nullable=False),
    Column("volume", String(), nullable=False),
    Column("version", BigInteger(), nullable=False),
    Column("tag", String(), nullable=False),
    Column("at", BigInteger(), nullable=False),
    PrimaryKeyConstraint("policy", "volume"),
)

# Hot statements, built once (building SQLAlchemy expressions costs more than running them).
_p = bindparam
_Q_META_GET = select(meta_table.c.value).where(meta_table.c.key == _p("b_key"))
_Q_META_UPDATE = (
    update(meta_table).where(meta_table.c.key == _p("b_key")).values(value=_p("b_value"))
)
_Q_HEAD = select(audit_head_table.c.seq, audit_head_table.c.hash).where(audit_head_table.c.id == 1)
_Q_HEAD_LOCK = _Q_HEAD.with_for_update()
_Q_HEAD_UPDATE = (
    update(audit_head_table)
    .where(audit_head_table.c.id == 1)
    .values(seq=_p("b_new_seq"), hash=_p("b_new_hash"))
)
_Q_INCREMENT = (
    update(counters_table)
    .where(counters_table.c.policy == _p("b_policy"), counters_table.c.name == _p("b_name"))
    .values(value=counters_table.c.value + 1)
    .returning(counters_table.c.value)
)
_Q_COUNTER = select(counters_table.c.value).where(
    counters_table.c.policy == _p("b_policy"), counters_table.c.name == _p("b_name")
)
_Q_SESSION = select(sessions_table).where(sessions_table.c.token_sha256 == _p("b_token"))
_Q_SECRET = select(secrets_table).where(
    secrets_table.c.policy == _p("b_policy"), secrets_table.c.name == _p("b_name")
)
_Q_CURRENT_POLICY = (
    select(policies_table)
    .where(policies_table.c.name == _p("b_name"))
    .order_by(policies_table.c.version.desc())
    .limit(1)
)
_INSERT = {t: insert(t) for t in metadata.sorted_tables}

# --- records --------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PolicyRecord:
    """One accepted version of a policy; ``document`` and ``signatures`` are JSON text."""

    name: str
    version: int
    digest: str
    predecessor: str
    document: str
    signatures: str
    created_at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class SecretRecord:
    """A secret's value, encrypted by the caller (``ciphertext``), and what it was made from."""

    policy: str
    name: str
    kind: str
    definition_digest: str
    ciphertext: bytes
    created_at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class SessionRecord:
    """A session of an attested service; the token itself is never stored, only its SHA-256."""

    token_sha256: bytes
    policy: str
    service: str
    policy_version: int
    expires_at: datetime


@dataclass(frozen=True)
class CertificateRecord:
    """A certificate the policy's CA issued; ``serial`` is lowercase hex without leading zeros."""

    policy: str
    serial: str
    service: str
    fingerprint: str
    not_after: datetime


@dataclass(frozen=True)
class RevocationRecord:
    policy: str
    serial: str
    service: str
    reason: str
    at: datetime


# --- helpers --------------------------------------------------------------------------------


def _us(value: datetime, what: str) -> int:
    """An aware datetime as integer microseconds since the epoch."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise SpmError(f"store: {what} must be a timezone-aware datetime")
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def normalise_serial(serial: str | int) -> str:
    """A certificate serial as lowercase hex without ``0x`` or leading zeros."""
    if isinstance(serial, int):
        value = serial
    else:
        text = serial.strip().lower().removeprefix("0x").replace(":", "")
        try:
            value = int(text, 16)
        except ValueError:
            raise SpmError(f"store: certificate serial '{serial}' is not hex") from None
    if value < 0:
        raise SpmError("store: a certificate serial cannot be negative")
    return format(value, "x")


def normalise_url(url: str) -> URL:
    """Parse a store URL: ``sqlite:///PATH`` or PostgreSQL (any of ``postgres://``,
    ``postgresql://``, ``postgresql+psycopg://``; always through psycopg 3)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SpmError(f"store: '{url}' is not a database URL") from None
    driver = parsed.drivername
    if driver in ("sqlite", "sqlite+pysqlite"):
        if not parsed.database or parsed.database == ":memory:" or "mode=memory" in url:
            raise SpmError("store: an in-memory SQLite database is not durable; give a file path")
        return parsed.set(drivername="sqlite+pysqlite")
    if driver in ("postgres", "postgresql", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    raise SpmError(
        f"store: unsupported database URL scheme '{driver}' "
        "(use sqlite:///PATH or postgresql://USER@HOST:PORT/DB)"
    )


def _db_error(exc: DBAPIError) -> SpmError:
    first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    return SpmError(f"store: database error: {first}")


# --- the transaction ------------------------------------------------------------------------


class Tx:
    """One transaction of a :class:`Store`; valid only inside its ``with`` block."""

    def __init__(self, store: Store, conn: Connection, *, writable: bool) -> None:
        self._store = store
        self._conn = conn
        self._writable = writable
        self._open = True
        self._head: tuple[int, str] | None = None
        #: Audit entries appended since the head row and its MAC were last written;
        #: both are written once, when the transaction ends (see Store.transaction).
        self._head_dirty = False

    # -- plumbing
    def _c(self) -> Connection:
        if not self._open:
            raise SpmError("store: this transaction is finished")
        return self._conn

    def _w(self) -> Connection:
        if not self._writable:
            raise SpmError("store: a read-only transaction cannot write")
        return self._c()

    def _insert(self, table: Table, values: dict[str, Any], conflict: str) -> None:
        try:
            self._w().execute(_INSERT[table], values)
        except IntegrityError:
            raise SpmError(conflict) from None

    @property
    def writable(self) -> bool:
        return self._writable

    @contextmanager
    def savepoint(self) -> Iterator[Tx]:
        """A nested transaction: if the block raises, only its changes roll back
        (the audit head included) and the outer transaction goes on."""
        self._flush_head()
        nested = self._w().begin_nested()
        try:
            yield self
        except BaseException:
            nested.rollback()
            self._head = self._store._read_head(self._c(), lock=False)
            self._head_dirty = False
            raise
        self._flush_head()
        nested.commit()

    def _flush_head(self) -> None:
        """Write the audit head row and its MAC for the entries appended so far."""
        if not self._head_dirty or self._head is None:
            return
        seq, head_hash = self._head
        conn = self._w()
        conn.execute(_Q_HEAD_UPDATE, {"b_new_seq": seq, "b_new_hash": head_hash})
        key = self._store._audit_key
        if key is not None:
            self.set_meta(AUDIT_HEAD_MAC, _audit.head_mac(key, seq, head_hash).encode())
        self._head_dirty = False

    # -- meta
    def get_meta(self, key: str) -> bytes | None:
        row = self._c().execute(_Q_META_GET, {"b_key": key}).first()
        return None if row is None else bytes(row.value)

    def set_meta(self, key: str, value: bytes) -> None:
        conn = self._w()
        done = conn.execute(_Q_META_UPDATE, {"b_key": key, "b_value": bytes(value)})
        if done.rowcount == 0:
            conn.execute(_INSERT[meta_table], {"key": key, "value": bytes(value)})

    def delete_meta(self, key: str) -> None:
        self._w().execute(delete(meta_table).where(meta_table.c.key == key))

    # -- policies
    @staticmethod
    def _policy(row: Any) -> PolicyRecord:
        return PolicyRecord(
            name=row.name,
            version=row.version,
            digest=row.digest,
            predecessor=row.predecessor,
            document=row.document,
            signatures=row.signatures,
            created_at=_dt(row.created_at),
        )

    def current_policy(self, name: str) -> PolicyRecord | None:
        """The latest version of policy ``name``."""
        row = self._c().execute(_Q_CURRENT_POLICY, {"b_name": name}).first()
        return None if row is None else self._policy(row)

    def policy_version(self, name: str, version: int) -> PolicyRecord | None:
        t = policies_table
        row = self._c().execute(select(t).where(t.c.name == name, t.c.version == version)).first()
        return None if row is None else self._policy(row)

    def policy_by_digest(self, name: str, digest: str) -> PolicyRecord | None:
        t = policies_table
        row = self._c().execute(select(t).where(t.c.name == name, t.c.digest == digest)).first()
        return None if row is None else self._policy(row)

    def policy_history(self, name: str) -> list[PolicyRecord]:
        """Every version of policy ``name``, oldest first."""
        t = policies_table
        rows = self._c().execute(select(t).where(t.c.name == name).order_by(t.c.version))
        return [self._policy(r) for r in rows]

    def policy_names(self) -> list[str]:
        t = policies_table
        rows = self._c().execute(select(t.c.name).distinct().order_by(t.c.name))
        return [r.name for r in rows]

    def add_policy(self, record: PolicyRecord) -> None:
        """Store a new version; a (name, version) or (name, digest) already present is
        an :class:`SpmError` (checks the caller's predecessor logic cannot replace)."""
        self._w()
        if self.policy_version(record.name, record.version) is not None:
            raise SpmError(f"store: policy '{record.name}' version {record.version} already exists")
        if self.policy_by_digest(record.name, record.digest) is not None:
            raise SpmError(
                f"store: policy '{record.name}' already has a version with digest {record.digest}"
            )
        self._insert(
            policies_table,
            {
                "name": record.name,
                "version": record.version,
                "digest": record.digest,
                "predecessor": record.predecessor,
                "document": record.document,
                "signatures": record.signatures,
                "created_at": _us(record.created_at, "created_at"),
            },
            f"store: policy '{record.name}' version {record.version} conflicts with a stored one",
        )

    # -- secrets
    @staticmethod
    def _secret(row: Any) -> SecretRecord:
        return SecretRecord(
            policy=row.policy,
            name=row.name,
            kind=row.kind,
            definition_digest=row.definition_digest,
            ciphertext=bytes(row.ciphertext),
            created_at=_dt(row.created_at),
        )

    def get_secret(self, policy: str, name: str) -> SecretRecord | None:
        row = self._c().execute(_Q_SECRET, {"b_policy": policy, "b_name": name}).first()
        return None if row is None else self._secret(row)

    def list_secrets(self, policy: str) -> list[SecretRecord]:
        t = secrets_table
        rows = self._c().execute(select(t).where(t.c.policy == policy).order_by(t.c.name))
        return [self._secret(r) for r in rows]

    def put_secret(self, record: SecretRecord) -> None:
        """Insert or replace the secret (policy, name)."""
        t = secrets_table
        values = {
            "kind": record.kind,
            "definition_digest": record.definition_digest,
            "ciphertext": bytes(record.ciphertext),
            "created_at": _us(record.created_at, "created_at"),
        }
        conn = self._w()
        done = conn.execute(
            update(t).where(t.c.policy == record.policy, t.c.name == record.name).values(**values)
        )
        if done.rowcount == 0:
            conn.execute(insert(t).values(policy=record.policy, name=record.name, **values))

    def delete_secret(self, policy: str, name: str) -> bool:
        t = secrets_table
        done = self._w().execute(delete(t).where(t.c.policy == policy, t.c.name == name))
        return done.rowcount > 0

    # -- policy data keys
    def get_policy_key(self, policy: str) -> bytes | None:
        """The policy's data key, wrapped under the master key."""
        t = policy_keys_table
        row = self._c().execute(select(t.c.wrapped).where(t.c.policy == policy)).first()
        return None if row is None else bytes(row.wrapped)

    def get_key_shares(self, policy: str) -> str | None:
        """The recovery shares (JSON) of the policy's data key."""
        t = policy_keys_table
        row = self._c().execute(select(t.c.shares).where(t.c.policy == policy)).first()
        return None if row is None else row.shares

    def put_policy_key(self, policy: str, wrapped: bytes, shares_json: str) -> None:
        """Insert or replace the wrapped data key of ``policy`` and its recovery shares."""
        t = policy_keys_table
        conn = self._w()
        done = conn.execute(
            update(t).where(t.c.policy == policy).values(wrapped=bytes(wrapped), shares=shares_json)
        )
        if done.rowcount == 0:
            conn.execute(
                insert(t).values(policy=policy, wrapped=bytes(wrapped), shares=shares_json)
            )

    # -- nonces
    def spend_nonce(self, nonce: bytes, expires_at: datetime) -> bool:
        """Record a self-authenticating nonce as used: True the first time, False if
        it was spent before (one INSERT; the primary key makes it single-use)."""
        t = nonces_table
        dialect_insert = pg_insert if self._store.dialect == "postgresql" else sqlite_insert
        done = self._w().execute(
            dialect_insert(t)
            .values(nonce=bytes(nonce), expires_at=_us(expires_at, "expires_at"), used=True)
            .on_conflict_do_nothing(index_elements=[t.c.nonce])
            .returning(t.c.nonce)
        )
        return done.first() is not None

    # -- sessions
    def add_session(
        self,
        token_sha256: bytes,
        policy: str,
        service: str,
        policy_version: int,
        expires_at: datetime,
    ) -> None:
        self._insert(
            sessions_table,
            {
                "token_sha256": bytes(token_sha256),
                "policy": policy,
                "service": service,
                "policy_version": policy_version,
                "expires_at": _us(expires_at, "expires_at"),
            },
            "store: a session with this token already exists",
        )

    def get_session(self, token_sha256: bytes) -> SessionRecord | None:
        """The session, expired or not (the caller compares ``expires_at`` with its clock)."""
        row = self._c().execute(_Q_SESSION, {"b_token": bytes(token_sha256)}).first()
        if row is None:
            return None
        return SessionRecord(
            token_sha256=bytes(row.token_sha256),
            policy=row.policy,
            service=row.service,
            policy_version=row.policy_version,
            expires_at=_dt(row.expires_at),
        )

    def prune(self, now: datetime) -> int:
        """Delete sessions expired at ``now`` and nonces expired before ``now - NONCE_GRACE``;
        return how many rows went."""
        conn = self._w()
        now_us = _us(now, "now")
        horizon = now_us - int(NONCE_GRACE.total_seconds() * 1_000_000)
        gone = conn.execute(delete(sessions_table).where(sessions_table.c.expires_at <= now_us))
        gone2 = conn.execute(delete(nonces_table).where(nonces_table.c.expires_at < horizon))
        return gone.rowcount + gone2.rowcount

    # -- counters
    def create_counter(self, policy: str, name: str) -> None:
        """Create the counter at 0; nothing happens if it exists."""
        if self.get_counter(policy, name) is None:
            self._insert(
                counters_table,
                {"policy": policy, "name": name, "value": 0},
                f"counter: '{name}' of policy '{policy}' was created concurrently",
            )

    def increment(self, policy: str, name: str) -> int:
        """Add one to the counter and return the new value (durable at commit)."""
        row = self._w().execute(_Q_INCREMENT, {"b_policy": policy, "b_name": name}).first()
        if row is None:
            raise SpmError(f"counter: '{name}' of policy '{policy}' does not exist")
        return int(row.value)

    def get_counter(self, policy: str, name: str) -> int | None:
        row = self._c().execute(_Q_COUNTER, {"b_policy": policy, "b_name": name}).first()
        return None if row is None else int(row.value)

    def list_counters(self, policy: str) -> dict[str, int]:
        t = counters_table
        rows = self._c().execute(select(t.c.name, t.c.value).where(t.c.policy == policy))
        return {r.name: int(r.value) for r in rows}

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
                "not_after": _us(not_after, "not_after"),
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
            not_after=_dt(row.not_after),
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
                "at": _us(at, "at"),
            },
            f"store: certificate serial {serial} of policy '{policy}' is already revoked",
        )

    # -- rollback-protected volumes
    def get_volume_tag(self, policy: str, volume: str) -> tuple[int, str] | None:
        """The newest (version, tag) recorded for a rollback-protected volume."""
        t = volume_tags_table
        row = (
            self._c()
            .execute(select(t.c.version, t.c.tag).where(t.c.policy == policy, t.c.volume == volume))
            .first()
        )
        return None if row is None else (int(row.version), str(row.tag))

    def set_volume_tag(
        self, policy: str, volume: str, version: int, tag: str, at: datetime
    ) -> None:
        """Record (version, tag) as the newest release of a volume (the caller checks
        that it is newer)."""
        t = volume_tags_table
        values = {"version": int(version), "tag": tag, "at": _us(at, "at")}
        done = self._w().execute(
            update(t).where(t.c.policy == policy, t.c.volume == volume).values(**values)
        )
        if done.rowcount == 0:
            self._insert(
                t,
                {"policy": policy, "volume": volume, **values},
                f"store: volume '{volume}' of policy '{policy}' was recorded concurrently",
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
                policy=r.policy, serial=r.serial, service=r.service, reason=r.reason, at=_dt(r.at)
            )
            for r in rows
        ]

    # -- audit
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
            _INSERT[audit_table],
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


def _entry(row: Any) -> AuditEntry:
    try:
        detail = json.loads(row.detail)
    except ValueError:
        raise AuditError(f"audit: entry {row.seq} was modified (its detail is not JSON)") from None
    if not isinstance(detail, dict):
        raise AuditError(f"audit: entry {row.seq} was modified (its detail is not an object)")
    return AuditEntry(
        seq=int(row.seq),
        at=row.at,
        event=row.event,
        policy=row.policy,
        detail=detail,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


# --- the store ------------------------------------------------------------------------------


class Store:
    """The SPM's database. ``audit_key`` (derived from the master key) authenticates the
    head of the audit log; without it appends are not authenticated (tests, tools)."""

    def __init__(self, url: str, *, audit_key: bytes | None = None) -> None:
        parsed = normalise_url(url)
        self.url = parsed.render_as_string(hide_password=True)
        self.dialect: Literal["sqlite", "postgresql"] = (
            "sqlite" if parsed.drivername.startswith("sqlite") else "postgresql"
        )
        self._audit_key = audit_key
        self._local = threading.local()
        if self.dialect == "sqlite":
            assert parsed.database is not None
            _create_private_file(Path(parsed.database))
            self._engine = create_engine(
                parsed,
                connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
                pool_size=8,
                max_overflow=32,
            )
            event.listen(self._engine, "connect", _sqlite_connect)
            event.listen(self._engine, "begin", _sqlite_begin)
            self._write_lock: threading.Lock | None = threading.Lock()
            self._writer: Connection | None = None
        else:
            self._engine = create_engine(
                parsed,
                connect_args={"connect_timeout": 10},
                pool_size=8,
                max_overflow=32,
                pool_pre_ping=True,
            )
            self._write_lock = None
            self._writer = None

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def close(self) -> None:
        if self._write_lock is not None:
            with self._write_lock:
                writer, self._writer = self._writer, None
                if writer is not None:
                    writer.close()
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_all(self) -> None:
        """Create the tables and the audit head row (idempotent; safe for replicas)."""
        try:
            with self._engine.connect() as conn:
                with conn.begin():
                    metadata.create_all(conn)
                with conn.begin():
                    if conn.execute(select(audit_head_table.c.id)).first() is None:
                        conn.execute(insert(audit_head_table).values(id=1, seq=0, hash=GENESIS))
                    if (
                        conn.execute(
                            select(meta_table.c.key).where(meta_table.c.key == "schema_version")
                        ).first()
                        is None
                    ):
                        conn.execute(
                            insert(meta_table).values(key="schema_version", value=SCHEMA_VERSION)
                        )
        except IntegrityError:
            pass  # another replica initialised it at the same moment
        except DBAPIError as exc:
            raise _db_error(exc) from None

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One atomic, durable write transaction, serialised with every other writer.

        Commits when the block ends, rolls back if it raises. Not reentrant: opening a
        write transaction inside another one in the same thread is an :class:`SpmError`.
        """
        if getattr(self._local, "writing", False):
            raise SpmError("store: nested write transactions are not supported")
        self._local.writing = True
        try:
            with self._write_connection() as conn:
                try:
                    with conn.begin():
                        tx = Tx(self, conn, writable=True)
                        tx._head = self._read_head(conn, lock=True)
                        try:
                            yield tx
                            tx._flush_head()
                        finally:
                            tx._open = False
                except DBAPIError as exc:
                    self._drop_writer()
                    raise _db_error(exc) from None
        finally:
            self._local.writing = False

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
                raise _db_error(exc) from None
            return
        with self._write_lock:
            if self._writer is None:
                try:
                    conn = self._engine.connect()
                except DBAPIError as exc:
                    raise _db_error(exc) from None
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
                    tx = Tx(self, conn, writable=False)
                    try:
                        yield tx
                    finally:
                        tx._open = False
        except DBAPIError as exc:
            raise _db_error(exc) from None

    def _read_head(self, conn: Connection, *, lock: bool) -> tuple[int, str]:
        query = _Q_HEAD_LOCK if lock and self.dialect == "postgresql" else _Q_HEAD
        try:
            row = conn.execute(query).first()
        except OperationalError as exc:
            if "no such table" in str(exc.orig) or "does not exist" in str(exc.orig):
                raise SpmError("store: the database has no SPM tables (call create_all)") from None
            raise
        except DBAPIError as exc:
            if "does not exist" in str(exc.orig):
                raise SpmError("store: the database has no SPM tables (call create_all)") from None
            raise
        if row is None:
            raise SpmError("store: the audit head row is missing (call create_all)")
        return int(row.seq), row.hash

    def audit_since(self, seq: int, limit: int = 1000) -> list[AuditEntry]:
        """Entries after ``seq`` (0: from the start), in order, at most ``limit``."""
        with self.read() as tx:
            return tx.audit_since(seq, limit)

    def audit_head(self) -> tuple[int, str]:
        with self.read() as tx:
            return tx.audit_head()

    def verify_audit(self, audit_key: bytes, *, page: int = 1000) -> int:
        """Verify the whole log in the database and its authenticated head; return the
        number of entries. :class:`AuditError` names the first problem found: a modified,
        missing or reordered entry, a removed tail, or a rewritten (rehashed) chain."""
        with self.read() as tx:
            head = tx.audit_head()
            mac = tx.get_meta(AUDIT_HEAD_MAC)
            _audit.check_head_mac(
                audit_key, head[0], head[1], None if mac is None else mac.decode()
            )
            verifier = _audit.ChainVerifier()
            last = 0
            while True:
                entries = tx.audit_since(last, page)
                for entry in entries:
                    verifier.feed(entry)
                if len(entries) < page:
                    break
                last = entries[-1].seq
            return verifier.finish(head)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take BEGIN away from the sqlite3 module; _sqlite_begin emits our own.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get("secfl_begin", "BEGIN"))


def _create_private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (its -wal and -shm follow)."""
    if path.exists():
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise SpmError(f"store: cannot create the database {path}: {exc.strerror}") from None
    os.close(fd)
