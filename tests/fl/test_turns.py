"""Attacks on receiving whole updates one at a time (``arrival`` order with a rule that
needs whole updates, here the median), and on the refusals' log lines, against the real
aggregator over mutual TLS. Each failed on the code before its fix (a hostile review):

- a Submit that sends two bytes and goes quiet took the only turn before its header
  was read, so every honest update waited until the deadline and the round failed;
- a sampled sender that went quiet half-way kept the turn until the deadline;
- a header's round, or a tensor's name, holding a newline wrote a forged line into
  the aggregator's log (and into the refusal sent back).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from secfl.errors import FlError, TransportError
from secfl.fl import _messages as msg
from secfl.fl._config import FederationConfig
from secfl.fl._peers import Peer
from secfl.fl._rounds import Attempt, Participant, Rounds
from secfl.fl._tensors import to_bytes
from secfl.tasks import get_task
from secfl.tasks._split import split

from .fedkit import Background, Federation, RawClient, serving, site

SETTINGS = {"rounds": 1, "max_attempts": 1, "round_timeout": 20, "heartbeat": 0.5,
            "dead_after": 2.0, "join_timeout": 30, "seed": 3, "strategy": "median",
            "aggregation_order": "arrival"}  # fmt: skip
FORGED = "\nCRITICAL secfl.fl._aggregator: FORGED"

pytestmark = pytest.mark.timeout(120)


def update_head(header: dict[str, Any]) -> dict[str, Any]:
    """The header of an update for the attempt of the ``train`` message ``header``."""
    return {"kind": "update", "round": header["round"], "attempt": header["attempt"],
            "epoch": header["epoch"], "samples": 10, "metrics": {}}  # fmt: skip


def all_at_once(honest: list[RawClient], trained: list[Any]) -> list[str]:
    """Each honest site's update, all sent at once (as collaborators done training
    would: none is silent while it waits); the answers' kinds."""
    uploads = [
        Background(lambda r=raw, h=h, p=p: r.submit(h["round"], h["attempt"], to_bytes(p)),
                   raw.name)
        for raw, (h, p, _) in zip(honest, trained, strict=True)
    ]  # fmt: skip
    for upload in uploads:
        upload.start()
    return [u.outcome()["kind"] for u in uploads]


@dataclass
class Running:
    """An aggregator running one round for two honest sites and a third peer."""

    agg: Any
    run: Background
    honest: list[RawClient]
    third: RawClient


@contextlib.contextmanager
def running(
    fed: Federation, settings: dict[str, Any], third: str, *, third_joins: bool
) -> Iterator[Running]:
    """The aggregator with ``settings`` for two honest sites and ``third`` (joined, or
    only allowed to call), its round loop running; stopped and closed on the way out."""
    agg = fed.aggregator(settings, services=[site(0), site(1), third])
    honest = [RawClient(fed, agg.port, site(i)) for i in range(2)]
    other = RawClient(fed, agg.port, third)
    joined = [*honest, other] if third_joins else honest
    with serving(agg, *honest, other, joined=joined) as run:
        yield Running(agg, run, honest, other)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    report = split("digits", 2, seed=1, out=tmp_path_factory.mktemp("shards"))
    return Federation(get_task("digits"), report)


def test_a_submit_silent_before_its_header_keeps_no_one_waiting(fed: Federation) -> None:
    release = threading.Event()

    def silent() -> Iterator[bytes]:
        yield b"\x00\x00"  # two bytes of a length prefix, then nothing
        release.wait(60)

    settings = {**SETTINGS, "min_clients": 2, "quorum": 2}
    with running(fed, settings, "outsider", third_joins=False) as r:
        try:
            trained = [raw.train() for raw in r.honest]
            hog = Background(lambda: r.third.client.upload(msg.SUBMIT, silent()), "outsider")
            hog.start()
            time.sleep(0.5)  # its call is in
            started = time.monotonic()
            for raw, (header, params, _) in zip(r.honest, trained, strict=True):
                reply = raw.submit(header["round"], header["attempt"], to_bytes(params))
                assert reply["kind"] == "accepted"
            assert time.monotonic() - started < SETTINGS["dead_after"]  # nobody waited for it
            r.run.outcome()
            assert r.agg.history[0]["participants"] == [site(0), site(1)]
        finally:
            release.set()


