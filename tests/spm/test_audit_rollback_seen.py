"""A host that rolls the SPM's database back together with its data folder (a restored
backup of the machine: the anchor goes back too) is beyond what the SPM can see
(secfl.spm._integrity). Found by a hostile review: a board member could not see it
either. `secfl audit verify` said OK over the rolled-back log, printed only the head's
number (not its hash, so nothing could be compared with it later), and had no way to
be given the head it had printed before. Now it prints the head as SEQ:HASH and takes
it back as ``--seen SEQ:HASH``: a log that ends before that entry, or holds another
entry there (rolled back, then written anew), is refused as a rollback. Real
processes: `secfl spm serve` on real SQLite, the CLI, a restored copy of its folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from secfl.spm.client import SpmClient
from tests.clirun import one_error, secfl, secfl_all
from tests.spm.harness import Board, SpmProcess, copy_spm, spm_with_policy

pytestmark = pytest.mark.timeout(240)

HEAD = re.compile(r"^audit verify: OK, (\d+) entries, head (\d+):([0-9a-f]{64})$")


def _head(done: object) -> str:
    """The SEQ:HASH an OK `audit verify` printed."""
    assert getattr(done, "returncode", None) == 0, done
    found = HEAD.match(getattr(done, "stdout", "").strip())
    assert found, getattr(done, "stdout", "")
    assert found[1] == found[2]  # a verified chain numbers its entries 1..head
    return f"{found[2]}:{found[3]}"


def _increment(proc: SpmProcess, token: str, times: int) -> None:
    with SpmClient(proc.url, pin=proc.pin) as client:
        for _ in range(times):
            client.increment("fed", "round", token)


def test_a_rollback_of_database_and_folder_together_is_seen_by_the_board(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    with spm_with_policy(tmp_path / "spm", sim, board, "aggregator") as (proc, enrolled):
        token = enrolled["aggregator"].session_token
    backup = copy_spm(proc.data, tmp_path / "backup")  # the host's copy, anchor and all

    # The federation goes on: rounds are committed, a board member verifies the log.
    proc.start()
    try:
        _increment(proc, token, 3)
        remote = secfl("audit", "verify", "--spm", proc.url, "--spm-pin", proc.pin)
        seen = _head(remote)
    finally:
        proc.stop()
    local = secfl("audit", "verify", "--data", str(proc.data), "--seen", seen)
    assert _head(local) == seen  # the genuine log holds what was seen: OK

    # The host puts the backup back and starts the SPM on it: same keys, same pin.
    old = SpmProcess(backup, sim[0], None).start()
    try:
        assert old.pin == proc.pin
        plain = secfl("audit", "verify", "--spm", old.url, "--spm-pin", old.pin)
        behind = int(_head(plain).split(":")[0])  # verifies on its own: nothing tells
        line = one_error(
            secfl("audit", "verify", "--spm", old.url, "--spm-pin", old.pin, "--seen", seen)
        )
        assert line == (
            f"error: rollback: the audit log ends at entry {behind}, but entry "
            f"{seen.split(':')[0]} was seen before: the SPM's database was rolled back"
        )
        # ...and written anew past the entry seen: another entry is there now
        _increment(old, token, 5)
        forked = one_error(
            secfl("audit", "verify", "--spm", old.url, "--spm-pin", old.pin, "--seen", seen)
        )
    finally:
        old.stop()
    number = seen.split(":")[0]
    assert forked.startswith(f"error: rollback: audit entry {number} is not the one seen "
                             "before (its hash is "), forked  # fmt: skip
    assert forked.endswith("the SPM's database was rolled back and written anew, or forked")
    on_host, unauthenticated = secfl_all(
        ("audit", "verify", "--data", str(backup), "--seen", seen),
        ("audit", "verify", "--db", f"sqlite:///{backup / 'spm.db'}", "--seen", seen),
    )
    assert one_error(on_host) == forked
    assert one_error(unauthenticated) == forked


@pytest.mark.parametrize(
    "value", ["12", "x:" + "0" * 64, "12:" + "0" * 63, "12:" + "g" * 64, "-1:" + "0" * 64,
              "1" * 19 + ":" + "0" * 64, "\x1b[2J1:" + "0" * 64],
)  # fmt: skip
def test_a_malformed_seen_head_is_a_usage_error(tmp_path: Path, value: str) -> None:
    done = secfl("audit", "verify", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--seen", value)
    line = one_error(done)
    assert line.startswith("error: --seen: '"), line
    assert line.endswith("' is not SEQ:HASH (an entry number and its 64 hex digits, as "
                         "`secfl audit verify` prints the head)"), line  # fmt: skip
    assert "\x1b" not in line


def test_entry_zero_is_only_the_empty_logs_head(tmp_path: Path) -> None:
    """A review: ``--seen 0:HASH`` was taken whatever HASH (no entry 0 is ever
    compared), so a head mistyped or made up as entry 0 passed as a check. Entry 0 is
    the empty log's head only, its hash 64 zeros."""
    db = f"sqlite:///{tmp_path / 'none.db'}"
    made_up = "0:" + "ab" * 32
    done = secfl("audit", "verify", "--db", db, "--seen", made_up)
    assert one_error(done) == (
        f"error: --seen: entry 0 is the empty log's head, 0:{'0' * 64}, not '{made_up}': "
        "give the head `secfl audit verify` printed"
    )
