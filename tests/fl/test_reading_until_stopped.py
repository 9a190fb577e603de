"""The aggregator reads the revocation list (and renews its identity) until it stops
serving, not only until training ends. Found by a hostile review: the reading thread
stopped when the rounds did, while the server went on answering as the final model was
written out; past STALE_SECONDS every call was refused UNAVAILABLE (a late collaborator
never heard "done"), and under a policy with short certificates the session could
expire before the final model's tag was recorded, failing the run at its end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from secfl.fl import _aggregator
from secfl.tasks import get_task
from secfl.tasks._split import split

from .fedkit import Federation, wait_for

pytestmark = pytest.mark.timeout(120)


def test_reading_goes_on_after_training_until_the_server_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = split("digits", 1, seed=1, out=tmp_path)
    fed = Federation(get_task("digits"), report)
    monkeypatch.setattr(_aggregator, "REFRESH_SECONDS", 1.0)
    settings = {"rounds": 1, "min_clients": 1, "quorum": 1, "round_timeout": 60,
                "heartbeat": 0.5, "dead_after": 5.0, "join_timeout": 30, "seed": 3}  # fmt: skip
    agg = fed.aggregator(settings, start=False)
    reads: list[float] = []
    agg.reread = lambda: reads.append(time.monotonic())
    agg.start()
    try:
        fed.run(agg, [0], joined=1)  # run() returns, then the test stops its server
        ended = time.monotonic()
        # the final model is being written out: reads go on
        wait_for(lambda: any(t > ended + 1.0 for t in reads), "a read after training", 10)
    finally:
        agg.stop(None)
    stopped = len(reads)
    time.sleep(2.5)
    assert len(reads) <= stopped + 1, "still reading after the aggregator stopped"
