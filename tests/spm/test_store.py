"""The SPM store on SQLite and PostgreSQL: records, uniqueness, nonces, counters under
concurrency, transactions, and durability across SIGKILL."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from secfl.errors import SpmError
from secfl.spm._engine import normalise_url
from secfl.spm._store import (
    NONCE_GRACE,
    PolicyRecord,
    SecretRecord,
    Store,
    normalise_serial,
)
from tests.spm.conftest import AUDIT_KEY, drop_pg_database, fresh_pg_database

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def policy(version: int, digest: str, predecessor: str = "") -> PolicyRecord:
    return PolicyRecord(
        name="fl",
        version=version,
        digest=digest,
        predecessor=predecessor,
        document='{"name":"fl"}',
        signatures='[{"member":"alice"}]',
        created_at=T0,
    )


def test_policies(store: Store) -> None:
    with store.read() as tx:
        assert tx.policies.current("fl") is None
        assert tx.policies.names() == []
    with store.transaction() as tx:
        tx.policies.add(policy(1, "a" * 64))
    with store.transaction() as tx:
        tx.policies.add(policy(2, "b" * 64, "a" * 64))
        other = PolicyRecord("other", 1, "a" * 64, "", "{}", "[]")
        tx.policies.add(other)  # the same digest under another name is fine
    with store.read() as tx:
        current = tx.policies.current("fl")
        assert current == policy(2, "b" * 64, "a" * 64)
        assert current.created_at == T0 and current.created_at.tzinfo is not None
        assert tx.policies.version("fl", 1) == policy(1, "a" * 64)
        assert tx.policies.version("fl", 3) is None
        assert tx.policies.by_digest("fl", "b" * 64) == current
        assert [p.version for p in tx.policies.history("fl")] == [1, 2]
        assert tx.policies.names() == ["fl", "other"]


def test_policy_unique_violations_are_spm_errors(store: Store) -> None:
    with store.transaction() as tx:
        tx.policies.add(policy(1, "a" * 64))
    expected = "policy 'fl' version 1 already exists"
    with pytest.raises(SpmError, match=expected), store.transaction() as tx:
        tx.policies.add(policy(1, "c" * 64))
    expected = "already has a version with digest"
    with pytest.raises(SpmError, match=expected), store.transaction() as tx:
        tx.policies.add(policy(2, "a" * 64, "a" * 64))
    with store.read() as tx:
        assert [p.version for p in tx.policies.history("fl")] == [1]


def test_raw_integrity_error_becomes_spm_error(store: Store) -> None:
    # Bypass the pre-checks: the database constraint itself must surface as SpmError.
    with store.transaction() as tx:
        tx.certificates.add("fl", "agg", "ab", "f" * 64, T0)
    with pytest.raises(SpmError, match="already exists"), store.transaction() as tx:
        tx.certificates.add("fl", "agg", "ab", "f" * 64, T0)


def test_rollback_on_exception(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.policies.add(policy(1, "a" * 64))
        tx.counters.create("fl", "round")
        tx.audit.append("policy.accepted", "fl", {"version": 1})
        raise RuntimeError("boom")
    with store.read() as tx:
        assert tx.policies.current("fl") is None
        assert tx.counters.get("fl", "round") is None
    assert store.audit_head()[0] == 0


def test_meta_secrets_and_policy_keys(store: Store) -> None:
    blob = bytes(range(256)) * 4
    with store.transaction() as tx:
        assert tx.meta.get("k") is None
        tx.meta.put("k", b"\x00one")
        tx.meta.put("k", b"\x00two")
        tx.secrets.put(SecretRecord("fl", "ca", "x509-ca", "d" * 64, blob, T0), "new")
        tx.data_keys.put("fl", b"wrapped-1", '{"shares":1}')
    with store.transaction() as tx:
        assert tx.meta.get("k") == b"\x00two"
        assert tx.secrets.get("fl", "ca") == SecretRecord("fl", "ca", "x509-ca", "d" * 64, blob, T0)
        tx.secrets.put(SecretRecord("fl", "ca", "x509-ca", "e" * 64, b"new", T0), "redefined")
        tx.secrets.put(SecretRecord("fl", "aes", "aes-256", "f" * 64, b"k", T0), "new")
        tx.data_keys.put("fl", b"wrapped-2", '{"shares":2}')
    with store.read() as tx:
        replaced = tx.secrets.get("fl", "ca")
        assert replaced is not None and replaced.ciphertext == b"new"
        assert replaced.definition_digest == "e" * 64
        assert [s.name for s in tx.secrets.of_policy("fl")] == ["aes", "ca"]
        assert tx.secrets.get("fl", "missing") is None
        assert tx.secrets.get("other", "ca") is None
        assert tx.data_keys.get("fl") == b"wrapped-2"
        assert tx.data_keys.shares("fl") == '{"shares":2}'
        assert tx.data_keys.get("other") is None and tx.data_keys.shares("other") is None


def test_nonces_are_spent_once_and_pruned(store: Store) -> None:
    later = T0 + timedelta(seconds=60)
    with store.transaction() as tx:
        assert tx.nonces.spend(b"a" * 32, later) is True
        assert tx.nonces.spend(b"a" * 32, later) is False  # same transaction
    with store.transaction() as tx:
        assert tx.nonces.spend(b"a" * 32, later) is False  # and after the commit
        assert tx.nonces.spend(b"b" * 32, later) is True
    # Spending is part of the transaction: one that rolls back leaves the nonce unspent.
    with pytest.raises(RuntimeError), store.transaction() as tx:
        assert tx.nonces.spend(b"c" * 32, later) is True
        raise RuntimeError("refused")
    with store.transaction() as tx:
        assert tx.nonces.spend(b"c" * 32, later) is True
        # Long-expired nonces are forgotten (their MAC expiry refuses them anyway).
        tx.nonces.prune(later + NONCE_GRACE + timedelta(seconds=1))
        assert tx.nonces.spend(b"a" * 32, later) is True


def test_sessions_and_prune(store: Store) -> None:
    token = bytes(32)
    with store.transaction() as tx:
        tx.sessions.add(token, "fl", "aggregator", 2, T0 + timedelta(minutes=5))
        tx.nonces.spend(b"n" * 16, T0)
    with store.read() as tx:
        session = tx.sessions.get(token)
        assert session is not None
        assert (session.policy, session.service, session.policy_version) == ("fl", "aggregator", 2)
        assert session.expires_at == T0 + timedelta(minutes=5)
        assert tx.sessions.get(b"\x01" * 32) is None
    with pytest.raises(SpmError, match="session with this token"), store.transaction() as tx:
        tx.sessions.add(token, "fl", "aggregator", 2, T0)
    with store.transaction() as tx:
        at = T0 + NONCE_GRACE + timedelta(hours=1)
        assert (tx.sessions.prune(at), tx.nonces.prune(at)) == (1, 1)
        assert tx.sessions.get(token) is None


def test_counters(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.counters.get("fl", "round") is None
        tx.counters.create("fl", "round")
        tx.counters.create("fl", "round")  # idempotent
        assert tx.counters.get("fl", "round") == 0
        assert tx.counters.increment("fl", "round") == 1
        assert tx.counters.increment("fl", "round") == 2
    with store.transaction() as tx:
        tx.counters.create("fl", "round")  # still idempotent: keeps its value
        tx.counters.create("fl", "model")
        assert tx.counters.of_policy("fl") == {"round": 2, "model": 0}
    expected = "counter: 'nope' of policy 'fl' does not exist"
    with pytest.raises(SpmError, match=expected), store.transaction() as tx:
        tx.counters.increment("fl", "nope")


def test_counters_under_concurrency(store: Store) -> None:
    """8 threads x 200 increments, each its own transaction with an audit entry:
    strictly increasing per thread, no duplicates, final value 1600, chain intact."""
    with store.transaction() as tx:
        tx.counters.create("fl", "round")
    seen: list[list[int]] = [[] for _ in range(8)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(200):
                with store.transaction() as tx:
                    value = tx.counters.increment("fl", "round")
                    tx.audit.append("counter.increment", "fl", {"value": value})
                seen[i].append(value)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for values in seen:
        assert values == sorted(values) and len(set(values)) == len(values)
    everything = sorted(v for values in seen for v in values)
    assert everything == list(range(1, 1601))
    with store.read() as tx:
        assert tx.counters.get("fl", "round") == 1600
    assert store.verify_audit(bytes(range(32))) == 1600
    entries = store.audit_since(0, limit=2000)
    assert [e.detail["value"] for e in entries] == list(range(1, 1601))


def test_certificates_and_revocations(store: Store) -> None:
    not_after = T0 + timedelta(days=1)
    with store.transaction() as tx:
        tx.certificates.add("fl", "aggregator", "0A1B", "f" * 64, not_after)
        tx.certificates.add("fl", "site-1", 0x2C, "e" * 64, not_after)
    expected = "serial a1b of policy 'fl' already exists"
    with pytest.raises(SpmError, match=expected), store.transaction() as tx:
        tx.certificates.add("fl", "aggregator", "a1b", "f" * 64, not_after)
    with store.transaction() as tx:
        cert = tx.certificates.get("fl", "0x0a1b")
        assert cert is not None
        assert (cert.serial, cert.service, cert.fingerprint) == ("a1b", "aggregator", "f" * 64)
        assert cert.not_after == not_after
        assert tx.certificates.get("other", "a1b") is None
        services = sorted(c.service for c in tx.certificates.of_policy("fl"))
        assert services == ["aggregator", "site-1"]
        assert [c.serial for c in tx.certificates.of_policy("fl", "site-1")] == ["2c"]
        assert tx.revocations.of_policy("fl") == []
        tx.revocations.add("fl", "2C", "site-1", "poisoned updates", T0)
    with pytest.raises(SpmError, match="already revoked"), store.transaction() as tx:
        tx.revocations.add("fl", "2c", "site-1", "again", T0)
    with store.read() as tx:
        (rev,) = tx.revocations.of_policy("fl")
        assert (rev.policy, rev.serial, rev.service, rev.reason, rev.at) == (
            "fl",
            "2c",
            "site-1",
            "poisoned updates",
            T0,
        )
        assert tx.revocations.is_revoked("fl", 0x2C) and not tx.revocations.is_revoked("fl", "a1b")


def test_naive_datetimes_and_read_only(store: Store) -> None:
    with pytest.raises(SpmError, match="timezone-aware"), store.transaction() as tx:
        tx.nonces.spend(b"x", datetime(2025, 1, 1))
    with store.read() as tx, pytest.raises(SpmError, match="read-only"):
        tx.meta.put("k", b"v")
    with store.transaction() as tx:
        pass
    with pytest.raises(SpmError, match="finished"):
        tx.meta.get("k")


def test_nested_write_transaction_is_refused(store: Store) -> None:
    with store.transaction(), pytest.raises(SpmError, match="nested"), store.transaction():
        pass
    with store.transaction() as tx:  # the flag was reset
        tx.meta.put("k", b"v")


def test_urls() -> None:
    assert normalise_url("postgresql://u@h:5/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("sqlite:////tmp/x.db").drivername == "sqlite+pysqlite"
    with pytest.raises(SpmError, match="unsupported database URL scheme 'mysql'"):
        normalise_url("mysql://u@h/db")
    with pytest.raises(SpmError, match="in-memory"):
        normalise_url("sqlite://")
    with pytest.raises(SpmError, match="not a database URL"):
        normalise_url("not a url")
    assert normalise_serial("00:0A:1B") == "a1b"
    with pytest.raises(SpmError, match="not hex"):
        normalise_serial("xyz")


def test_uninitialised_and_unreachable(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    no_tables = "has no SPM tables: it is not an SPM's database"
    with pytest.raises(SpmError, match=no_tables), store.transaction():
        pass
    store.close()
    # Opened read only, nothing is created: a missing file is refused, not made.
    with pytest.raises(SpmError, match="store: no database file .*missing.db"):
        Store(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True)
    assert not (tmp_path / "missing.db").exists()
    with Store(f"sqlite:///{tmp_path / 'empty.db'}", read_only=True) as reader:
        assert reader.schema_version() is None
        with pytest.raises(SpmError, match="store: opened read only"):
            reader.create_all()
        with pytest.raises(SpmError, match="store: opened read only"), reader.transaction():
            pass
    # Nothing listens on port 1: a clear SpmError, not a raw driver exception.
    down = Store("postgresql://nobody@127.0.0.1:1/secfl")
    with pytest.raises(SpmError, match="store: database error"):
        down.create_all()
    down.close()


def test_create_all_is_idempotent(store_url: str) -> None:
    for _ in range(2):
        with Store(store_url) as s:
            s.create_all()
            with s.transaction() as tx:
                tx.audit.append("start", None, {})
    with Store(store_url) as s:
        assert s.audit_head()[0] == 2


def test_sqlite_settings_and_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "spm.db"
    with Store(f"sqlite:///{path}") as store:
        store.create_all()
        with store.read() as tx:
            conn = tx.connection()
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_postgresql_writers_lock_the_audit_head(pg_url: str) -> None:
    """A second PostgreSQL writer (another replica) waits for the first one's commit."""
    url, name = fresh_pg_database(pg_url)
    a, b = Store(url), Store(url)
    a.create_all()
    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait()
        with b.transaction() as tx:
            order.append(f"b saw {tx.counters.get('fl', 'c')}")

    with a.transaction() as tx:
        tx.counters.create("fl", "c")
    thread = threading.Thread(target=second)
    thread.start()
    with a.transaction() as tx:
        inside.set()
        tx.counters.increment("fl", "c")
        thread.join(timeout=0.5)
        assert thread.is_alive()  # blocked on the audit_head row lock
        order.append("a commits")
    thread.join()
    assert order == ["a commits", "b saw 1"]
    a.close()
    b.close()
    drop_pg_database(pg_url, name)


