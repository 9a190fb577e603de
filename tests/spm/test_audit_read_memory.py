"""Reading the whole audit log holds a bounded amount of it. Found by a hostile review:
the SPM's start, `secfl audit verify`, catching up with another SPM's commits and the
status index read the log 1000 entries at a time whatever their size. A JSON detail
of 1 MiB (the most an entry may hold) of empty objects takes some 24 MB once parsed,
so a page took gigabytes: rows the database's host added after the head, or the
events an aggregator may post (256 KiB each), kept for ever, had every later start
and verification run out of memory. Pages now end at 4 MiB of detail. Real processes:
`secfl spm serve` on real SQLite, an attested aggregator posting its events, the CLI
run with its address space limited (400 MB; the old code needed more than that)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from secfl.spm.client import SpmClient
from tests.clirun import one_error
from tests.spm.harness import Board, SpmProcess, make_sim, spm_with_policy

pytestmark = pytest.mark.timeout(300)

#: The address space `secfl audit verify` runs in (KiB): enough for a page of 4 MiB of
#: detail, far from enough for a page of 1000 large entries.
LIMIT_KIB = 400_000


def _limited(*args: str) -> subprocess.CompletedProcess[str]:
    """``secfl ARGS`` with its address space limited to :data:`LIMIT_KIB` (a shell's
    ulimit, so that nothing runs in this process between fork and exec)."""
    command = " ".join(["exec", sys.executable, "-m", "secfl.cli.main", *args])
    return subprocess.run(
        ["bash", "-c", f"ulimit -v {LIMIT_KIB}; {command}"],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def _empty_objects(chars: int) -> dict[str, list[dict[str, object]]]:
    """A detail of about ``chars`` characters, as many empty objects as fit."""
    return {"a": [{} for _ in range(chars // 3)]}


@pytest.fixture(scope="module")
def large(
    tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes], board: Board
) -> SpmProcess:
    """A stopped SPM whose aggregator posted 80 events of 250 KB of empty objects."""
    folder = tmp_path_factory.mktemp("large") / "spm"
    with spm_with_policy(folder, sim, board, "aggregator") as (proc, enrolled):
        token = enrolled["aggregator"].session_token
        detail = _empty_objects(250_000)  # under the 256 KiB an event may carry
        with SpmClient(proc.url, pin=proc.pin) as client:
            for _ in range(80):
                client.report("fed", "scores", detail, token)
    return proc


def test_an_aggregators_large_events_are_verified_in_bounded_memory(
    large: SpmProcess, sim: tuple[Path, bytes]
) -> None:
    for args in (("--data", str(large.data)), ("--db", f"sqlite:///{large.data / 'spm.db'}")):
        done = _limited("audit", "verify", *args)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("audit verify: OK, "), done.stdout
    # ...and the SPM starts again on it (the same check, unlimited here)
    again = SpmProcess(large.data, sim[0], None).start()
    again.stop()


def test_an_aggregators_large_events_are_shown_in_bounded_memory(large: SpmProcess) -> None:
    """`secfl audit show` reads back from the head in windows of 1000 entries: one
    window, all of them, took the same gigabytes; a window now ends where its page
    does (asked again as the newest that many)."""
    done = _limited("audit", "show", "--data", str(large.data), "--event", "fl.scores",
                    "--limit", "10", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = done.stdout.splitlines()
    assert len(shown) == 10 and all('"event": "fl.scores"' in line for line in shown)


def test_the_whole_log_is_shown_in_bounded_memory(large: SpmProcess) -> None:
    """`secfl audit show --limit 0` held every matching entry (here 80 of some 6 MB
    parsed each) until the walk back reached the first; it now prints them a window
    at a time, oldest first, as before."""
    for form in (("--json",), ()):
        done = _limited("audit", "show", "--data", str(large.data), "--event", "fl.scores",
                        "--limit", "0", *form)  # fmt: skip
        assert done.returncode == 0, done.stderr
        if form:
            shown = [json.loads(line) for line in done.stdout.splitlines()]
            seqs = [entry["seq"] for entry in shown]
            assert len(shown) == 80 and seqs == sorted(seqs)
            assert all(entry["event"] == "fl.scores" for entry in shown)
        else:
            assert done.stdout.split()[:6] == ["SEQ", "TIME", "(UTC)", "EVENT", "POLICY", "DETAIL"]
            assert done.stdout.count(" fl.scores ") == 80


def test_rows_the_host_added_are_refused_in_bounded_memory(tmp_path: Path) -> None:
    make_sim(tmp_path / "sim")
    spm = SpmProcess(tmp_path / "data", tmp_path / "sim", None).start()
    spm.stop()
    db = sqlite3.connect(tmp_path / "data" / "spm.db")
    head = db.execute("SELECT seq FROM audit_head").fetchone()[0]
    junk = '{"a":[' + ",".join(["{}"] * 333_000) + "]}"  # just under 1 MiB
    with db:
        db.executemany(
            "INSERT INTO audit (seq, at, event, policy, detail, prev_hash, hash) "
            "VALUES (?, '2026-01-01T00:00:00.000000Z', 'x', NULL, ?, ?, ?)",
            [(head + 1 + i, junk, "0" * 64, "0" * 64) for i in range(80)],
        )
    db.close()
    for args in (("--data", str(spm.data)), ("--db", f"sqlite:///{spm.data / 'spm.db'}")):
        line = one_error(_limited("audit", "verify", *args))
        assert line == f"error: audit: entry {head + 1} was modified (its hash does not match)"


def test_a_detail_the_host_wrote_behind_a_nul_is_refused_by_its_size(tmp_path: Path) -> None:
    """SQLite's ``length()`` of a text stops at its first NUL: a detail the host wrote
    as a NUL and 200 MB (over an entry's, or after the head) was 0 long to the
    database-side checks, so it was read whole (and again as a Python string) and the
    reader ran out of memory; it is now measured in bytes and refused before it is
    read."""
    make_sim(tmp_path / "sim")
    spm = SpmProcess(tmp_path / "data", tmp_path / "sim", None).start()
    spm.stop()
    db = sqlite3.connect(tmp_path / "data" / "spm.db")
    head = db.execute("SELECT seq FROM audit_head").fetchone()[0]
    huge = "\0" + "x" * 200_000_000
    with db:
        db.execute(
            "INSERT INTO audit (seq, at, event, policy, detail, prev_hash, hash) "
            "VALUES (?, '2026-01-01T00:00:00.000000Z', 'x', NULL, ?, ?, ?)",
            (head + 1, huge, "0" * 64, "0" * 64),
        )
    db.close()
    url = f"sqlite:///{spm.data / 'spm.db'}"
    refused = "error: audit: entry {} was modified (its detail is longer than any entry's)"
    for args in (("--data", str(spm.data)), ("--db", url)):
        assert one_error(_limited("audit", "verify", *args)) == refused.format(head + 1)
    # the same over an entry the head covers, which `secfl audit show` reads
    db = sqlite3.connect(tmp_path / "data" / "spm.db")
    with db:
        db.execute("DELETE FROM audit WHERE seq = ?", (head + 1,))
        db.execute("UPDATE audit SET detail = ? WHERE seq = ?", (huge, head))
    db.close()
    assert one_error(_limited("audit", "show", "--data", str(spm.data))) == refused.format(head)
    assert one_error(_limited("audit", "verify", "--db", url)) == refused.format(head)


def test_a_remote_reader_holds_a_bounded_page_of_rows_the_host_rewrote(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """A page of ``GET /v1/audit`` ended at 16 MiB of detail: rows the database's host
    rewrote under a running SPM as 1 MiB of empty objects each were served 16 to a
    page, some 400 MB once parsed by `secfl audit show --spm` (and by the SPM that
    served them) before the first was found modified. A page now ends at 4 MiB, what
    a reader of the database holds at once."""
    with spm_with_policy(tmp_path / "spm", sim, board, "aggregator") as (proc, enrolled):
        token = enrolled["aggregator"].session_token
        with SpmClient(proc.url, pin=proc.pin) as client:
            for i in range(24):
                client.report("fed", "notes", {"i": i}, token)
            head = int(client.audit(since=2**62)["head_seq"])
        junk = '{"a":[' + ",".join(["{}"] * 333_000) + "]}"  # just under 1 MiB
        db = sqlite3.connect(proc.data / "spm.db")
        with db:
            db.execute("UPDATE audit SET detail = ? WHERE seq > ?", (junk, head - 20))
        db.close()
        done = _limited("audit", "show", "--spm", proc.url, "--spm-pin", proc.pin)
    assert one_error(done).startswith(
        f"error: audit: entry {head} was modified (its hash does not match its content)"
    ), done.stderr
