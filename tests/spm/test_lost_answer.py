"""A compare-and-increment whose answer is lost (the connection breaks after the SPM
committed it) is sent again and answered with the value it got, not refused as if
another aggregator had moved the counter (which stopped the aggregator with "another
aggregator of this policy is running"). A real SPM process over real TLS; the answer
is lost in the client, once the SPM has committed; real restarts for the log's
replay; a request that did not land is refused, as before."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from secfl.errors import SpmRefused
from secfl.fl._ledger import SpmLedger
from secfl.spm.client import SpmClient
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import (
    AGGREGATOR_MR,
    Board,
    SpmProcess,
    make_sim,
    raw_http,
    spm_with_policy,
)


def lose_next_answer(monkeypatch: pytest.MonkeyPatch, landed: Callable[[], bool]) -> list[int]:
    """The next answer read over ``http.client`` is lost: once the request is out and
    ``landed()`` says the SPM committed it, the connection is closed unread and the
    read fails as a connection the far end closed does. Returns a list that counts
    the answers lost."""
    real = http.client.HTTPConnection.getresponse
    lost: list[int] = []

    def getresponse(self: http.client.HTTPConnection) -> http.client.HTTPResponse:
        if lost:
            return real(self)
        deadline = time.monotonic() + 30
        while not landed():
            assert time.monotonic() < deadline, "the SPM never committed the increment"
            time.sleep(0.01)
        self.close()
        lost.append(1)
        raise http.client.RemoteDisconnected("the answer was lost (injected)")

    monkeypatch.setattr(http.client.HTTPConnection, "getresponse", getresponse)
    return lost


def test_a_lost_answer_to_an_increment_is_answered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = (tmp_path / "sim", make_sim(tmp_path / "sim"))
    with (
        spm_with_policy(tmp_path / "data", sim, Board.create(), "aggregator", policy="lost") as (
            spm,
            enrolled,
        ),
        SpmClient(spm.url, pin=spm.pin) as client,
    ):
        token = enrolled["aggregator"].session_token
        assert client.increment("lost", "round", token, expect=0) == 1
        with SpmClient(spm.url, pin=spm.pin) as watcher, SpmClient(spm.url, pin=spm.pin) as own:
            own.counter("lost", "round")  # connected (and pinned) before the fault
            watcher.counter("lost", "round")
            with monkeypatch.context() as patch:
                lost = lose_next_answer(patch, lambda: _peek(spm) == 2)
                # the SPM commits 2, the answer is lost, the client sends it again
                assert own.increment("lost", "round", token, expect=1) == 2
            assert lost == [1]
        assert client.counter("lost", "round") == 2  # moved once, not twice
        # another request (a second aggregator's, or a stale one) is still refused
        with pytest.raises(SpmRefused, match="is at 2, not 1") as refused:
            client.increment("lost", "round", token, expect=1)
        assert refused.value.status == 409

        spm.stop()  # the SPM restarts after the commit: the log's replay remembers
        spm.start()
        with SpmClient(spm.url, pin=spm.pin) as again:
            assert again.increment("lost", "round", token, expect=2) == 3
            body = {"expect": 2, "request": "ab" * 16}  # not the request that landed
            with pytest.raises(SpmRefused, match="is at 3, not 2"):
                again._request(
                    "POST", "/v1/policies/lost/counters/round/increment", json=body,
                    headers={"Authorization": f"Bearer {token}"},
                )  # fmt: skip
        spm.stop()
        spm.start()
        with SpmClient(spm.url, pin=spm.pin) as after:
            last = _last_request(after)
            body = {"expect": 2, "request": last}  # the request that landed, sent again
            doc = after._request(
                "POST", "/v1/policies/lost/counters/round/increment", json=body,
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
            assert doc["value"] == 3 and after.counter("lost", "round") == 3
            # the name is in the public log: another session of the same service that
            # sends it gets the refusal (it did not make that increment)
            platform = simulated.SimulatedPlatform(tmp_path / "sim")
            other = enroll(after, platform, "lost", "aggregator", measurement=AGGREGATOR_MR)
            with pytest.raises(SpmRefused, match="is at 3, not 2"):
                after._request(
                    "POST", "/v1/policies/lost/counters/round/increment", json=body,
                    headers={"Authorization": f"Bearer {other.session_token}"},
                )  # fmt: skip


def _peek(spm: SpmProcess) -> int:
    """The counter, read on a connection of its own (not through ``http.client``'s
    patched read: httpx)."""
    with SpmClient(spm.url, pin=spm.pin) as client, raw_http(client) as http:
        return int(http.get("/v1/policies/lost/counters/round").json()["value"])


def _last_request(client: SpmClient) -> str:
    """The request name of the log's newest counter increment."""
    entries = client.audit(since=0, limit=1000)["entries"]
    named = [e for e in entries if e["event"] == "counter.incremented"]
    return str(named[-1]["detail"]["request"])


