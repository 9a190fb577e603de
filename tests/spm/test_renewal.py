"""A workload that attests again ends the session it replaces. Found open since the
thirteenth session: a session lasts as long as its certificate (up to a year, as a
policy may set), and the token a renewal replaced still moved counters until then. Real
processes: `secfl spm serve` on SQLite, the host putting the ended row back, a restart."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, COLLABORATOR_MR, Board, spm_with_policy

pytestmark = pytest.mark.timeout(120)

ENDED = "session: this session ended when its workload attested again"


def test_a_renewal_ends_the_session_it_replaces(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    data = tmp_path / "data"
    with spm_with_policy(data, sim, board, "aggregator", "collaborator") as (proc, enrolled):
        old = enrolled["aggregator"]
        digest = hashlib.sha256(old.session_token.encode()).digest()
        with sqlite3.connect(data / "spm.db") as db:  # the host keeps a copy of the row
            (row,) = db.execute("SELECT * FROM sessions WHERE token_sha256 = ?", (digest,))
            columns = [c[1] for c in db.execute("PRAGMA table_info(sessions)")]
        platform = simulated.SimulatedPlatform(sim[0])
        with SpmClient(proc.url, pin=proc.pin) as client:
            assert client.increment("fed", "round", old.session_token) == 1
            # a token of another service ends nothing
            enroll(client, platform, "fed", "collaborator", measurement=COLLABORATOR_MR,
                   replaces=old.session_token)  # fmt: skip
            assert client.increment("fed", "round", old.session_token) == 2
            new = enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR,
                         replaces=old.session_token)  # fmt: skip
            with pytest.raises(SpmRefused, match=f"^{ENDED}") as refused:
                client.increment("fed", "round", old.session_token)
            assert refused.value.status == 401
            assert client.increment("fed", "round", new.session_token) == 3
            ended = [e for e in client.audit(0, 10_000)["entries"] if e["event"] == "session.ended"]
        assert [e["detail"]["token_sha256"] for e in ended] == [digest.hex()]
        assert enrolled["collaborator"].session_token  # (its own session untouched)

        with sqlite3.connect(data / "spm.db") as db:  # the host puts the row back
            marks = ", ".join("?" * len(columns))  # as many as the table's own columns
            db.execute(f"INSERT INTO sessions VALUES ({marks})", row)  # noqa: S608
        proc.stop()  # a fresh SPM: nothing cached, the ended session known from the log
        proc.start()
        with SpmClient(proc.url, pin=proc.pin) as client:
            with pytest.raises(SpmRefused, match=f"^{ENDED}"):
                client.increment("fed", "round", old.session_token)
            assert client.increment("fed", "round", new.session_token) == 4


def test_an_increment_under_way_while_the_workload_renews_is_sent_again(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """The aggregator commits a round in the background while its main thread may renew
    the identity: an increment sent with the old token met the ended session, and the
    run stopped. Refused whole, it is sent again with the new token."""
    from secfl.fl._ledger import SpmLedger

    with spm_with_policy(tmp_path / "data", sim, board, "aggregator") as (proc, enrolled):
        old = enrolled["aggregator"].session_token
        platform = simulated.SimulatedPlatform(sim[0])
        with SpmClient(proc.url, pin=proc.pin) as client:
            held = {"token": old}

            def token() -> str:
                sent = held["token"]
                if sent == old:  # the main thread renews while this request is on its way
                    held["token"] = enroll(client, platform, "fed", "aggregator",
                                           measurement=AGGREGATOR_MR,
                                           replaces=old).session_token  # fmt: skip
                return sent

            ledger = SpmLedger(lambda: client, "fed", "round", token)
            assert ledger.increment(expect=0, request="ab" * 16) == 1
            assert held["token"] != old
            with pytest.raises(SpmRefused, match=f"^{ENDED}"):
                client.increment("fed", "round", old)
