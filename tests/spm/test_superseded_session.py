"""Once the board approved a new policy version, the old version's run must not
commit another round: against a real `secfl spm serve`, a session attested under
the replaced version may no longer move a counter (at once, not after a cache
expires), while a workload attested again under the new version may; and the
aggregator's ledger turns that refusal into its one-line stop. (And, on an SPM of its
own, what a table the host dropped gives: one line, no traceback.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from secfl.errors import FlError
from secfl.fl._commit import SpmLedger
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, Board, policy_document, spm_with_policy

pytestmark = pytest.mark.timeout(120)


def test_a_session_of_a_replaced_version_may_not_move_a_counter(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    with spm_with_policy(tmp_path / "data", sim, board, "aggregator") as (proc, enrolled):
        old = enrolled["aggregator"].session_token
        with SpmClient(proc.url, pin=proc.pin) as client:
            assert client.increment("fed", "round", old) == 1
            first = client.policy("fed")["digest"]
            v2 = policy_document("fed", board, sim[1], version=2, predecessor=first)
            client.submit_policy(v2, board.sign(v2, "alice", "bob"))

            with pytest.raises(SpmRefused) as refused:
                client.increment("fed", "round", old)
            assert str(refused.value) == (
                "policy: version 2 of 'fed' replaced this session's version 1: attest again "
                "(start the workload again with `secfl run`)"
            )
            assert refused.value.status == 409
            assert client.counter("fed", "round") == 1  # nothing moved
            # nor write the run's events (found by a hostile review: a replaced session's
            # "round 999" showed in `secfl status` while the counter stood at 1)
            before = client.audit(0, 10000)["entries"][-1]["seq"]
            finding = {"round": 999, "excluded": ["aggregator"]}
            with pytest.raises(SpmRefused, match="^policy: version 2 of 'fed' replaced") as ev:
                client.report("fed", "audit.excluded", finding, old)
            assert ev.value.status == 409
            with pytest.raises(SpmRefused, match="^policy: version 2 of 'fed' replaced") as ev:
                client.increment("fed", "round", old, round={"round": 999, "participants": 5})
            assert ev.value.status == 409
            assert client.audit(before, 10000)["entries"] == []

            ledger = SpmLedger(lambda: client, "fed", "round", lambda: old)
            stop = r"^policy: the board approved a new version of 'fed': this run stops here; "
            with pytest.raises(FlError, match=stop + "start the aggregator again"):
                ledger.increment()

            platform = simulated.SimulatedPlatform(sim[0])
            new = enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR)
            assert client.increment("fed", "round", new.session_token) == 2


def test_a_table_the_host_dropped_is_refused_in_one_line(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a hostile review: with the ``nonces`` table dropped, attestation answered
    500 and the SPM's log held SQLAlchemy's traceback (the nonce is spent outside the
    savepoint whose database errors were worded)."""
    import sqlite3

    with spm_with_policy(tmp_path / "data", sim, board) as (proc, _):
        with sqlite3.connect(proc.data / "spm.db") as db:
            db.execute("DROP TABLE nonces")
        with SpmClient(proc.url, pin=proc.pin) as client:
            platform = simulated.SimulatedPlatform(sim[0])
            with pytest.raises(SpmRefused, match=r"^store: database error: no such table: nonces$"):
                enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR)
        assert proc.log is not None
        assert "Traceback" not in proc.log.read_text()
