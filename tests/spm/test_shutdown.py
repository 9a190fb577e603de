"""A stopped SPM (SIGTERM) exits at once though a client holds an idle connection:
an aggregator always does (its pinned connection, kept alive between increments), and
an SPM that waited for that client's TLS close_notify took 5 s (uvicorn's graceful
timeout) to restart, every time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from secfl.spm._server import GRACEFUL_SHUTDOWN
from secfl.spm.client import SpmClient
from tests.spm.harness import Board, SpmProcess, policy_document

pytestmark = pytest.mark.timeout(120)

#: An SPM that waits for an idle connection waits this long, never less: an exit
#: sooner did not wait (a normal stop takes about 0.2 s, a loaded machine a few times
#: that). The bound is the mechanism's, not a speed target.
PROMPT = GRACEFUL_SHUTDOWN


def stopped_in(spm: SpmProcess) -> float:
    began = time.monotonic()
    spm.stop()
    return time.monotonic() - began


def test_an_idle_client_connection_does_not_hold_up_a_stop(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    spm = SpmProcess(tmp_path / "data", sim[0], None).start()
    try:
        with SpmClient(spm.url, pin=spm.pin) as client:
            document = policy_document("p", board, sim[1])
            client.submit_policy(document, board.sign(document, "alice", "bob"))  # a POST
            assert client.policy("p")["version"] == 1  # and a GET: the connection is idle now
            seconds = stopped_in(spm)
            assert spm.proc is not None and spm.proc.returncode is not None
            assert seconds < PROMPT, f"the SPM took {seconds:.1f} s to stop"
    finally:
        spm.stop()
    # what it had accepted is there after the restart
    spm = SpmProcess(tmp_path / "data", sim[0], None).start()
    try:
        with SpmClient(spm.url, pin=spm.pin) as client:
            assert client.policy("p")["version"] == 1
    finally:
        spm.stop()
