"""A workload that attests again ends the session it replaces. Found open since the
thirteenth session: a session lasts as long as its certificate (up to a year, as a
policy may set), and the token a renewal replaced still moved counters until then. Real
processes: `secfl spm serve` on SQLite, the host putting the ended row back, a restart."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import (
    AGGREGATOR_MR,
    COLLABORATOR_MR,
    Board,
    SpmProcess,
    policy_document,
    spm_with_policy,
)

pytestmark = pytest.mark.timeout(120)

ENDED = "session: this session ended when its workload attested again"
_POLICY_NUMBERS = itertools.count(1)


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes]
) -> Iterator[SpmProcess]:
    """One SPM for the tests that neither restart it nor touch its database: each
    submits a policy of its own name (:func:`own_policy`)."""
    proc = SpmProcess(tmp_path_factory.mktemp("shared") / "data", sim[0], None).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def own_policy(shared: SpmProcess, sim: tuple[Path, bytes], board: Board) -> tuple[str, Any]:
    """A policy of a name no other test here uses, on the shared SPM (version 1, signed by
    alice and bob), and its aggregator's enrollment: (policy name, enrollment)."""
    name = f"fed{next(_POLICY_NUMBERS)}"
    with SpmClient(shared.url, pin=shared.pin) as client:
        document = policy_document(name, board, sim[1])
        client.submit_policy(document, board.sign(document, "alice", "bob"))
        platform = simulated.SimulatedPlatform(sim[0])
        return name, enroll(client, platform, name, "aggregator", measurement=AGGREGATOR_MR)


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
    shared: SpmProcess, own_policy: tuple[str, Any], sim: tuple[Path, bytes]
) -> None:
    """The aggregator commits a round in the background while its main thread may renew
    the identity: an increment sent with the old token met the ended session, and the
    run stopped. Refused whole, it is sent again with the new token."""
    from secfl.fl._ledger import SpmLedger

    fed, enrolled = own_policy
    old = enrolled.session_token
    platform = simulated.SimulatedPlatform(sim[0])
    with SpmClient(shared.url, pin=shared.pin) as client:
        held = {"token": old}

        def token() -> str:
            sent = held["token"]
            if sent == old:  # the main thread renews while this request is on its way
                held["token"] = enroll(client, platform, fed, "aggregator",
                                       measurement=AGGREGATOR_MR,
                                       replaces=old).session_token  # fmt: skip
            return sent

        ledger = SpmLedger(lambda: client, fed, "round", token)
        assert ledger.increment(expect=0, request="ab" * 16) == 1
        assert held["token"] != old
        with pytest.raises(SpmRefused, match=f"^{ENDED}"):
            client.increment(fed, "round", old)


def test_a_renewal_ends_the_session_whose_row_the_host_hid(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a review: the host took the old session's row away just before the
    workload renewed, and put it back after (its MAC still valid). Nothing was ended,
    and the old token moved counters again, after a restart too."""
    data = tmp_path / "data"
    with spm_with_policy(data, sim, board, "aggregator") as (proc, enrolled):
        old = enrolled["aggregator"].session_token
        digest = hashlib.sha256(old.encode()).digest()
        platform = simulated.SimulatedPlatform(sim[0])
        with SpmClient(proc.url, pin=proc.pin) as client:
            assert client.increment("fed", "round", old) == 1
            with sqlite3.connect(data / "spm.db") as db:  # the host: copy, delete the row
                (row,) = db.execute("SELECT * FROM sessions WHERE token_sha256 = ?", (digest,))
                db.execute("DELETE FROM sessions WHERE token_sha256 = ?", (digest,))
            new = enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR,
                         replaces=old)  # fmt: skip
            with sqlite3.connect(data / "spm.db") as db:  # ... and put it back
                marks = ", ".join("?" * len(row))
                db.execute(f"INSERT INTO sessions VALUES ({marks})", row)  # noqa: S608
            with pytest.raises(SpmRefused, match=f"^{ENDED}"):
                client.increment("fed", "round", old)
            (ended,) = [e for e in client.audit(0, 10_000)["entries"]
                        if e["event"] == "session.ended"]  # fmt: skip
            assert ended["detail"]["token_sha256"] == digest.hex()
            assert ended["detail"]["row"] == "missing"
        proc.stop()
        proc.start()
        with SpmClient(proc.url, pin=proc.pin) as client:
            with pytest.raises(SpmRefused, match=f"^{ENDED}"):
                client.increment("fed", "round", old)
            assert client.increment("fed", "round", new.session_token) == 2


def test_an_increment_whose_answer_was_lost_during_a_renewal_is_not_taken_twice(
    shared: SpmProcess,
    own_policy: tuple[str, Any],
    sim: tuple[Path, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by a review: the increment landed, its answer was lost, the workload renewed
    meanwhile; the client's resend met the ended session, the ledger sent it again with
    the new token, and the SPM (which names an increment by its session) answered that
    the counter had moved: the aggregator stopped, saying its round was not committed."""
    import http.client

    from secfl.fl._ledger import SpmLedger

    fed, enrolled = own_policy
    old = enrolled.session_token
    held = {"token": old}
    platform = simulated.SimulatedPlatform(sim[0])
    with SpmClient(shared.url, pin=shared.pin) as renewer, \
            SpmClient(shared.url, pin=shared.pin) as own:  # fmt: skip
        renewer.counter(fed, "round")
        own.counter(fed, "round")
        real = http.client.HTTPConnection.getresponse
        state = {"lost": 0, "busy": False}

        def getresponse(self: http.client.HTTPConnection) -> http.client.HTTPResponse:
            if state["busy"] or state["lost"] or getattr(self, "_method", "") != "POST":
                return real(self)
            real(self).read()  # the SPM answered: committed
            state["busy"] = True
            try:  # the workload renews meanwhile
                held["token"] = enroll(renewer, platform, fed, "aggregator",
                                       measurement=AGGREGATOR_MR,
                                       replaces=old).session_token  # fmt: skip
            finally:
                state["busy"] = False
            state["lost"] += 1
            self.close()
            raise http.client.RemoteDisconnected("the answer is lost")

        monkeypatch.setattr(http.client.HTTPConnection, "getresponse", getresponse)
        ledger = SpmLedger(lambda: own, fed, "round", lambda: held["token"])
        assert ledger.increment(expect=0, request="ab" * 16) == 1
        monkeypatch.undo()
        assert state["lost"] == 1 and own.counter(fed, "round") == 1


def test_a_renewal_tried_again_ends_nothing_twice(
    shared: SpmProcess, own_policy: tuple[str, Any], sim: tuple[Path, bytes]
) -> None:
    """Found by a review: a renewal whose answer was lost is tried again with the same
    old token; the second ended it again as a row gone missing, which reads as the
    host's doing in the audit log."""
    fed, enrolled = own_policy
    old = enrolled.session_token
    platform = simulated.SimulatedPlatform(sim[0])
    with SpmClient(shared.url, pin=shared.pin) as client:
        for _ in range(2):
            enroll(client, platform, fed, "aggregator", measurement=AGGREGATOR_MR,
                   replaces=old)  # fmt: skip
        ended = [e for e in client.audit(0, 10_000)["entries"]
                 if e["event"] == "session.ended" and e["policy"] == fed]  # fmt: skip
    assert len(ended) == 1 and "row" not in ended[0]["detail"]
