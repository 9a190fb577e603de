"""Fixtures for the SPM's tests: a real PostgreSQL server and a fresh database per test.

``pg_url`` starts a throwaway server with ``scripts/postgres.sh`` (which installs
Debian's ``postgresql`` package if needed) once per session. Set
``SECFL_SKIP_POSTGRES=1`` to skip the PostgreSQL half of the tests, except under CI
(``CI`` set to anything), where that variable is refused with a failure: CI must
test the backend that production uses. In CI, or as root (who can install it), a
server that fails to start is a test error, never a silent skip; elsewhere (a
user's clone without root) those tests skip and say why.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from secfl.spm._store import Store
from tests.conftest import in_ci

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "postgres.sh"
AUDIT_KEY = bytes(range(32))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of the session's PostgreSQL server (database ``secfl``)."""
    if os.environ.get("SECFL_SKIP_POSTGRES") == "1":
        if in_ci():
            pytest.fail(
                "postgres: SECFL_SKIP_POSTGRES=1 is refused under CI, which must test the "
                "PostgreSQL store (unset SECFL_SKIP_POSTGRES)",
                pytrace=False,
            )
        pytest.skip("PostgreSQL tests skipped: SECFL_SKIP_POSTGRES=1")
    # Not under pytest's tmp_path: its parents are private to root, and the server
    # runs as the postgres user.
    where = tempfile.mkdtemp(prefix="secfl-pg-")
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT), "start", where],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0 or not done.stdout.strip():
            message = f"scripts/postgres.sh start failed (exit {done.returncode}): {done.stderr}"
            if in_ci() or os.geteuid() == 0:
                raise RuntimeError(message)  # CI, or a machine that can install it: must run
            pytest.skip(f"PostgreSQL unavailable without root here; {message.strip()}")
        yield done.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop", where], capture_output=True, timeout=120, check=False
        )
        shutil.rmtree(where, ignore_errors=True)


def fresh_pg_database(pg_url: str) -> tuple[str, str]:
    """Create an empty database on the server; return (its URL, its name)."""
    name = f"t_{secrets.token_hex(8)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_url.rsplit("/", 1)[0] + "/" + name, name


def drop_pg_database(pg_url: str, name: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'spm.db'}"
        return
    server = request.getfixturevalue("pg_url")
    url, name = fresh_pg_database(server)
    try:
        yield url
    finally:
        drop_pg_database(server, name)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An initialised :class:`Store` on each backend, with the test audit key."""
    s = Store(store_url, audit_key=AUDIT_KEY)
    s.create_all()
    try:
        yield s
    finally:
        s.close()
