"""`secfl audit verify` reads and never writes. Found by a hostile review: given a folder
with a master key and no database it said "OK, 0 entries" and created spm.db and
audit.anchor there (after which `audit show` accepted the folder too); a mistyped
--db created that file, or the SPM's tables in the wrong PostgreSQL database; and run
on a running SPM's folder it wrote the anchor from its own process. Real processes:
the CLI, a real SPM, real SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import psycopg
import pytest

from secfl.spm._anchor import Anchor
from secfl.spm._audit_read import DatabaseSource, newest
from secfl.spm._audit_verify import verify_database
from secfl.spm._masterkey import load_or_create_master_key
from secfl.spm._server import open_store
from tests.clirun import one_error, secfl, secfl_all
from tests.spm.conftest import drop_pg_database, fresh_pg_database
from tests.spm.harness import Board, copy_spm, spm_with_policy, sql

pytestmark = pytest.mark.timeout(180)


def _key_only(folder: Path) -> Path:
    """A data folder holding a master key and nothing else."""
    folder.mkdir(mode=0o700)
    load_or_create_master_key(folder)
    return folder


@pytest.fixture(scope="module")
def stopped(
    tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes], board: Board
) -> Path:
    """The data folder of an SPM that ran (a policy, an enrolled aggregator) and stopped:
    made once for the module; the tests read or change copies of it."""
    with spm_with_policy(tmp_path_factory.mktemp("stopped") / "spm", sim, board,
                         "aggregator") as (proc, _):  # fmt: skip
        pass
    return proc.data


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of ``folder``: its content and when it was last written."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def test_a_folder_without_a_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    data = _key_only(tmp_path / "data")
    before = _files(data)
    verified, shown = secfl_all(
        ("audit", "verify", "--data", str(data)), ("audit", "show", "--data", str(data))
    )
    refusal = f"error: audit: no database spm.db in {data}: give the SPM's database URL (--db)"
    assert one_error(verified) == refusal
    assert one_error(shown) == refusal  # the same check as `show`, which stays refused
    assert _files(data) == before  # no spm.db, no audit.anchor


def test_a_mistyped_sqlite_url_is_refused_and_not_created(tmp_path: Path) -> None:
    data = _key_only(tmp_path / "data")
    typo = tmp_path / "typo.db"
    url = f"sqlite:///{typo}"
    done = secfl_all(
        ("audit", "verify", "--db", url),
        ("audit", "verify", "--data", str(data), "--db", url),
        ("audit", "show", "--data", str(data), "--db", url),
    )
    for each in done:
        assert one_error(each) == f"error: audit: no database {typo}: check --db (an SPM's " \
                                  "sqlite:///PATH)"  # fmt: skip
    assert not typo.exists()
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert sorted(os.listdir(data)) == ["master.key"]


def test_another_programs_sqlite_database_is_refused_unchanged(tmp_path: Path) -> None:
    data = _key_only(tmp_path / "data")
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    with db:
        db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    before = _files(tmp_path)
    done = secfl_all(
        ("audit", "verify", "--data", str(data), "--db", f"sqlite:///{other}"),
        ("audit", "verify", "--db", f"sqlite:///{other}"),
        ("audit", "show", "--data", str(data), "--db", f"sqlite:///{other}"),
    )
    for each in done:
        line = one_error(each)
        assert line == f"error: audit: {other} is not an SPM database (no SPM tables): " \
                       "check --db/--data", line  # fmt: skip
    assert _files(tmp_path) == before  # no SPM tables added, not even WAL mode set
    assert sorted(os.listdir(data)) == ["master.key"]


def test_a_wrong_postgresql_database_gets_no_spm_tables(tmp_path: Path, pg_url: str) -> None:
    data = _key_only(tmp_path / "data")
    url, name = fresh_pg_database(pg_url)
    try:
        verified, unauthenticated = secfl_all(
            ("audit", "verify", "--data", str(data), "--db", url), ("audit", "verify", "--db", url)
        )
        for each in (verified, unauthenticated):
            line = one_error(each)
            assert line.startswith("error: audit: postgresql+psycopg://"), line
            assert line.endswith(f"/{name} is not an SPM database (no SPM tables): check "
                                 "--db/--data"), line  # fmt: skip
        with psycopg.connect(url) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
        assert tables == []
    finally:
        drop_pg_database(pg_url, name)
    assert sorted(os.listdir(data)) == ["master.key"]


def test_a_missing_database_beside_its_anchor_is_refused_and_not_made_anew(
    tmp_path: Path, stopped: Path
) -> None:
    data = copy_spm(stopped, tmp_path / "lost")
    (data / "spm.db").unlink()
    before = _files(data)
    line = one_error(secfl("audit", "verify", "--data", str(data)))
    assert line == f"error: audit: no database spm.db in {data}: give the SPM's database " \
                   "URL (--db)"  # fmt: skip
    assert _files(data) == before


def test_verifying_a_running_spms_folder_writes_nothing(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Still OK, and its anchor untouched: the SPM alone writes it (a verifier writing a
    slot from its own process could overwrite a newer head the SPM just anchored)."""
    with spm_with_policy(tmp_path / "spm", sim, board, "aggregator") as (proc, _):
        anchor = proc.data / "audit.anchor"
        before = (anchor.read_bytes(), anchor.stat().st_mtime_ns)
        verified, shown = secfl_all(
            ("audit", "verify", "--data", str(proc.data)),
            ("audit", "show", "--data", str(proc.data), "--limit", "1"),
        )
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.startswith("audit verify: OK, "), verified.stdout
        assert shown.returncode == 0, shown.stderr
        assert (anchor.read_bytes(), anchor.stat().st_mtime_ns) == before
        remote = secfl("audit", "verify", "--spm", proc.url, "--spm-pin", proc.pin)
        assert remote.stdout == verified.stdout  # the SPM went on as before