def test_a_sender_quiet_in_its_turn_loses_it(fed: Federation) -> None:
    release, holding = threading.Event(), threading.Event()
    settings = {**SETTINGS, "min_clients": 3, "quorum": 2}
    with running(fed, settings, "quiet", third_joins=True) as r:
        try:
            trained = [raw.train() for raw in r.honest]
            header, params, _ = r.third.train()
            head, body = update_head(header), to_bytes(params)
            sent: list[float] = []

            def stalls() -> Iterator[bytes]:
                yield msg.header_bytes(head)
                sent.append(time.monotonic())  # before its last piece: the server's is later
                yield body[:100]
                holding.set()
                release.wait(60)  # the turn is taken meanwhile
                yield body[100:]

            hog = Background(lambda: r.third.client.upload(msg.SUBMIT, stalls()), "quiet")
            hog.start()
            assert holding.wait(10)
            time.sleep(0.3)  # its first pieces are in: it holds the turn
            assert all_at_once(r.honest, trained) == ["accepted", "accepted"]
            waited = time.monotonic() - sent[0]
            assert SETTINGS["dead_after"] <= waited < SETTINGS["round_timeout"] / 2
            release.set()
            # its call was ended as it lost the turn: a stalled call holds what it read
            # (the review of one update per sender)
            with pytest.raises(TransportError, match="CANCELLED"):
                hog.outcome()
            r.run.outcome()
            assert r.agg.history[0]["participants"] == [site(0), site(1)]
        finally:
            release.set()


def test_a_newline_from_a_peer_forges_no_log_line(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    agg = fed.aggregator({**SETTINGS, "min_clients": 1, "quorum": 1},
                         services=[site(0)])  # fmt: skip
    raw = RawClient(fed, agg.port, site(0))
    with serving(agg, raw) as run:
        header, params, _ = raw.train()
        caplog.set_level(logging.WARNING)
        with pytest.raises(TransportError) as refused:  # the round: a string with a newline
            raw.submit("1" + FORGED, header["attempt"], to_bytes(params))  # type: ignore[arg-type]
        assert "\n" not in str(refused.value) and "no open round '1\\n" in str(refused.value)
        extra = {**params, "x" + FORGED: next(iter(params.values()))}
        with pytest.raises(TransportError) as refused:  # a tensor's name
            raw.submit(header["round"], header["attempt"], to_bytes(extra))
        assert "\n" not in str(refused.value) and "tensor 'x\\nCRITICAL" in str(refused.value)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) >= 2 and not [line for line in lines if "\n" in line]
        with pytest.raises(FlError, match="quorum of 1 updates not reached"):
            run.outcome()  # its one site refused


@pytest.mark.parametrize(
    "rule",
    [{"strategy": "median"}, {"strategy": "fedavg"}],  # a turn; the streamed receive window
    ids=["whole-updates", "streamed"],
)
def test_a_sender_that_trickles_its_update_in_holds_no_one_up_past_its_share(
    fed: Federation, rule: dict[str, str]
) -> None:
    """A byte every half second never stalls (``dead_after`` 2 s), and used to keep the
    one receive window until the deadline: both honest updates were refused ("no room
    ... before the deadline") and the round failed. Now, once both honest sites wait, it
    may hold the window for the time left when it took it over itself and the two
    waiting (about 12 s / 3), then loses it and its update for the round."""
    stop, holding = threading.Event(), threading.Event()
    settings = {**SETTINGS, **rule, "round_timeout": 12, "min_clients": 3, "quorum": 2}
    with running(fed, settings, "slow", third_joins=True) as r:
        try:
            trained = [raw.train() for raw in r.honest]
            header, params, _ = r.third.train()
            head, body = update_head(header), to_bytes(params)

            def trickles() -> Iterator[bytes]:
                yield msg.header_bytes(head)
                yield body[:200]
                holding.set()
                for at in range(200, len(body)):
                    if stop.wait(0.5):
                        break
                    yield body[at : at + 1]

            hog = Background(lambda: r.third.client.upload(msg.SUBMIT, trickles()), "slow")
            hog.start()
            assert holding.wait(10)
            time.sleep(0.3)  # it holds the window
            assert all_at_once(r.honest, trained) == ["accepted", "accepted"]
            r.run.outcome()
            assert r.agg.history[0]["participants"] == [site(0), site(1)]
            with pytest.raises(TransportError, match="'slow' held the window past its share"):
                hog.outcome()
        finally:
            stop.set()


