"""Two SPMs sharing one database: an attacker who did not save an older head's MAC
cannot roll one SPM back over the other's commits by pointing the audit head back at
the entry that one saw last (written or only verified by it).

The head's MAC row is rewritten by every commit, so it names the newest head any SPM
wrote. The attacker deletes SPM B's entries and the counter B created, and sets the
head row back to what SPM A last saw, leaving the MAC row alone. A must refuse: the
head it knows is authentic, but the MAC says it is not the newest. (Found in review:
skipping the MAC read for a head the SPM already knew, to save a query on every write,
let A accept this and move the counter from 5 back to 1.)

An attacker who saved that head's MAC and puts it back too is not refused by A: each
SPM's anchor covers only what it saw (README, threat model: not covered)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from secfl.errors import IntegrityError
from secfl.spm._integrity import Anchor, Integrity
from secfl.spm._state import verify_state
from secfl.spm._store import Store


@pytest.mark.parametrize("last", ["written by A", "written by B, verified by A"])
def test_a_head_set_back_to_what_one_spm_saw_is_refused(tmp_path: Path, last: str) -> None:
    db = tmp_path / "shared.db"
    row_key, audit_key, anchor_key = os.urandom(32), os.urandom(32), os.urandom(32)

    def spm(name: str) -> Store:
        (tmp_path / name).mkdir()
        anchor = Anchor(tmp_path / name / "audit.anchor", anchor_key)
        store = Store(
            f"sqlite:///{db}", audit_key=audit_key, integrity=Integrity(row_key, anchor=anchor)
        )
        store.create_all()
        verify_state(store, audit_key)
        return store

    a, b = spm("a"), spm("b")
    with (a if last == "written by A" else b).transaction() as tx:
        tx.audit.append("spm.started", None, {"who": last})
    a.sync()
    b.sync()
    seen = a.integrity.floors.head if a.integrity is not None else None
    assert seen is not None
    with b.transaction() as tx:
        tx.counters.create("p", "round")
    for _ in range(5):
        with b.transaction() as tx:
            value = tx.counters.increment("p", "round")
            tx.audit.append("counter.incremented", "p", {"counter": "round", "value": value})
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("delete from audit where seq > ?", (seen[0],))
    raw.execute("update audit_head set seq=?, hash=?", seen)
    raw.execute("delete from counters where policy='p' and name='round'")
    raw.close()
    with pytest.raises(IntegrityError, match=r"^integrity: .*MAC"), a.transaction() as tx:
        tx.counters.create("p", "round")
        tx.counters.increment("p", "round")
    with pytest.raises(IntegrityError, match=r"^integrity: .*MAC"):
        a.sync()
    a.close()
    b.close()
