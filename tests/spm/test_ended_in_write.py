"""A renewal that commits while the old session's call waits for its write stops the write.

Found by a review: a session its workload replaced by attesting again
(:mod:`secfl.spm._renewal`) was refused only when its call was admitted, from this
SPM's floors, which learn another SPM's commits when its view of the policy is
re-read (once a second). Two SPMs share a database (replicas): the workload renews on
one; on the other, whose view was still fresh, the replaced token moved the
federation's counter and posted findings after its ``session.ended`` entry, in the log
and in the counter. The transaction that writes catches up with the log before it
runs, so each such write now checks that its session did not end, as it checks the
revocations that name it."""

from __future__ import annotations

from pathlib import Path

import pytest

from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, Board, policy_document, shared_replicas

pytestmark = pytest.mark.timeout(120)

ENDED = "session: this session ended when its workload attested again"


def test_a_replicas_renewal_stops_a_write_of_the_replaced_session(
    tmp_path: Path, board: Board, sim: tuple[Path, bytes]
) -> None:
    # a's view of the policy and revocations is re-read at most once a second
    with (
        shared_replicas(tmp_path, sim) as (a, b),
        SpmClient(a.url, pin=a.pin) as ca,
        SpmClient(b.url, pin=b.pin) as cb,
    ):
        document = policy_document("p", board, sim[1])
        ca.submit_policy(document, board.sign(document, "alice", "bob"))
        platform = simulated.SimulatedPlatform(sim[0])
        old = enroll(ca, platform, "p", "aggregator", measurement=AGGREGATOR_MR)

        assert ca.increment("p", "round", old.session_token) == 1  # a's view: fresh
        new = enroll(cb, platform, "p", "aggregator", measurement=AGGREGATOR_MR,
                     replaces=old.session_token)  # fmt: skip
        with pytest.raises(SpmRefused, match=f"^{ENDED}"):
            ca.increment("p", "round", old.session_token)
        with pytest.raises(SpmRefused, match=f"^{ENDED}"):
            ca.report("p", "audit.excluded", {"round": 1, "excluded": []}, old.session_token)
        assert cb.counter("p", "round") == 1
        events = [e["event"] for e in cb.audit(0, 10000)["entries"]]
        after = events[events.index("session.ended") :]
        assert "counter.incremented" not in after and "fl.audit.excluded" not in after
        assert ca.increment("p", "round", new.session_token) == 2  # the new one works