def test_a_waiter_refused_meanwhile_does_not_cut_the_holders_share() -> None:
    """Found by review of the first version of the share rule: a sender whose call
    waited for the turn, then was refused by another of its calls, still counted as
    waiting, and cut an honest (slow, not stalling) holder off at half the time left."""
    config = FederationConfig(strategy="median", aggregation_order="arrival", dead_after=30.0,
                              round_timeout=20, min_clients=1, quorum=1)  # fmt: skip
    rounds = Rounds(config, max_update_bytes=10_000)
    now = time.monotonic()
    for name in ("honest", "other"):
        rounds.participants[name] = Participant(name, "", None, now)
    attempt = Attempt(round=1, number=1, sampled=["honest", "other"], model=None,  # type: ignore[arg-type]
                      configs={}, deadline=now + 4, accumulator=None, global_params={})  # fmt: skip
    rounds.open(attempt)
    head = msg.header_bytes({"kind": "update", "round": 1, "attempt": 1, "epoch": rounds.epoch,
                             "samples": 1, "metrics": {}})  # fmt: skip
    stop = threading.Event()
    outcome: dict[str, str] = {}

    def slow() -> Iterator[bytes]:
        yield head
        while not stop.wait(0.2):
            yield b"x"  # never stalls: it would take about 3 of the 4 s left

    def waits() -> Iterator[bytes]:
        yield head
        stop.wait(10)

    def submit(name: str, service: str, pieces: Iterator[bytes]) -> None:
        try:
            rounds.submit(pieces, Peer("p", service, ""))
        except FlError as exc:
            outcome[name] = str(exc)

    threads = [
        threading.Thread(target=submit, args=("honest", "honest", slow())),
        threading.Thread(target=submit, args=("waits", "other", waits())),
    ]
    try:
        threads[0].start()
        time.sleep(0.2)  # honest holds the turn
        threads[1].start()
        time.sleep(0.2)  # other waits for it
        submit("refused", "other", iter([b"\x00\x00\x00\x02{x"]))  # other's second call
        assert attempt.settled("other")
        time.sleep(2.3)  # past half the time left
        assert "honest" not in attempt.refused
        assert "has no pending update" in outcome["waits"]
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def test_a_holder_whose_round_closed_is_not_refused_in_the_next() -> None:
    """Found by review of the first version: the turn outlived its round, and the first
    sender to wait in the next round cut its holder off and refused it there (in the
    waiter's attempt): an honest slow site lost a round it had not even been sent."""
    config = FederationConfig(strategy="median", aggregation_order="arrival", dead_after=30.0,
                              round_timeout=20, min_clients=1, quorum=1)  # fmt: skip
    rounds = Rounds(config, max_update_bytes=10_000)
    now = time.monotonic()
    for name in ("slow", "next"):
        rounds.participants[name] = Participant(name, "", None, now)

    def attempt(number: int, sampled: list[str], seconds: float) -> Attempt:
        return Attempt(round=1, number=number, sampled=sampled, model=None,  # type: ignore[arg-type]
                       configs={}, deadline=time.monotonic() + seconds, accumulator=None,
                       global_params={})  # fmt: skip

    def head(number: int) -> bytes:
        return msg.header_bytes({"kind": "update", "round": 1, "attempt": number,
                                 "epoch": rounds.epoch, "samples": 1, "metrics": {}})  # fmt: skip

    stop = threading.Event()
    outcome: dict[str, str] = {}

    def slow() -> Iterator[bytes]:
        yield head(1)
        while not stop.wait(0.2):
            yield b"x"

    def submit(name: str, pieces: Iterator[bytes]) -> None:
        try:
            rounds.submit(pieces, Peer("p", name, ""))
        except (FlError, TransportError) as exc:
            outcome[name] = str(exc)

    first = attempt(1, ["slow"], 1.0)
    rounds.open(first)
    holder = threading.Thread(target=submit, args=("slow", slow()))
    try:
        holder.start()
        time.sleep(0.2)  # it holds the turn, and its round's deadline passes
        rounds.wait_closed()
        second = attempt(2, ["slow", "next"], 4.0)
        rounds.open(second)
        sender = threading.Thread(target=submit, args=("next", iter([head(2), b"\x00" * 8])))
        sender.start()
        sender.join(10)
        assert "slow" not in second.refused
        assert "next" in second.refused  # its (malformed) update had the turn at once
        stop.set()
        holder.join(10)
        assert "after its round closed" in outcome["slow"]
    finally:
        stop.set()


