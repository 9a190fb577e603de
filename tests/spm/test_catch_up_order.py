"""A hostile database cannot move the SPM's floors with entries that do not verify:
catching up with the log (as any request that reads it does) verifies the chain up
to its MAC'd head before one floor changes. Here the database keeps what it saw of a
commit that failed (a genuine entry naming a compare-and-increment, the counter row
and the head's MAC), adds a forged entry, and later goes back: before the fix the
genuine entry reached the floors before the forged one was found, and the request,
sent again, was answered as if it had committed (no log entry, its round lost)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from secfl.errors import IntegrityError, Refused
from secfl.spm._server import open_spm
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, Board, make_sim, policy_document
from tests.spm.test_service import LocalClient, submit


class Failed(Exception):
    pass


def test_floors_move_only_after_the_chain_verified(tmp_path: Path) -> None:
    root = make_sim(tmp_path / "sim")
    spm = open_spm(tmp_path / "data", platform="simulated", sim_dir=tmp_path / "sim")
    try:
        board = Board.create()
        submit(spm, board, policy_document("p", board, root))
        platform = simulated.SimulatedPlatform(tmp_path / "sim")
        token = enroll(
            LocalClient(spm), platform, "p", "aggregator", measurement=AGGREGATOR_MR
        ).session_token
        assert spm.group.run(spm._increment_op(token, "p", "round", 0, None, "00" * 16)) == 1
        db = sqlite3.connect(tmp_path / "data" / "spm.db", isolation_level=None)
        head0 = db.execute("select seq, hash from audit_head").fetchone()
        mac0 = db.execute("select value from meta where key='audit_head_mac'").fetchone()[0]
        named = "ab" * 16
        # 1. an increment whose commit fails; the database keeps what it was sent
        with pytest.raises(Failed), spm.store.transaction() as tx:
            spm._increment_op(token, "p", "round", 1, None, named)(tx)
            tx.audit.flush_head()
            c = tx.connection()
            head = tuple(c.exec_driver_sql("select seq, hash from audit_head").first())
            mac = c.exec_driver_sql("select value from meta where key='audit_head_mac'").first()
            rows = [tuple(r) for r in c.exec_driver_sql(
                "select seq, at, event, policy, detail, prev_hash, hash from audit where seq > ?",
                (head0[0],),
            ).all()]  # fmt: skip
            counter = tuple(c.exec_driver_sql(
                "select value, mac from counters where policy='p' and name='round'"
            ).first())  # fmt: skip
            raise Failed
        # 2. it shows them with a forged entry after them; the SPM reads the log
        db.execute("update audit_head set seq=?, hash=?", head)
        db.execute("update meta set value=? where key='audit_head_mac'", (mac[0],))
        insert = (
            "insert into audit (seq, at, event, policy, detail, prev_hash, hash) "
            "values (?,?,?,?,?,?,?)"
        )
        for row in rows:
            db.execute(insert, row)
        db.execute(insert, (rows[-1][0] + 1, rows[-1][1], "x", None, "{}", "0" * 64, "0" * 64))
        db.execute("update counters set value=?, mac=? where policy='p' and name='round'", counter)
        with pytest.raises(IntegrityError):
            spm.store.sync()  # what GET /v1/audit does first
        floors = spm.store.integrity.floors  # type: ignore[union-attr]
        assert floors.counters[("p", "round")] == 1
        assert floors.requests[("p", "round")][:2] == (1, "00" * 16)
        # 3. it goes back to the committed head, the counter row left at 2
        db.execute("delete from audit where seq > ?", (head0[0],))
        db.execute("update audit_head set seq=?, hash=?", head0)
        db.execute("update meta set value=? where key='audit_head_mac'", (mac0,))
        # 4. the request sent again is not taken for one that committed
        with pytest.raises((Refused, IntegrityError)):
            spm.group.run(spm._increment_op(token, "p", "round", 1, None, named))
    finally:
        spm.close()
