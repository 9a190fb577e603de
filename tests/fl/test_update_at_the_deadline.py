"""An update whose check outlasts its attempt counts nowhere (found by a hostile review).

Arrival order with a rule that needs the whole round (median): an update vetted just
before its attempt closed was added to the round's accumulator after the round loop
had closed the attempt and listed its updates: it shaped the model while missing from
the round's participants, and its sender was told "accepted". A check of a large model
makes the window; here a gate in the check holds it open, everything else is the real
round code. The update is now vetted again, and counted, while the round loop cannot
close the attempt's books."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from secfl.errors import FlError, TransportError
from secfl.fl import _messages as msg
from secfl.fl import _submit
from secfl.fl._config import FederationConfig
from secfl.fl._peers import Peer
from secfl.fl._rounds import Attempt, Participant, Rounds
from secfl.fl._tensors import to_bytes

pytestmark = pytest.mark.timeout(60)


def test_an_update_checked_past_its_deadline_is_refused_not_aggregated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = FederationConfig(strategy="median", aggregation_order="arrival", dead_after=30.0,
                              round_timeout=20, min_clients=1, quorum=1)  # fmt: skip
    params = {"w": np.zeros(4, np.float32)}
    rounds = Rounds(config, max_update_bytes=10_000)
    for name in ("early", "late"):
        rounds.participants[name] = Participant(name, "", 10, time.monotonic())
    accumulator = config.strategy_object().accumulator(1, params)
    attempt = Attempt(round=1, number=1, sampled=["early", "late"], model=None,  # type: ignore[arg-type]
                      configs={}, deadline=time.monotonic() + 20, accumulator=accumulator,
                      global_params=params)  # fmt: skip
    rounds.open(attempt)

    checking, release = threading.Event(), threading.Event()
    real = _submit.check_update

    def slow_check(update: Any, global_params: Any, **kw: Any) -> Any:
        if update.sender == "late":  # a large model's check, at the deadline
            checking.set()
            release.wait(10)
        return real(update, global_params, **kw)

    monkeypatch.setattr(_submit, "check_update", slow_check)
    answers: dict[str, str] = {}

    def send(name: str, value: float) -> None:
        head = msg.header_bytes({"kind": "update", "round": 1, "attempt": 1,
                                 "epoch": rounds.epoch, "samples": 10,
                                 "metrics": {"loss": 1.0}})  # fmt: skip
        update = to_bytes({"w": np.full(4, value, np.float32)})
        try:
            reply = rounds.submit(iter([head + update]), Peer("p", name, ""))
            answers[name] = msg.decode(reply)[0]["kind"]
        except (FlError, TransportError) as exc:
            answers[name] = str(exc)

    send("early", 1.0)
    late = threading.Thread(target=send, args=("late", 100.0))
    late.start()
    assert checking.wait(10)
    attempt.deadline = time.monotonic()  # the deadline passes during the late check
    closed = rounds.wait_closed()
    listed = sorted(closed.updates)
    release.set()
    late.join(10)
    model = accumulator.finish()
    assert listed == ["early"] == sorted(closed.updates)
    assert answers["early"] == "accepted"
    assert answers["late"].startswith("protocol: no open round 1 attempt 1"), answers
    assert accumulator.senders == ["early"]
    assert model["w"].tolist() == [1.0] * 4  # the median of the listed update alone
