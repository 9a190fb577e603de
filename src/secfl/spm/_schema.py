"""The SPM database schema (SQLAlchemy Core) and its hot statements, built once.

Timestamps are integer microseconds since the epoch (see :func:`secfl.spm._records.to_us`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.types import TypeDecorator

from secfl.errors import IntegrityError

__all__ = [
    "INSERT",
    "Q_COUNTER",
    "Q_COUNTER_SET",
    "Q_CURRENT_POLICY",
    "Q_HEAD",
    "Q_HEAD_LOCK",
    "Q_HEAD_UPDATE",
    "Q_META_GET",
    "Q_META_UPDATE",
    "Q_SECRET",
    "Q_SESSION",
    "SCHEMA_UPGRADES",
    "SCHEMA_VERSION",
    "audit_head_table",
    "audit_table",
    "certificates_table",
    "counters_table",
    "meta_table",
    "metadata",
    "nonces_table",
    "policies_table",
    "policy_keys_table",
    "revocations_table",
    "secrets_table",
    "sessions_table",
    "volume_tags_table",
]


class Blob(TypeDecorator[bytes]):
    """A binary column whose values must read back as bytes. SQLite keeps whatever the
    host stored: an integer N in a binary column made ``bytes(N)`` allocate N bytes
    (a 2**40 was a MemoryError at start) before any MAC was checked."""

    impl = LargeBinary
    cache_ok = True

    def process_result_value(self, value: object, dialect: object) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        if isinstance(value, bytearray | memoryview):
            return bytes(value)
        raise IntegrityError(
            f"integrity: a binary column holds a value of type {type(value).__name__}: the "
            "database was modified outside the SPM"
        )


#: 2: every row the SPM relies on carries a MAC (secfl.spm._integrity); sessions name
#: their certificate and attested identity; revocations name what they revoke.
#: 3: every store of a secret is in the audit log (``secret.stored``), so a release that
#: stores secrets without it (2) must not write to the database any more: its stores
#: would be refused as rollbacks.
SCHEMA_VERSION = b"3"
#: Versions a start takes to :data:`SCHEMA_VERSION` in place (the tables are the same;
#: the start logs the secrets stored before, secfl.spm._state.log_unlogged_secrets).
SCHEMA_UPGRADES = frozenset({b"2"})

metadata = MetaData()

meta_table = Table(
    "meta",
    metadata,
    Column("key", String(), primary_key=True),
    Column("value", Blob(), nullable=False),
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
    Column("mac", String(), nullable=True),
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
    Column("ciphertext", Blob(), nullable=False),
    Column("created_at", BigInteger(), nullable=False),
    Column("mac", String(), nullable=True),
    PrimaryKeyConstraint("policy", "name"),
)

policy_keys_table = Table(
    "policy_keys",
    metadata,
    Column("policy", String(), primary_key=True),
    Column("wrapped", Blob(), nullable=False),
    Column("shares", Text(), nullable=False),
    Column("mac", String(), nullable=True),
)

nonces_table = Table(
    "nonces",
    metadata,
    Column("nonce", Blob(), primary_key=True),
    Column("expires_at", BigInteger(), nullable=False, index=True),
    Column("used", Boolean(), nullable=False),
)

sessions_table = Table(
    "sessions",
    metadata,
    Column("token_sha256", Blob(), primary_key=True),
    Column("policy", String(), nullable=False),
    Column("service", String(), nullable=False),
    Column("policy_version", Integer(), nullable=False),
    Column("expires_at", BigInteger(), nullable=False, index=True),
    #: The certificate issued with the session: revoking it ends the session.
    Column("serial", String(), nullable=False),
    #: What the workload was attested as (canonical JSON of kind, measurements,
    #: platform): checked against every later version of the policy.
    Column("identity", Text(), nullable=False),
    Column("mac", String(), nullable=True),
)

counters_table = Table(
    "counters",
    metadata,
    Column("policy", String(), nullable=False),
    Column("name", String(), nullable=False),
    Column("value", BigInteger(), nullable=False),
    Column("mac", String(), nullable=True),
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
    Column("mac", String(), nullable=True),
    PrimaryKeyConstraint("policy", "serial"),
)

revocations_table = Table(
    "revocations",
    metadata,
    Column("policy", String(), nullable=False),
    #: certificate (subject: serial), service (subject: service name), measurement
    #: (subject: measurement), platform (subject: chip or platform ID).
    Column("kind", String(), nullable=False),
    Column("subject", String(), nullable=False),
    Column("service", String(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("at", BigInteger(), nullable=False),
    Column("mac", String(), nullable=True),
    PrimaryKeyConstraint("policy", "kind", "subject"),
)

volume_tags_table = Table(
    "volume_tags",
    metadata,
    Column("policy", String(), nullable=False),
    Column("volume", String(), nullable=False),
    Column("version", BigInteger(), nullable=False),
    Column("tag", String(), nullable=False),
    Column("at", BigInteger(), nullable=False),
    Column("mac", String(), nullable=True),
    PrimaryKeyConstraint("policy", "volume"),
)

# Hot statements, built once (building SQLAlchemy expressions costs more than running them).
_p = bindparam
Q_META_GET = select(meta_table.c.value).where(meta_table.c.key == _p("b_key"))
Q_META_UPDATE = (
    update(meta_table).where(meta_table.c.key == _p("b_key")).values(value=_p("b_value"))
)
Q_HEAD = select(audit_head_table.c.seq, audit_head_table.c.hash).where(audit_head_table.c.id == 1)
Q_HEAD_LOCK = Q_HEAD.with_for_update()
Q_HEAD_UPDATE = (
    update(audit_head_table)
    .where(audit_head_table.c.id == 1)
    .values(seq=_p("b_new_seq"), hash=_p("b_new_hash"))
)
Q_COUNTER_SET = (
    update(counters_table)
    .where(
        counters_table.c.policy == _p("b_policy"),
        counters_table.c.name == _p("b_name"),
        counters_table.c.value == _p("b_old"),
    )
    .values(value=_p("b_value"), mac=_p("b_mac"))
)
Q_COUNTER = select(counters_table.c.value, counters_table.c.mac).where(
    counters_table.c.policy == _p("b_policy"), counters_table.c.name == _p("b_name")
)
Q_SESSION = select(sessions_table).where(sessions_table.c.token_sha256 == _p("b_token"))
Q_SECRET = select(secrets_table).where(
    secrets_table.c.policy == _p("b_policy"), secrets_table.c.name == _p("b_name")
)
Q_CURRENT_POLICY = (
    select(policies_table)
    .where(policies_table.c.name == _p("b_name"))
    .order_by(policies_table.c.version.desc())
    .limit(1)
)
#: One prebuilt INSERT per table.
INSERT = {t: insert(t) for t in metadata.sorted_tables}
