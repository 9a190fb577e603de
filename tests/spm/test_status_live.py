"""`secfl status` counts only the sessions that may still act.

Found by a review: a revoked build's or machine's sessions (a measurement or platform
revocation) were shown as live, as were, once the board readmitted what it revoked,
the sessions the revocation had ended: the board read a revoked machine as still
running. Real processes: `secfl spm serve` and its status route."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from secfl.policy._signatures import sign_statement
from secfl.spm._service import REVOCATION_DOMAIN, revocation_digest, revocation_doc
from secfl.spm.client import SpmClient
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, REFRESH_WAIT, Board, spm_with_policy, sql

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
        lifts = revocation_digest(revocation_doc("fed", revoked))
        readmit = {**revoked, "reason": "fixed", "action": "readmit", "lifts": lifts}
        client.revoke("fed", readmit, _signed(board, readmit))
        assert _live(client) == {"aggregator": 0, "collaborator": 0}


def test_a_replaced_session_the_host_puts_back_is_not_shown_as_live(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a review: a workload that attests again ends the session it replaces (its
    row is deleted, its token refused for good); the host put the row back (its MAC is
    valid) and the status counted the replaced session as live beside the new one."""
    data = tmp_path / "data"
    with (
        spm_with_policy(data, sim, board, "aggregator") as (proc, enrolled),
        SpmClient(proc.url, pin=proc.pin) as client,
    ):
        db = sqlite3.connect(data / "spm.db")
        old_row = db.execute("SELECT * FROM sessions").fetchall()
        db.close()
        assert len(old_row) == 1
        platform = simulated.SimulatedPlatform(sim[0])
        enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR,
               replaces=enrolled["aggregator"].session_token)  # fmt: skip
        assert _live(client) == {"aggregator": 1, "collaborator": 0}
        assert len(old_row[0]) == 8  # (its columns, its MAC)
        sql(data, "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", *old_row[0])  # the host
        assert _live(client) == {"aggregator": 1, "collaborator": 0}
