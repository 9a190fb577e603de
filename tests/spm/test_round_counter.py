"""The SPM lets no service but an aggregator move the federation's round counter (found
by a review), for a policy version it stored before new versions were refused this.

The aggregator commits a round by moving the round counter in the increment that logs
it, so the audit log never has a round without its counter. A version giving the
counter to a collaborator too let that workload move it without a round: the
aggregator's next compare-and-increment was refused (409, "another workload moved it")
as if another aggregator ran, until the board signed a reset. Real `secfl spm serve`
processes on loopback, real SQLite; the rule at submission is
tests/policy/test_round_counter.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, COLLABORATOR_MR, Board, SpmProcess, policy_document

ROUND = {
    "round": 1,
    "attempt": 1,
    "participants": 1,
    "dropped": 0,
    "excluded": 0,
    "duration_s": 0.25,
    "objective": {"metric": "loss", "mode": "min", "value": 0.5},
}


def test_a_stored_version_giving_a_collaborator_the_round_counter_lets_it_not_move_it(
    tmp_path: Path, board: Board, sim: tuple[Path, bytes]
) -> None:
    old_code = tmp_path / "old"
    old_code.mkdir()
    (old_code / "sitecustomize.py").write_text(  # the SPM's intake as it was before the rule
        "import secfl.spm._policy_intake as intake\n"
        "intake.check_new_version = lambda policy: None\n"
    )
    doc = yaml.safe_load(policy_document("fl-rounds", board, sim[1]))
    doc["services"][1]["counters"] = ["round"]  # the federation's round counter (harness)
    document = yaml.safe_dump(doc, sort_keys=False)
    data = tmp_path / "spm"
    old = SpmProcess(data, sim[0], None, env={"PYTHONPATH": str(old_code)}).start()
    try:
        with SpmClient(old.url, pin=old.pin) as client:
            first = client.submit_policy(document, board.sign(document, "alice", "bob"))
    finally:
        old.stop()
    new = SpmProcess(data, sim[0], None).start()
    try:
        with SpmClient(new.url, pin=new.pin) as client:
            platform = simulated.SimulatedPlatform(sim[0])
            col = enroll(client, platform, "fl-rounds", "collaborator",
                         measurement=COLLABORATOR_MR)  # fmt: skip
            refusal = (
                "^counter: 'round' is the federation's round counter, which only the aggregator "
                r"moves \(with the round it commits\), not service 'collaborator' \(role "
                r"collaborator\): the board removes it from the service's counters in a new "
                "version$"
            )
            for expect in (None, 0):
                with pytest.raises(SpmRefused, match=refusal) as refused:
                    client.increment("fl-rounds", "round", col.session_token, expect)
                assert refused.value.status == 403
            assert client.counter("fl-rounds", "round") == 0  # nothing moved
            agg = enroll(client, platform, "fl-rounds", "aggregator", measurement=AGGREGATOR_MR)
            assert client.increment("fl-rounds", "round", agg.session_token, 0, ROUND) == 1
            entries = client.audit(0, 10000)["entries"]
            moved = [e["detail"]["service"] for e in entries if e["event"] == "counter.incremented"]
            assert moved == ["aggregator"]
            # and the same document as a new version is refused at submission
            doc.update(version=2, predecessor=first["digest"])
            v2 = yaml.safe_dump(doc, sort_keys=False)
            with pytest.raises(SpmRefused, match=r"^policy: services\[1\]\.counters: ") as exc:
                client.submit_policy(v2, board.sign(v2, "alice", "bob"))
            assert exc.value.status == 400
    finally:
        new.stop()
