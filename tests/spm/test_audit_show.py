"""`secfl audit show` against a real `secfl spm serve`: the log as a table and as JSON
lines, filtered, followed as it grows (then Ctrl-C), and read from the database,
where an entry changed behind the SPM's back is refused in one line."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secfl.cli._common import out
from secfl.spm._audit import AuditEntry
from secfl.spm.client import SpmClient
from tests.clirun import call, one_error, secfl, secfl_all
from tests.spm.harness import Board, SpmProcess, copy_spm, spm_with_policy, sql

pytestmark = pytest.mark.timeout(120)

ROUND = {"round": 1, "counter": 2, "participants": 3}


@pytest.fixture(scope="module")
def spm(
    tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes], board: Board
) -> Iterator[tuple[SpmProcess, str]]:
    """A running SPM with policy `fed`, and the session token of its attested aggregator."""
    data = tmp_path_factory.mktemp("spm") / "data"
    with spm_with_policy(data, sim, board, "aggregator") as (proc, enrolled):
        yield proc, enrolled["aggregator"].session_token


def commit_round(proc: SpmProcess, token: str, round: dict[str, object]) -> int:
    """The aggregator's round logged as in production (with its counter's increment):
    the audit entry number of its ``fl.round``."""
    with SpmClient(proc.url, pin=proc.pin) as client:
        head = client.audit(since=2**62)["head_seq"]
        client.increment("fed", "round", token, round=round)
        entries = client.audit(head, 100)["entries"]
    (seq,) = [e["seq"] for e in entries if e["event"] == "fl.round"]
    return int(seq)


def remote(spm: SpmProcess) -> tuple[str, ...]:
    return ("--spm", spm.url, "--spm-pin", spm.pin)


def json_lines(text: str) -> list[AuditEntry]:
    return [AuditEntry.from_dict(json.loads(line)) for line in text.splitlines()]


def test_the_log_as_json_lines_is_the_verified_chain(spm: tuple[SpmProcess, str]) -> None:
    proc, _ = spm
    done = secfl("audit", "show", *remote(proc), "--json", "--limit", "0")
    assert done.returncode == 0, done.stderr
    entries = json_lines(done.stdout)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash and after.computed_hash() == after.hash
    with SpmClient(proc.url, pin=proc.pin) as client:
        head = client.audit(since=2**62)
    assert (entries[-1].seq, entries[-1].hash) == (head["head_seq"], head["head_hash"])
    events = [e.event for e in entries]
    assert events[0] == "spm.started" and "policy.accepted" in events
    assert "attestation.accepted" in events


def test_the_table_shows_the_newest_entries(spm: tuple[SpmProcess, str]) -> None:
    proc, _ = spm
    done = secfl("audit", "show", *remote(proc), "--limit", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "(UTC)", "EVENT", "POLICY", "DETAIL"]
    with SpmClient(proc.url, pin=proc.pin) as client:
        head = client.audit(since=2**62)["head_seq"]
    rows = [line for line in lines[1:] if line.split()[0].isdigit()]  # long details wrap
    assert [int(row.split()[0]) for row in rows] == [head - 1, head]
    assert rows[-1].split()[3:5] == ["secrets.released", "fed"]
    assert "service=aggregator" in done.stdout


def test_event_and_policy_filters(spm: tuple[SpmProcess, str]) -> None:
    proc, token = spm
    seq = commit_round(proc, token, ROUND)
    done = secfl("audit", "show", *remote(proc), "--json", "--event", "fl")
    assert done.returncode == 0, done.stderr
    (entry,) = [e for e in json_lines(done.stdout) if e.seq == seq]
    assert entry.event == "fl.round" and entry.detail["service"] == "aggregator"
    assert all(e.event.startswith("fl.") for e in json_lines(done.stdout))

    done = secfl("audit", "show", *remote(proc), "--json", "--limit", "0",
                 "--event", "attestation.accepted", "--event", "policy.accepted")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted({e.event for e in json_lines(done.stdout)}) == [
        "attestation.accepted", "policy.accepted",
    ]  # fmt: skip
    done = secfl("audit", "show", *remote(proc), "--policy", "fed", "--event", "fl.model")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no matching entries")  # a policy with none of these
    # a mistyped policy name (found by a walk through the README, whose step 9 named
    # another policy: "no matching entries", and the user never got the model's tag)
    assert one_error(secfl("audit", "show", *remote(proc), "--policy", "other")).startswith(
        "error: --policy: the audit log has no entry of a policy named 'other' (head "
    )
    assert one_error(secfl("audit", "show", *remote(proc), "--event", "a;b")).startswith(
        "error: --event: "
    )


def test_follow_shows_a_new_entry_and_ends_cleanly_on_ctrl_c(
    spm: tuple[SpmProcess, str],
) -> None:
    proc, token = spm
    # an fl.round to show first, whichever tests ran before on this worker: with none,
    # the first readline below waited for ever (a flake under xdist's distribution)
    commit_round(proc, token, {**ROUND, "round": 6})
    follower = subprocess.Popen(
        [sys.executable, "-m", "secfl.cli.main", "audit", "show", *remote(proc), "--json",
         "--event", "fl.round", "--limit", "1", "--follow", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        before = follower.stdout.readline()  # the newest fl.round so far
        seq = commit_round(proc, token, {**ROUND, "round": 7})
        deadline = time.monotonic() + 30
        shown = [json.loads(before)] if before else []
        while not any(e["seq"] == seq for e in shown) and time.monotonic() < deadline:
            line = follower.stdout.readline()
            if not line:
                break
            shown.append(json.loads(line))
        (entry,) = [e for e in shown if e["seq"] == seq]
        assert entry["event"] == "fl.round" and entry["detail"]["round"] == 7
    finally:
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert err == ""


def test_the_database_is_read_verified_and_a_changed_entry_refused(
    spm: tuple[SpmProcess, str], tmp_path: Path
) -> None:
    # The reads run two at a time (secfl_all): each reads a copy made before it, in order.
    proc, token = spm
    data = str(proc.data)
    commit_round(proc, token, {**ROUND, "round": 9})
    done, no_data = secfl_all(
        ("audit", "show", "--data", data, "--json", "--event", "fl.round", "--limit", "1"),
        ("audit", "show", "--db", f"sqlite:///{proc.data / 'spm.db'}"),
    )
    assert done.returncode == 0, done.stderr
    (entry,) = json_lines(done.stdout)
    assert entry.detail["round"] == 9

    # Without the data folder nothing authenticates the entries: refused, not shown.
    line = one_error(no_data)
    assert line.startswith("error: --db needs --data DIR")

    # Someone with the database rewrites what the aggregator reported...
    changed = _copy_spm(proc.data, tmp_path / "changed")
    detail = {**entry.detail, "round": 1000}
    _sql(changed, "UPDATE audit SET detail = ? WHERE seq = ?", _json(detail), entry.seq)

    # ... or also gives the entry a matching hash ...
    rehashed = _copy_spm(proc.data, tmp_path / "rehashed")
    forged = AuditEntry(entry.seq, entry.at, entry.event, entry.policy, detail,
                        entry.prev_hash, "0" * 64)  # fmt: skip
    _sql(rehashed, "UPDATE audit SET detail = ?, hash = ? WHERE seq = ?",
         _json(detail), forged.computed_hash(), entry.seq)  # fmt: skip

    # ... or puts a whole database back to an older copy (the SPM's anchor is ahead of it).
    commit_round(proc, token, {**ROUND, "round": 10})
    rolled = _copy_spm(proc.data, tmp_path / "rolled")
    (rolled / "spm.db").write_bytes((changed / "spm.db").read_bytes())
    _sql(rolled, "UPDATE audit SET detail = ? WHERE seq = ?", _json(entry.detail), entry.seq)

    shown_changed, shown_rehashed, shown_rolled = secfl_all(
        ("audit", "show", "--data", str(changed)),
        ("audit", "show", "--data", str(rehashed), "--event", "fl.round"),
        ("audit", "show", "--data", str(rolled)),
    )
    # the changed entry is refused...
    line = one_error(shown_changed)
    assert line.startswith(f"error: audit: entry {entry.seq} was modified")
    assert "secfl audit verify" in line
    # ... with a matching hash it no longer chains to the head ...
    line = one_error(shown_rehashed)
    assert line.startswith(f"error: audit: entry {entry.seq} does not chain to ")
    # ... and the older database is a rollback.
    line = one_error(shown_rolled)
    assert line.startswith("error: rollback: the database's audit log ends at entry")


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_sql, _copy_spm = sql, copy_spm


def test_the_whole_log_is_shown_a_window_at_a_time_as_one_table(
    spm: tuple[SpmProcess, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--limit 0` held every matching entry until the walk back from the head reached
    the first; it now prints them a window at a time (read twice: verified back from
    the head, then again oldest first), and prints what one table of them all printed:
    here in windows of 3 entries, against one table of the same entries."""
    from secfl.spm import _audit_stream

    proc, token = spm
    with SpmClient(proc.url, pin=proc.pin) as client:
        for i in range(12):  # details of every width, some wider than the terminal
            client.report("fed", "notes", {"i": i, "text": "w" * (i * 37) + " x" * i}, token)
        head = int(client.audit(since=2**62)["head_seq"])
    assert head < 1000
    shows = ([], ["--json"], ["--event", "fl.notes"], ["--event", "fl.notes", "--json"])
    for width in (100, 250):  # the detail column narrower than some details, or not
        monkeypatch.setattr(out, "_width", width)
        monkeypatch.setattr(_audit_stream, "PAGE", 1000)
        whole = [call(capsys, "audit", "show", *remote(proc), *what, "--limit", str(head))
                 for what in shows]  # fmt: skip
        assert all(code == 0 for code, _, _ in whole)
        monkeypatch.setattr(_audit_stream, "PAGE", 3)
        for what, one_table in zip(shows, whole, strict=True):
            assert call(capsys, "audit", "show", *remote(proc), *what, "--limit", "0") == one_table
            # as many as there are, or more: the same
            more = call(capsys, "audit", "show", *remote(proc), *what, "--limit", "5000")
            assert more == one_table
