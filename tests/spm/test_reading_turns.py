"""Policy documents are read a few at a time, the rest in order of arrival. Found by a
hostile review: answered "busy" at once, two slow submissions (a document of 90,000
anchored values, seconds of YAML each) kept both turns taken, and every board's
submission in between was refused. Against a real `secfl spm serve`; the turns' rules
with threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from secfl.errors import Refused
from secfl.spm._reading import ReadingTurns
from secfl.spm.client import SpmClient, SpmRefused
from tests.spm.harness import Board, SpmProcess, policy_document

pytestmark = pytest.mark.timeout(120)

#: Slow to read (pure-Python YAML: ~1.5 s on its own) and refused once read; not so slow
#: that two read at once (sharing the SPM's GIL) outlast the board's 20 s of patience on
#: a loaded test machine (90,000 anchors did: 4 s each, quiet).
SLOW = "a: [" + ", ".join(f"&x{i} 1" for i in range(35_000)) + "]\n"


def test_a_board_gets_its_turn_between_slow_submissions(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    spm = SpmProcess(tmp_path / "data", sim[0], None).start()
    answers: list[str] = []
    try:

        def slow() -> None:
            with SpmClient(spm.url, pin=spm.pin) as client:
                try:
                    client.submit_policy(SLOW, [], patience=0)
                except SpmRefused as exc:
                    answers.append(str(exc))

        floods = [threading.Thread(target=slow) for _ in range(2)]
        for flood in floods:
            flood.start()
        time.sleep(0.5)  # both being read now
        document = policy_document("board-first", board, sim[1])
        with SpmClient(spm.url, pin=spm.pin) as client:
            started = time.monotonic()
            # no asking again: the SPM itself gives the board its turn
            reply = client.submit_policy(document, board.sign(document, "alice", "bob"),
                                         patience=0)  # fmt: skip
            waited = time.monotonic() - started
        for flood in floods:
            flood.join(60)
    finally:
        spm.stop()
    assert reply["name"] == "board-first" and reply["version"] == 1
    assert len(answers) == 2 and all(a.startswith("policy: ") for a in answers), answers
    assert waited < 60


def test_turns_go_in_order_of_arrival_and_the_queue_is_bounded() -> None:
    turns = ReadingTurns(readers=1, waiting=2, patience=5.0)
    order: list[int] = []
    gate = threading.Event()

    def reader(n: int) -> None:
        with turns.turn():
            order.append(n)
            gate.wait(5)

    first = threading.Thread(target=reader, args=(0,))
    first.start()
    while not order:
        time.sleep(0.01)
    waiting = []
    for n in (1, 2):
        waiting.append(threading.Thread(target=reader, args=(n,)))
        waiting[-1].start()
        time.sleep(0.1)  # arrives after the one before
    busy = "^busy: many policy documents are waiting"
    with pytest.raises(Refused, match=busy), turns.turn():
        pass
    gate.set()
    for thread in [first, *waiting]:
        thread.join(10)
    assert order == [0, 1, 2]


def test_one_that_waited_too_long_leaves_the_line_for_the_next() -> None:
    turns = ReadingTurns(readers=1, waiting=4, patience=0.2)
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with turns.turn():
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    busy = "^busy: other policy documents are being read"
    with pytest.raises(Refused, match=busy), turns.turn():
        pass
    release.set()
    holder.join(5)
    with turns.turn():  # the one that gave up is not at the head of the line
        pass


def test_one_senders_many_connections_cannot_keep_another_sender_out() -> None:
    """The review of the queue: twelve connections of one sender, each asking again
    the moment it was answered, kept the queue full, and a board that asked again
    every second was never read in a minute. A sender with nothing waiting takes the
    place of the crowd's newest."""
    turns = ReadingTurns(readers=2, waiting=8, patience=5.0)
    stop = threading.Event()
    read: dict[str, int] = {"crowd": 0, "board": 0}

    def crowd() -> None:
        while not stop.is_set():
            try:
                with turns.turn("10.0.0.66"):
                    read["crowd"] += 1
                    time.sleep(0.2)
            except Refused:
                pass

    flood = [threading.Thread(target=crowd) for _ in range(12)]
    for thread in flood:
        thread.start()
    time.sleep(0.5)  # the queue is full
    started = time.monotonic()
    try:
        for _ in range(10):  # as SpmClient.submit_policy asks again
            try:
                with turns.turn("10.0.0.7"):
                    read["board"] += 1
                break
            except Refused:
                time.sleep(1.0)
        waited = time.monotonic() - started
    finally:
        stop.set()
        for thread in flood:
            thread.join(10)
    assert read["board"] == 1 and read["crowd"] > 0
    assert waited < 5.0  # behind at most the queue's eight, two at a time


def test_a_newcomer_does_not_push_out_a_few_requests_behind_one_address() -> None:
    """The review of the sharing: two honest requests behind one NAT lost their place
    to any newcomer. Only an address holding half the queue or more gives way."""
    turns = ReadingTurns(readers=1, waiting=6, patience=3.0)
    release, answers = threading.Event(), {}

    def hold() -> None:
        with turns.turn("10.0.0.1"):
            release.wait(5)

    def wait(name: str, peer: str) -> None:
        try:
            with turns.turn(peer):
                answers[name] = "read"
        except Refused as exc:
            answers[name] = str(exc)

    reader = threading.Thread(target=hold)
    reader.start()
    time.sleep(0.1)
    queued = [threading.Thread(target=wait, args=(f"nat-{i}", "192.0.2.1")) for i in range(2)]
    queued += [
        threading.Thread(target=wait, args=(f"other-{i}", f"198.51.100.{i}")) for i in range(4)
    ]
    for thread in queued:
        thread.start()
        time.sleep(0.05)
    busy = "^busy: many policy documents are waiting"
    with pytest.raises(Refused, match=busy), turns.turn("203.0.113.9"):
        pass
    release.set()
    for thread in [reader, *queued]:
        thread.join(10)
    assert answers == {
        name: "read" for name in ["nat-0", "nat-1", *(f"other-{i}" for i in range(4))]
    }


def test_an_ipv6_sender_counts_once_for_its_whole_64() -> None:
    from secfl.spm._reading import _address_group

    assert _address_group("2001:db8::1") == _address_group("2001:db8::ffff:2") == "2001:db8::/64"
    assert _address_group("::ffff:192.0.2.1") == "192.0.2.1" != _address_group("::ffff:192.0.2.2")
    assert _address_group("192.0.2.1") == "192.0.2.1"
