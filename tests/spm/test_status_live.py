"""`secfl status` counts only the sessions that may still act.

Found by a review: a revoked build's or machine's sessions (a measurement or platform
revocation) were shown as live, as were, once the board readmitted what it revoked,
the sessions the revocation had ended: the board read a revoked machine as still
running. Real processes: `secfl spm serve` and its status route."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from secfl.policy._signatures import sign_statement
from secfl.spm._service import REVOCATION_DOMAIN, revocation_digest, revocation_doc
from secfl.spm.client import SpmClient
from tests.spm.harness import AGGREGATOR_MR, REFRESH_WAIT, Board, spm_with_policy

pytestmark = pytest.mark.timeout(120)


def _signed(board: Board, statement: dict[str, str]) -> list[object]:
    digest = revocation_digest(revocation_doc("fed", statement))
    return [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m) for m in ("alice", "bob")]


def _live(client: SpmClient) -> dict[str, int]:
    time.sleep(1.1)  # an answer is served again for a second while the log has not moved
    return {s["name"]: s["live_sessions"] for s in client.status("fed")["services"]}


def test_a_revoked_builds_sessions_are_not_shown_as_live(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    with (
        spm_with_policy(tmp_path / "data", sim, board, "aggregator") as (proc, _),
        SpmClient(proc.url, pin=proc.pin) as client,
    ):
        assert _live(client) == {"aggregator": 1, "collaborator": 0}
        revoked = {"kind": "measurement", "subject": AGGREGATOR_MR, "reason": "bug"}
        client.revoke("fed", revoked, _signed(board, revoked))
        time.sleep(REFRESH_WAIT)
        assert _live(client) == {"aggregator": 0, "collaborator": 0}
        readmit = {**revoked, "reason": "fixed", "action": "readmit"}
        client.revoke("fed", readmit, _signed(board, readmit))
        assert _live(client) == {"aggregator": 0, "collaborator": 0}