@pytest.mark.parametrize("who", ["stranger", "not-sampled", "other-round"])
def test_canonical_order_reads_no_payload_before_the_header_is_vetted(who: str) -> None:
    """Found by a hostile review: with a rule that needs whole updates in ``canonical``
    order (the default), an update was read whole into memory before its sender was
    checked, so a stranger's four calls held four updates' worth of memory each (on a
    38 MiB model, a traced peak of 145 MiB) before ``has not joined``. Now no more than
    the header's own piece is read from a caller that owes no update."""
    config = FederationConfig(strategy="median", dead_after=30.0, round_timeout=20,
                              min_clients=1, quorum=1)  # fmt: skip
    assert config.aggregation_order == "canonical"
    rounds = Rounds(config, max_update_bytes=64 << 20)
    now = time.monotonic()
    for name in ("site", "not-sampled"):
        rounds.participants[name] = Participant(name, "", None, now)
    attempt = Attempt(round=1, number=1, sampled=["site"], model=None,  # type: ignore[arg-type]
                      configs={}, deadline=now + 20, accumulator=None,
                      global_params={})  # fmt: skip
    rounds.open(attempt)
    service = {"stranger": "stranger", "not-sampled": "not-sampled", "other-round": "site"}[who]
    head = msg.header_bytes({"kind": "update", "round": 2 if who == "other-round" else 1,
                             "attempt": 1, "epoch": rounds.epoch, "samples": 1,
                             "metrics": {}})  # fmt: skip
    pulled = []

    def pieces() -> Iterator[bytes]:
        yield head
        for _ in range(48):  # 48 MiB, within the update limit
            pulled.append(1)
            yield bytes(1 << 20)

    with pytest.raises(FlError, match="^protocol: "):
        rounds.submit(pieces(), Peer("p", service, ""))
    assert pulled == []
    assert not attempt.settled("site")  # a misdirected update leaves the round unharmed


def test_canonical_order_reads_one_update_per_sender_and_none_past_its_attempt() -> None:
    """Found by a hostile review: in ``canonical`` order a sampled sender's four calls
    at once each passed the header's vetting and each was read whole into memory (four
    updates' worth for one peer); and (the review of the fix) a call that stalled as its
    attempt closed kept what it held, while the sender stalled another in each attempt
    that followed. Now a second call of the same sender in the same attempt is refused
    before any of its payload is read, and a call for a later attempt ends the earlier
    one (gRPC's cancel wakes its handler; the stand-in here lets its stream go on)."""
    config = FederationConfig(strategy="median", dead_after=30.0, round_timeout=20,
                              min_clients=1, quorum=1)  # fmt: skip
    rounds = Rounds(config, max_update_bytes=64 << 20)
    now = time.monotonic()
    rounds.participants["site"] = Participant("site", "", None, now)

    def attempt(number: int) -> Attempt:
        return Attempt(round=1, number=number, sampled=["site"], model=None,  # type: ignore[arg-type]
                       configs={}, deadline=time.monotonic() + 20, accumulator=None,
                       global_params={})  # fmt: skip

    def head(number: int) -> bytes:
        return msg.header_bytes({"kind": "update", "round": 1, "attempt": number,
                                 "epoch": rounds.epoch, "samples": 1, "metrics": {}})  # fmt: skip

    first_attempt = attempt(1)
    rounds.open(first_attempt)
    sending, cancelled = threading.Event(), threading.Event()
    pulled: list[str] = []

    def pieces(who: str, number: int = 1) -> Iterator[bytes]:
        yield head(number)
        pulled.append(who)
        yield bytes(1 << 20)
        if who == "first":
            sending.set()
            cancelled.wait(20)  # stalled: nothing more until its call is ended
            pulled.append(who)
            yield bytes(1 << 20)

    outcome: list[BaseException] = []

    def first() -> None:
        try:
            rounds.submit(pieces("first"), Peer("p", "site", "", cancel=cancelled.set))
        except (FlError, TransportError) as exc:
            outcome.append(exc)

    worker = threading.Thread(target=first)
    worker.start()
    assert sending.wait(20)
    for _ in range(3):  # the other calls of the same sender: refused, nothing read
        with pytest.raises(FlError, match="^protocol: 'site' is already sending its update$"):
            rounds.submit(pieces("second"), Peer("p", "site", ""))
    assert "second" not in pulled
    assert not first_attempt.settled("site")  # the first call still owns the update
    assert rounds.wait_closed(stop=lambda: True) is first_attempt  # say, its deadline
    assert not cancelled.is_set() and worker.is_alive()  # stalled, holding what it read
    rounds.open(attempt(2))
    with pytest.raises(FlError, match="^tensors: malformed"):  # read whole: a stand-in's junk
        rounds.submit(pieces("next", 2), Peer("p", "site", ""))
    assert cancelled.is_set()  # ... after the stalled call was ended
    worker.join(20)
    assert len(outcome) == 1 and str(outcome[0]) == (
        "message: protocol: round 1 attempt 1 closed while the update was arriving"
    )
    assert sorted(pulled) == ["first", "first", "next"] and rounds._receiving == {}