_CHILD = textwrap.dedent(
    """
    import sys
    from secfl.spm._store import Store
    store = Store(sys.argv[1])
    store.create_all()
    with store.transaction() as tx:
        tx.counters.create("fl", "round")
    while True:
        with store.transaction() as tx:
            value = tx.counters.increment("fl", "round")
            tx.audit.append("counter.increment", "fl", {"value": value})
        print(value, flush=True)
    """
)


def test_sqlite_counter_survives_sigkill(tmp_path: Path) -> None:
    """Every value a killed process reported as committed is still there after reopening."""
    url = f"sqlite:///{tmp_path / 'spm.db'}"
    last = 0
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        try:
            for line in child.stdout:
                last = int(line)
                if last >= 300:
                    break
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        errors = child.stderr.read()
    assert child.returncode == -signal.SIGKILL
    assert last >= 300, errors
    with Store(url) as store:
        with store.read() as tx:
            value = tx.counters.get("fl", "round")
        assert value is not None and value >= last
        # Nothing torn: the chain verifies and has exactly one entry per increment.
        assert store.audit_head()[0] == value
        entries = store.audit_since(0, limit=100_000)
        assert [e.detail["value"] for e in entries] == list(range(1, value + 1))
        with store.transaction() as tx:
            assert tx.counters.increment("fl", "round") == value + 1


def test_two_stores_on_one_file_serialise_through_sqlite(tmp_path: Path) -> None:
    """Two Store objects (as two processes would) share no Python lock: BEGIN IMMEDIATE
    and the busy timeout alone keep the counter and the audit chain from forking."""
    url = f"sqlite:///{tmp_path / 'spm.db'}"
    stores = [Store(url, audit_key=AUDIT_KEY), Store(url, audit_key=AUDIT_KEY)]
    stores[0].create_all()
    with stores[0].transaction() as tx:
        tx.counters.create("fl", "round")
    values: list[int] = []
    lock = threading.Lock()

    def work(store: Store) -> None:
        for _ in range(100):
            with store.transaction() as tx:
                value = tx.counters.increment("fl", "round")
                tx.audit.append("counter.increment", "fl", {"value": value})
            with lock:
                values.append(value)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(values) == list(range(1, 401))
    assert stores[1].verify_audit(AUDIT_KEY) == 400
    for s in stores:
        s.close()
