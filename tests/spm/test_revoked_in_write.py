"""A revocation that commits while a session's call waits for its write stops the write.

Found by a review: a session was checked against the board's revocations when its
call was admitted, from a view each SPM re-reads once a second, and not again in the
transaction that writes. Two SPMs share a database (replicas): one takes the board's
revocation of the aggregator; the other, whose view is still fresh, let the revoked
aggregator move the federation's counter and post findings after the revocation, in
the log and in the counter; the review of the fix found attestation (secrets and a
certificate released) the same. Now each such write checks the revocations that name
the workload in its own transaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from secfl.policy._signatures import sign_statement
from secfl.spm._service import REVOCATION_DOMAIN, revocation_digest, revocation_doc
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, Board, policy_document, shared_replicas

pytestmark = pytest.mark.timeout(120)


def test_a_replicas_revocation_stops_a_write_admitted_before_it(
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
        agg = enroll(ca, platform, "p", "aggregator", measurement=AGGREGATOR_MR)
        statement = {"kind": "service", "subject": "aggregator", "reason": "poisoning"}
        digest = revocation_digest(revocation_doc("p", statement))
        sigs = [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m)
                for m in ("alice", "bob")]  # fmt: skip

        assert ca.increment("p", "round", agg.session_token) == 1  # a's view: fresh
        cb.revoke("p", statement, sigs)
        # the release of secrets and a certificate (the review of the fix)
        with pytest.raises(SpmRefused, match="^revoked: service 'aggregator' is revoked"):
            enroll(ca, platform, "p", "aggregator", measurement=AGGREGATOR_MR)
        with pytest.raises(SpmRefused, match="^revoked: service 'aggregator' is revoked"):
            ca.increment("p", "round", agg.session_token)
        with pytest.raises(SpmRefused, match="^revoked: service 'aggregator' is revoked"):
            ca.report("p", "audit.excluded", {"round": 1, "excluded": []}, agg.session_token)
        assert cb.counter("p", "round") == 1
        events = [e["event"] for e in cb.audit(0, 10000)["entries"]]
        after = events[events.index("revocation.added") :]
        assert "counter.incremented" not in after and "fl.audit.excluded" not in after
        assert "secrets.released" not in after and "certificate.issued" not in after