def test_a_call_stalled_through_the_next_attempt_is_ended() -> None:
    """The review of the fix above: a sender that stalled one call and never called
    again kept what it had read round after round. The close of the attempt after its
    own ends it."""
    config = FederationConfig(strategy="median", dead_after=30.0, round_timeout=20,
                              min_clients=1, quorum=1)  # fmt: skip
    rounds = Rounds(config, max_update_bytes=64 << 20)
    rounds.participants["site"] = Participant("site", "", None, time.monotonic())

    def attempt(number: int) -> Attempt:
        return Attempt(round=number, number=1, sampled=["site"], model=None,  # type: ignore[arg-type]
                       configs={}, deadline=time.monotonic() + 20, accumulator=None,
                       global_params={})  # fmt: skip

    first = attempt(1)
    rounds.open(first)
    sending, cancelled = threading.Event(), threading.Event()

    def pieces() -> Iterator[bytes]:
        yield msg.header_bytes({"kind": "update", "round": 1, "attempt": 1,
                                "epoch": rounds.epoch, "samples": 1, "metrics": {}})  # fmt: skip
        yield bytes(1 << 20)
        sending.set()
        cancelled.wait(20)  # what gRPC's cancel does to the handler: its stream ends

    peer = Peer("p", "site", "", cancel=cancelled.set)
    worker = threading.Thread(target=_swallow, args=(lambda: rounds.submit(pieces(), peer),))
    worker.start()
    assert sending.wait(20)
    rounds.wait_closed(stop=lambda: True)
    assert not cancelled.is_set()  # its own attempt's close: it may still send, and hear why
    rounds.open(attempt(2))
    rounds.wait_closed(stop=lambda: True)  # the site was silent all through round 2
    assert cancelled.is_set()
    worker.join(20)
    assert not worker.is_alive() and rounds._receiving == {}


