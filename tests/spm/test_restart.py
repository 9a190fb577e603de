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


def test_a_certificate_named_in_another_spelling_cannot_stop_the_next_start(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a review: a board-signed revocation of certificate ``0ab`` was stored as
    ``ab`` and logged as ``0ab``; at the next start the log's revocation was "missing"
    from the database and the SPM called it a rollback, at every start after. Another
    spelling is now refused in one line, and the one spelling is recorded and kept."""
    from secfl.policy._signatures import REVOCATION_DOMAIN, sign_statement
    from secfl.spm._floor_changes import change_of
    from secfl.spm._revocation import revocation_digest
    from secfl.spm.client import SpmRefused

    def revoke(client: SpmClient, subject: str) -> object:
        statement = {"kind": "certificate", "subject": subject, "service": "", "reason": "lost"}
        digest = revocation_digest({"policy": "fed", **statement})
        sigs = [
            sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m) for m in ("alice", "bob")
        ]
        return client.revoke("fed", statement, sigs)

    spm = SpmProcess(tmp_path / "data", sim[0], None).start()
    try:
        with SpmClient(spm.url, pin=spm.pin) as client:
            document = policy_document("fed", board, sim[1])
            client.submit_policy(document, board.sign(document, "alice", "bob"))
            for other in ("0ab", "0xab", "a:b", "-0"):
                with pytest.raises(SpmRefused, match="^revocation: a certificate subject is its"):
                    revoke(client, other)
            revoke(client, "ab")
        spm.stop()
        spm.start()  # the old code's SPM failed here, and at every start after
        with SpmClient(spm.url, pin=spm.pin) as client:
            assert [(r["kind"], r["subject"]) for r in client.revocations("fed")] == [
                ("certificate", "ab")
            ]
    finally:
        spm.stop()
    # entries written before the refusal start too: their subject is read as stored
    detail = {"kind": "certificate", "subject": "0AB"}
    assert change_of("revocation.added", "fed", detail) == ("revoke", "fed", "certificate", "ab")
