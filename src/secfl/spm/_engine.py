"""The SQLAlchemy engine of a store URL: SQLite (a private file, WAL, fsynced commits)
or PostgreSQL (through psycopg 3).

:func:`normalise_url` accepts only durable databases; :func:`open_engine` makes the
engine with the connection settings the :class:`~secfl.spm._store.Store` relies on
(SQLite: the busy timeout, ``journal_mode=WAL``, ``synchronous=FULL`` and our own
``BEGIN``, which a write transaction turns into ``BEGIN IMMEDIATE`` through the
``secfl_begin`` execution option); :func:`db_error` turns a database failure into a
one-line :class:`SpmError`.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from secfl._internal.files import write_private
from secfl.errors import SpmError

__all__ = ["BUSY_TIMEOUT_MS", "db_error", "normalise_url", "open_engine"]

#: How long a writer waits for another process's SQLite write lock.
BUSY_TIMEOUT_MS = 30_000


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


def db_error(exc: DBAPIError) -> SpmError:
    """A database failure as one line (its first), never a raw SQLAlchemy exception."""
    first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    return SpmError(f"store: database error: {first}")


def open_engine(url: URL, *, read_only: bool = False) -> Engine:
    """The engine of a :func:`normalise_url` URL; SQLite's file is created private first.
    ``read_only``: a missing SQLite file is refused, not created, the file's journal
    mode is left as it is (setting WAL would rewrite another program's file), and where
    it has a write-ahead log (a running or a killed SPM's) it is opened ``mode=ro``:
    SQLite folds the log into the file when its last connection closes, which a reader
    must not do (found by a review). Without one it is opened as usual (``mode=ro``
    would leave a log and its index behind) with ``query_only``."""
    if url.drivername.startswith("sqlite"):
        assert url.database is not None
        if not read_only:
            _create_private_file(Path(url.database))
        elif not Path(url.database).is_file():
            raise SpmError(f"store: no database file {url.database}")
        options: dict[str, Any] = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
        if read_only and Path(f"{url.database}-wal").exists():
            where = f"file:{urllib.parse.quote(str(Path(url.database).resolve()))}?mode=ro"
            engine = create_engine(
                url,
                creator=lambda: sqlite3.connect(where, uri=True, **options),
                pool_size=8,
                max_overflow=32,
            )
        else:
            engine = create_engine(url, connect_args=options, pool_size=8, max_overflow=32)
        event.listen(engine, "connect", _sqlite_reader if read_only else _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    connect: dict[str, Any] = {"connect_timeout": 10}
    if read_only:  # the server refuses any write, not only secfl's own transactions
        connect["options"] = "-c default_transaction_read_only=on"
    return create_engine(
        url,
        connect_args=connect,
        pool_size=8,
        max_overflow=32,
        pool_pre_ping=True,
    )


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    _pragmas(dbapi_connection, "journal_mode = WAL", "synchronous = FULL", "foreign_keys = ON")


def _sqlite_reader(dbapi_connection: Any, _record: Any) -> None:
    # As _sqlite_connect, without the settings that write (the journal mode).
    _pragmas(dbapi_connection, "query_only = ON")


def _pragmas(dbapi_connection: Any, *pragmas: str) -> None:
    """Take BEGIN away from the sqlite3 module (_sqlite_begin emits our own), wait for
    a busy database, then set ``pragmas``."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in (f"busy_timeout = {BUSY_TIMEOUT_MS}", *pragmas):
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get("secfl_begin", "BEGIN"))


def _create_private_file(path: Path) -> None:
    """Create the SQLite file empty and readable by its owner only (its -wal and -shm
    follow). An existing database, or anything else already at the path, is left
    alone (``replace=False``) and SQLite opens it."""
    if path.exists():
        return
    try:
        write_private(path, b"", fsync=False, replace=False)
    except FileExistsError:
        return
    except OSError as exc:
        raise SpmError(f"store: cannot create the database {path}: {exc.strerror}") from None