@pytest.mark.parametrize("order", ["canonical", "arrival"])
def test_a_stalled_call_over_grpc_is_ended_by_the_next_attempts_close(order: str) -> None:
    """The same over real gRPC (the review's repro): a sender that read 8 MiB into a
    call and went silent, never to call again, kept that call (and its buffer) open
    through every later round. gRPC's cancel now ends it when the next attempt closes,
    in either order."""
    from secfl.fl._channel import Client
    from secfl.fl._peers import PeerPolicy
    from secfl.fl._transport import Server

    config = FederationConfig(strategy="median", dead_after=30.0, round_timeout=20,
                              min_clients=1, quorum=1, aggregation_order=order)  # fmt: skip
    rounds = Rounds(config, max_update_bytes=64 << 20)
    server = Server(None, PeerPolicy("p", {"site", "other"}))
    rounds.register(server)
    port = server.start()
    for name in ("site", "other"):
        rounds.participants[name] = Participant(name, "", None, time.monotonic())

    def attempt(number: int, sampled: list[str]) -> Attempt:
        return Attempt(round=number, number=1, sampled=sampled, model=None,  # type: ignore[arg-type]
                       configs={}, deadline=time.monotonic() + 20, accumulator=None,
                       global_params={})  # fmt: skip

    rounds.open(attempt(1, ["site"]))
    head = msg.header_bytes({"kind": "update", "round": 1, "attempt": 1,
                             "epoch": rounds.epoch, "samples": 1, "metrics": {}})  # fmt: skip
    sent, forever = threading.Event(), threading.Event()

    def stalled() -> Iterator[bytes]:
        yield head
        for _ in range(8):
            yield bytes(1 << 20)
        sent.set()
        forever.wait(60)

    client = Client(f"127.0.0.1:{port}", None, server_name="aggregator", name="site", timeout=60)
    call = Background(lambda: client.upload(msg.SUBMIT, stalled(), timeout=60), "site")
    try:
        call.start()
        assert sent.wait(30)
        deadline = time.monotonic() + 10
        while "site" not in rounds._receiving and time.monotonic() < deadline:
            time.sleep(0.05)  # its pieces are being read
        time.sleep(0.5)  # (read to the end, mostly: see below)
        rounds.wait_closed(stop=lambda: True)
        rounds.open(attempt(2, ["other"]))
        rounds.wait_closed(stop=lambda: True)  # 'site' silent all through round 2
        # ended by the next attempt's close (CANCELLED); on a loaded machine the server
        # may still have been reading its 8 MiB when its own attempt closed, which ends
        # it then (a CI run): either way it is not kept open
        with pytest.raises(TransportError, match="CANCELLED|closed while the update was arriving"):
            call.outcome()
        deadline = time.monotonic() + 10
        while (rounds._receiving or "site" in server._calls) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rounds._receiving == {} and "site" not in server._calls
    finally:
        forever.set()
        client.close()
        server.stop(None)


def _swallow(fn: Any) -> None:
    with contextlib.suppress(FlError, TransportError):
        fn()


@pytest.mark.parametrize(
    ("tensor", "value", "limit"),
    [("w", 1e155, "±2\\^100"), ("w", -1.7e308, "±2\\^100"),
     ("n", 2**60, "±2\\^52 \\(an integer tensor\\)"), ("n", 2**63 - 1, "±2\\^52")],
)  # fmt: skip
def test_a_value_no_rule_can_compute_with_is_refused_on_arrival(
    tensor: str, value: float, limit: str
) -> None:
    """Found by a hostile review: one finite 1e155 in a float64 model passed every check
    on arrival, then made Krum's distances (Bulyan's, FLTrust's, the clone audit's)
    overflow: the round's aggregation failed, and the run with it, round after round. A
    BatchNorm counter of 2**60 did the same to the clone audit over FedAvg, and
    INT64_MAX came out of Multi-Krum as INT64_MIN. Now only that update is refused."""
    from secfl.fl._tensors import to_bytes

    config = FederationConfig(strategy="krum", dead_after=30.0, round_timeout=20,
                              min_clients=1, quorum=1)  # fmt: skip
    model = {"w": np.zeros(8, np.float64), "n": np.array(100, np.int64)}
    rounds = Rounds(config, max_update_bytes=1 << 20)
    now = time.monotonic()
    rounds.participants["site"] = Participant("site", "", None, now)
    attempt = Attempt(round=1, number=1, sampled=["site"], model=None,  # type: ignore[arg-type]
                      configs={}, deadline=now + 20, accumulator=None,
                      global_params=model)  # fmt: skip
    rounds.open(attempt)
    update = {k: v.copy() for k, v in model.items()}
    if tensor == "n":
        update["n"][...] = value
    else:
        update["w"][3] = value
    head = msg.header_bytes({"kind": "update", "round": 1, "attempt": 1, "epoch": rounds.epoch,
                             "samples": 1, "metrics": {}})  # fmt: skip
    with pytest.raises(FlError, match=f"tensor '{tensor}' holds a value beyond {limit}"):
        rounds.submit(iter([head, to_bytes(update)]), Peer("p", "site", ""))
    assert "site" in attempt.refused  # this update, not the round
