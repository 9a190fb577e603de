"""The aggregator's thread reads the revocation list (and renews its identity) every
REFRESH_SECONDS from the start of the last read, not from its end. Found by a hostile
review: it waited the full 10 s after each read and renewal, so a read that took 20 s
(an SPM under load) or a renewal meanwhile spaced two lists more than STALE_SECONDS
(30 s) apart, and the aggregator refused every collaborator (UNAVAILABLE) while the SPM
answered each request."""

from __future__ import annotations

import itertools
import threading
import time
from types import SimpleNamespace

import pytest

from secfl.fl import _aggregator
from secfl.fl._aggregator import Aggregator

pytestmark = pytest.mark.timeout(60)


def test_a_slow_read_does_not_space_the_next_one_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_aggregator, "REFRESH_SECONDS", 2.0)
    stop = threading.Event()
    began: list[float] = []

    def reread() -> None:  # as slow as 60 % of the period
        began.append(time.monotonic())
        if len(began) >= 4:
            stop.set()
        time.sleep(1.2)

    thread = threading.Thread(
        target=Aggregator._rereading, args=(SimpleNamespace(_stop_rereading=stop), reread)
    )
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    gaps = [b - a for a, b in itertools.pairwise(began)]
    # every 2 s from the start (3.2 s before: the period after a 1.2 s read)
    assert sum(gaps) / len(gaps) < 2.6, gaps