def test_verifying_a_stopped_spms_folder_changes_no_file(tmp_path: Path, stopped: Path) -> None:
    data = shutil.copytree(stopped, tmp_path / "spm")  # the stopped SPM's files, as they are
    before = _files(data)
    done = secfl("audit", "verify", "--data", str(data))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("audit verify: OK, "), done.stdout
    assert _files(data) == before

    # An SPM database of another schema is refused as such, not upgraded or opened.
    other = copy_spm(data, tmp_path / "other")
    sql(other, "UPDATE meta SET value = ? WHERE key = 'schema_version'", b"9")
    line = one_error(secfl("audit", "verify", "--data", str(other)))
    assert line.startswith(f"error: audit: {other / 'spm.db'} has schema version 9, this "), line


def test_a_killed_spms_write_ahead_log_is_read_not_folded_in(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a review: after an SPM was killed (its commits still in spm.db-wal),
    `audit verify` and `audit show` folded the log into spm.db and deleted it when they
    closed (SQLite's checkpoint on the last close: not a query `query_only` stops)."""
    with spm_with_policy(tmp_path / "spm", sim, board, "aggregator") as (proc, _):
        proc.kill()
    wal = proc.data / "spm.db-wal"
    assert wal.stat().st_size > 0  # the killed SPM's commits are in its log
    before = {n: (proc.data / n).read_bytes() for n in ("spm.db", "spm.db-wal")}
    verified, shown = secfl_all(
        ("audit", "verify", "--data", str(proc.data)),
        ("audit", "show", "--data", str(proc.data), "--limit", "1"),
    )
    assert verified.returncode == 0 and verified.stdout.startswith("audit verify: OK, "), (
        verified.stdout + verified.stderr
    )
    assert shown.returncode == 0, shown.stderr
    assert {n: (proc.data / n).read_bytes() for n in before} == before


@pytest.mark.parametrize("reader", ["verify", "show"])
def test_a_commit_just_before_the_anchor_is_read_is_no_rollback(
    tmp_path: Path, stopped: Path, reader: str
) -> None:
    """A reader of a running SPM's folder read the anchor after its snapshot of the
    database: an SPM that committed (and moved its anchor) in between looked like a
    database rolled back. The anchor is read first now, so it is never ahead."""
    data = copy_spm(stopped, tmp_path / "data")
    spm = open_store(data, load_or_create_master_key(data))  # the SPM, in this process
    read = Anchor.read
    moved: list[int] = []

    def commit_then_read(anchor: Anchor) -> tuple[int, str] | None:
        if not moved:  # the SPM commits (and moves its anchor) right now
            with spm.transaction() as tx:
                moved.append(tx.audit.append("test.moved-on", None, {}).seq)
        return read(anchor)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Anchor, "read", commit_then_read)
            if reader == "verify":
                count, head = verify_database(data)
            else:
                source = DatabaseSource(data)
                try:
                    head = newest(source, 1)[1][0]
                finally:
                    source.close()
                count = head
    finally:
        spm.close()
    assert moved and count == head == moved[0]
