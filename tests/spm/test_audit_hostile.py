"""What operators read of an SPM whose database (or whose address) is hostile: no line
forged on their terminal, no entry dropped or rolled back unnoticed, no traceback, no
unbounded memory. Found by a hostile review; real SPM processes on real SQLite, the
real CLI, an impostor TLS server."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from secfl.errors import AuditError
from secfl.spm._audit import AuditEntry, ChainVerifier
from tests.clirun import secfl
from tests.spm.harness import Board, copy_spm, spm_with_policy, sql

pytestmark = pytest.mark.timeout(180)

FORGED = "\x1b[2K\x1b[1Gaudit verify: OK, 9 entries, head 9\x1b[8m"


@pytest.fixture(scope="module")
def stopped_spm(
    tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes], board: Board
) -> Path:
    """A stopped SPM's data folder: a real log, anchor and policy (copy it to change it)."""
    with spm_with_policy(tmp_path_factory.mktemp("spm") / "data", sim, board,
                         "aggregator") as (proc, _):  # fmt: skip
        pass
    return proc.data


# --- nothing a terminal acts on ------------------------------------------------------------


def test_an_impostors_error_never_reaches_the_terminal_raw(tmp_path: Path) -> None:
    """`secfl spm verify URL` checks a server not yet trusted. An impostor answered with
    an error holding ESC sequences and a newline, and the CLI printed it raw: the
    terminal showed a fake pin and a "verified:" line, which the operator would pin."""
    fake = ("\x1b[2K\x1b[1G" + "e3" * 32 + "\nverified: tdx SPM, measurement " + "ab" * 48
            + ", tcb UpToDate\x1b[8m")  # fmt: skip
    port_file = tmp_path / "port"
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "impostor_server.py"),
                               str(port_file), json.dumps(fake)])  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.05)
        url = f"https://127.0.0.1:{port_file.read_text()}"
        done = secfl("spm", "verify", url, "--expect-measurement", "ab" * 48)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert done.returncode == 1
    assert "\x1b" not in done.stderr and done.stderr.count("\n") == 1, repr(done.stderr)
    assert "\\x1b[2K" in done.stderr  # shown escaped, not acted on


def test_a_row_name_never_reaches_the_terminal_raw(stopped_spm: Path, tmp_path: Path) -> None:
    """A database host added a row whose name is terminal control; `secfl audit verify`
    quoted it raw in its refusal, drawing a fake "OK" line."""
    bad = copy_spm(stopped_spm, tmp_path / "bad")
    sql(bad, "INSERT INTO policies (name, version, digest, predecessor, document, signatures,"
        " created_at, mac) VALUES (?, 1, 'd', '', '{}', '[]', 0, 'x')", FORGED)  # fmt: skip
    done = secfl("audit", "verify", "--data", str(bad))
    assert done.returncode == 1
    assert "\x1b" not in done.stderr and done.stderr.count("\n") == 1, repr(done.stderr)
    assert "fails its MAC" in done.stderr


