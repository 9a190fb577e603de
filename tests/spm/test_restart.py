"""SIGKILL the SPM in the middle of a stream of counter increments, restart it:
no counter goes back, no accepted policy or secret is lost, the audit chain verifies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from secfl.errors import SpmError
from secfl.spm._audit_verify import verify_database, verify_remote
from secfl.spm.client import SpmClient
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.conftest import drop_pg_database, fresh_pg_database
from tests.spm.harness import AGGREGATOR_MR, Board, SpmProcess, make_sim, policy_document


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_during_increments_then_restart(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = pg = None
    if backend == "postgresql":
        pg = request.getfixturevalue("pg_url")
        db, name = fresh_pg_database(pg)
    root = make_sim(tmp_path / "sim")
    spm = SpmProcess(tmp_path / "data", tmp_path / "sim", db).start()
    try:
        client, _ = SpmClient.verify(spm.url, expect_measurement=spm.measurement, sim_root=root)
        board = Board.create()
        document = policy_document("fl-crash", board, root)
        accepted = client.submit_policy(document, board.sign(document, "alice", "bob"))
        platform = simulated.SimulatedPlatform(tmp_path / "sim")
        first = enroll(client, platform, "fl-crash", "aggregator", measurement=AGGREGATOR_MR)

        acknowledged: list[int] = []
        failures: list[str] = []

        def stream() -> None:
            with SpmClient(spm.url, pin=spm.pin) as own:
                while True:
                    try:
                        acknowledged.append(own.increment("fl-crash", "round", first.session_token))
                    except SpmError as exc:
                        failures.append(str(exc))
                        return

        workers = [threading.Thread(target=stream) for _ in range(4)]
        for w in workers:
            w.start()
        while len(acknowledged) < 200:
            time.sleep(0.01)
        spm.kill()
        for w in workers:
            w.join(timeout=30)
        assert failures, "the increments should have failed when the SPM died"
        assert len(set(acknowledged)) == len(acknowledged), "an increment was acknowledged twice"
        high = max(acknowledged)

        spm.start()
        with SpmClient(spm.url, pin=spm.pin) as again:  # same pin: the key survived
            assert again.counter("fl-crash", "round") >= high
            assert again.increment("fl-crash", "round", first.session_token) > high
            assert again.policy("fl-crash")["digest"] == accepted["digest"]
            second = enroll(again, platform, "fl-crash", "aggregator", measurement=AGGREGATOR_MR)
            assert second.render("model-key", "hex") == first.render("model-key", "hex")
            count, head = verify_remote(spm.url, spm.pin)
            assert count == head
        spm.stop()
        assert verify_database(tmp_path / "data", db) == (count, head)
    finally:
        spm.stop()
        if pg is not None:
            drop_pg_database(pg, name)