def test_the_counter_names_the_increment_that_took_it_there(tmp_path: Path) -> None:
    """Which of two forked aggregators' checkpoints at a value is the committed one: the
    SPM says which named increment took the counter there, before and after a restart
    (the log's replay), and names none after an unnamed increment."""
    sim = (tmp_path / "sim", make_sim(tmp_path / "sim"))
    with spm_with_policy(tmp_path / "data", sim, Board.create(), "aggregator",
                         policy="lost") as (spm, enrolled):  # fmt: skip
        token = enrolled["aggregator"].session_token
        with SpmClient(spm.url, pin=spm.pin) as client:
            assert client.counter_state("lost", "round") == (0, None)
            assert client.increment("lost", "round", token, expect=0, request="cd" * 16) == 1
            assert client.counter_state("lost", "round") == (1, "cd" * 16)
        spm.stop()
        spm.start()
        with SpmClient(spm.url, pin=spm.pin) as client:
            assert client.counter_state("lost", "round") == (1, "cd" * 16)
            assert client.increment("lost", "round", token) == 2  # unnamed
            assert client.counter_state("lost", "round") == (2, None)
            assert client.increment("lost", "round", token, expect=2, request="ef" * 16) == 3
            # which increment took it to an earlier value: a board reset that finds a
            # fork's two checkpoints there asks
            assert client.request_at("lost", "round", 1) == "cd" * 16
            assert client.request_at("lost", "round", 2) is None
            assert client.request_at("lost", "round", 3) == "ef" * 16
        spm.stop()
        spm.start()  # the history is replayed from the log
        with SpmClient(spm.url, pin=spm.pin) as client:
            assert client.request_at("lost", "round", 1) == "cd" * 16
            ledger = SpmLedger(lambda: client, "lost", "round", lambda: token)
            assert ledger.request_at(3) == "ef" * 16  # what the aggregator's reset asks
            with pytest.raises(SpmRefused, match="is at 3, not yet at 4") as refused:
                client.request_at("lost", "round", 4)
            assert refused.value.status == 409
            with pytest.raises(SpmRefused, match="has no counter 'nope'") as refused:
                client.request_at("lost", "nope", 1)
            assert refused.value.status == 404
            with raw_http(client) as http:
                for value in ("1" + "0" * 400, "-1", "1e3", "x"):
                    answer = http.get(f"/v1/policies/lost/counters/round/requests/{value}")
                    assert answer.status_code in (400, 422), (value, answer.text[:200])
                    assert answer.json()["error"].count("\n") == 0


def test_an_spm_sharing_the_database_names_the_others_increment(tmp_path: Path) -> None:
    """A review: the name came from the answering SPM's floors, which a read never caught
    up, so an SPM that had not committed the newest increment answered the counter's new
    value without its name, and an aggregator routed to it (the host routes) resumed a
    fork's losing checkpoint. It now catches up first."""
    import asyncio
    import shutil

    from secfl.spm._server import open_spm
    from tests.spm.harness import policy_document
    from tests.spm.test_service import LocalClient, submit

    root = make_sim(tmp_path / "sim")
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    a = open_spm(tmp_path / "a", db_url=db, platform="simulated", sim_dir=tmp_path / "sim")
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy(tmp_path / "a" / "master.key", tmp_path / "b" / "master.key")
    b = open_spm(
        tmp_path / "b", db_url=db, platform="simulated", sim_dir=tmp_path / "sim", new_anchor=True
    )
    try:
        board = Board.create()
        submit(a, board, policy_document("p", board, root))
        token = enroll(LocalClient(a), simulated.SimulatedPlatform(tmp_path / "sim"), "p",
                       "aggregator", measurement=AGGREGATOR_MR).session_token  # fmt: skip
        for expect in (0, 1):
            name = f"{expect + 1:032x}"
            asyncio.run(a.increment_async(token, "p", "round", expect, request=name))
            assert a.counter_state("p", "round") == (expect + 1, name)
            assert b.counter_state("p", "round") == (expect + 1, name)
    finally:
        a.close()
        b.close()
