"""A collaborator beats while it trains, from one thread for its whole run: beats
come every interval inside a round, none between rounds, and closing stops them."""

from __future__ import annotations

import threading
import time

from secfl.fl._collaborator import _Heartbeat


def beating() -> int:
    """Heartbeat threads alive (other tests' threads in this process come and go)."""
    return sum(t.name == "secfl-beat" for t in threading.enumerate())


def test_beats_come_while_training_and_stop_between_rounds() -> None:
    beats: list[float] = []
    heart = _Heartbeat(lambda: beats.append(time.monotonic()), lambda: 0.05)
    before = beating()
    for _ in range(3):  # three rounds of about six intervals
        with heart:
            time.sleep(0.32)
        time.sleep(0.02)  # a beat under way as the round ended has landed
        count = len(beats)
        time.sleep(0.25)  # between rounds: no beat
        assert len(beats) == count
    assert 9 <= len(beats) <= 21  # about six a round (a loaded machine beats late)
    assert beating() == before + 1  # one thread, kept
    heart.close()
    assert beating() == before


def test_a_round_shorter_than_the_interval_sends_no_beat() -> None:
    beats: list[int] = []
    heart = _Heartbeat(lambda: beats.append(1), lambda: 5.0)
    for _ in range(20):
        with heart:
            pass
    heart.close()
    assert beats == []


def test_a_failing_beat_does_not_stop_the_next() -> None:
    calls: list[int] = []

    def beat() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the transport failed")

    heart = _Heartbeat(beat, lambda: 0.02)
    with heart:
        time.sleep(0.2)
    heart.close()
    assert len(calls) >= 2


def test_rounds_wake_the_thread_only_at_its_deadlines() -> None:
    # Waking the beat thread as each round starts and ends cost the training thread more
    # than the beats; a thousand short rounds now wake it a handful of times at most.
    heart = _Heartbeat(lambda: None, lambda: 5.0)
    with heart:
        pass
    time.sleep(0.05)  # the thread waits towards its first deadline
    before = heart.wakes
    for _ in range(1000):
        with heart:
            pass
    time.sleep(0.05)
    heart.close()
    assert heart.wakes - before <= 2


def test_a_shorter_interval_wakes_the_thread_for_the_next_round() -> None:
    beats: list[float] = []
    every = [30.0]
    heart = _Heartbeat(lambda: beats.append(time.monotonic()), lambda: every[0])
    with heart:
        pass
    time.sleep(0.05)  # the thread sleeps towards a deadline 30 s away
    every[0] = 0.05  # the aggregator announced a shorter heartbeat
    with heart:
        time.sleep(0.4)
    heart.close()
    assert len(beats) >= 3