def test_spm_relays_a_row_value_raw_to_a_remote_operator(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """The same through the pinned SPM: the database host gives a policy row a text
    `version`; the SPM's refusal quotes it, and `secfl status --spm` prints it raw."""
    with spm_with_policy(tmp_path / "data", sim, board, "aggregator") as (proc, _):
        sql(
            proc.data,
            "INSERT INTO policies (name, version, digest, predecessor, document,"
            " signatures, created_at, mac) VALUES ('fed', ?, 'd', '', '{}', '[]', 0, 'x')",
            "9" + FORGED,
        )
        deadline = time.monotonic() + 30
        while True:
            done = secfl("status", "--spm", proc.url, "--spm-pin", proc.pin, "--policy", "fed")
            if done.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # the SPM's policy cache refreshes
    assert done.returncode == 1, done.stdout
    assert "\x1b" not in done.stderr, repr(done.stderr)


# --- nothing dropped or rolled back unnoticed -----------------------------------------------


def _seqs(stdout: str) -> list[int]:
    return [json.loads(line)["seq"] for line in stdout.splitlines()]


def test_the_oldest_entries_deleted_are_noticed_from_the_database(
    stopped_spm: Path, tmp_path: Path
) -> None:
    """`secfl audit show` walked back from the authenticated head and never checked that
    the walk reached entry 1: with entries 1-3 (who approved version 1) deleted, it
    showed the rest as the whole verified log."""
    bad = copy_spm(stopped_spm, tmp_path / "bad")
    sql(bad, "DELETE FROM audit WHERE seq <= 3")
    done = secfl("audit", "show", "--data", str(bad), "--limit", "0", "--json")
    assert done.returncode == 1, (_seqs(done.stdout), done.stderr)
    assert "audit: entry 3 is missing" in done.stderr


def test_the_oldest_entries_deleted_are_noticed_through_the_spm(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    with spm_with_policy(tmp_path / "data", sim, board, "aggregator") as (proc, _):
        sql(proc.data, "DELETE FROM audit WHERE seq <= 3")
        done = secfl(
            "audit", "show", "--spm", proc.url, "--spm-pin", proc.pin, "--limit", "0", "--json"
        )
        events = secfl(
            "audit", "show", "--spm", proc.url, "--spm-pin", proc.pin, "--event", "policy.accepted"
        )
    assert done.returncode == 1, (_seqs(done.stdout), done.stderr)
    assert events.returncode == 1, (events.stdout, events.stderr)


def _grow(data: Path, n: int) -> None:
    """The SPM's own store code appends ``n`` genuine entries (the anchor moves too)."""
    from secfl.spm._masterkey import load_or_create_master_key
    from secfl.spm._server import open_store

    store = open_store(data, load_or_create_master_key(data))
    try:
        with store.transaction() as tx:
            for i in range(n):
                detail = {"event": "attestation.refused", "count": i, "reason": "x"}
                tx.audit.append("audit.suppressed", None, detail)
    finally:
        store.close()


def test_a_rollback_after_the_store_opened_fails_verification(
    stopped_spm: Path, tmp_path: Path
) -> None:
    """`secfl audit verify --data` checked the anchor in one read and verified the log in
    another, never compared with it: a host that restored an older head with its own MAC
    in between (a race of 3 in 3 against a long log; at will with PostgreSQL) got "OK"."""
    from secfl.spm._masterkey import load_or_create_master_key
    from secfl.spm._server import open_store

    data = copy_spm(stopped_spm, tmp_path / "spm")
    db = sqlite3.connect(data / "spm.db")
    old_seq, old_hash = db.execute("SELECT seq, hash FROM audit_head").fetchone()
    (old_mac,) = db.execute("SELECT value FROM meta WHERE key = 'audit_head_mac'").fetchone()
    db.close()
    _grow(data, 5)
    master = load_or_create_master_key(data)
    store = open_store(data, master)  # the anchor and the floors checked: all well
    try:
        sql(data, "DELETE FROM audit WHERE seq > ?", old_seq)
        sql(data, "UPDATE audit_head SET seq = ?, hash = ?", old_seq, old_hash)
        sql(data, "UPDATE meta SET value = ? WHERE key = 'audit_head_mac'", old_mac)
        with pytest.raises(AuditError, match=f"rollback: the database's audit log ends at "
                                             f"entry {old_seq}"):  # fmt: skip
            store.verify_audit(master.derive("audit-head"))
    finally:
        store.close()


# --- no traceback, no unbounded memory ---------------------------------------------------------


def test_a_detail_nested_past_the_stack_is_a_refusal() -> None:
    """An entry whose detail is nested deeper than canonical JSON can recurse ended in a
    RecursionError traceback from `secfl audit verify --db`."""
    detail: Any = "x"
    for _ in range(sys.getrecursionlimit() + 100):
        detail = [detail]
    entry = AuditEntry(seq=1, at="2026-01-01T00:00:00Z", event="e", policy=None,
                       detail={"d": detail}, prev_hash="0" * 64, hash="0" * 64)  # fmt: skip
    with pytest.raises(AuditError, match="entry 1 was modified"):
        ChainVerifier().feed(entry)


def test_verifying_a_log_by_its_database_url_streams(stopped_spm: Path, tmp_path: Path) -> None:
    """`secfl audit verify --db` and `--spm` collected the whole log before verifying it;
    anyone who can reach an SPM grows its log. They stream it a page at a time now."""
    from secfl.spm._audit_verify import verify_database

    data = copy_spm(stopped_spm, tmp_path / "spm")
    _grow(data, 30_000)
    tracemalloc.start()
    try:
        count, head = verify_database(None, f"sqlite:///{data / 'spm.db'}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == head >= 30_000
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MiB to verify {count} entries"


def test_a_huge_detail_is_refused_before_it_is_parsed(stopped_spm: Path, tmp_path: Path) -> None:
    """Found by a review: an entry's detail was parsed before anything bounded it, so
    whoever writes the database made every reader of the log (the SPM's start, `audit
    verify`) build it whole: 32 MiB of ``{"a":[0,0,...]}`` holds a list of 16M items, more than
    five times its size. No entry's detail is longer than 1 MiB; a longer one is refused
    as modified, found by its length in the database before the page is read (a review
    of the first fix: PostgreSQL's driver reads a page of a thousand rows at once)."""
    from secfl.spm._audit_verify import verify_database

    data = copy_spm(stopped_spm, tmp_path / "spm")
    size = 32 << 20
    sql(
        data, "UPDATE audit SET detail = ? WHERE seq = 1", '{"a":[' + "0," * (size // 2 - 4) + "0]}"
    )
    tracemalloc.start()
    try:
        with pytest.raises(AuditError) as refused:
            verify_database(None, f"sqlite:///{data / 'spm.db'}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # (found by its length in the database: the row is not even read)
    assert peak < size // 4, f"{peak / 2**20:.0f} MiB to refuse a {size >> 20} MiB detail"
    assert str(refused.value) == (
        "audit: entry 1 was modified (its detail is longer than any entry's)"
    )
    done = secfl("audit", "verify", "--data", str(data))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "entry 1 was modified (its detail is longer than any entry's)" in done.stderr
