"""The Intel collateral floors held in the SPM's audit log (secfl.spm._collateral_floors),
against a hostile review of the first version: real stores on SQLite, the real Intel
vectors and their collateral, served by a real PCCS on loopback.

- A floor lived only once its entry committed: a host that made that commit fail (a
  trigger on the audit table, a dropped connection) won back the older copy.
- SPMs sharing a database read their floors before catching up, so SPM B took a CRL
  older than one SPM A had verified, and then logged an entry below A's floor.
- A fetch that ended after its caller stopped waiting counted as good even when its
  copy was a rollback: the platform was not asked again for an hour.
- Attestations verifying the same new copy at once each wrote an entry.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from secfl.errors import FetchError, Refused
from secfl.spm._collateral import CollateralSource, _platform
from secfl.spm._collateral_floors import AuditedFloors
from secfl.spm._evidence_checks import check_evidence
from secfl.spm._groupcommit import GroupCommit
from secfl.spm._integrity import Anchor, Integrity
from secfl.spm._state import verify_state
from secfl.spm._store import Store
from secfl.tee._intel import IntelCollateral
from tests.conftest import utc
from tests.localhttp import LocalServer
from tests.spm.harness import Board
from tests.spm.test_collateral import SGX, TDX, TDX_OUTDATED, policy, serve
from tests.spm.test_collateral import board as board
from tests.spm.test_collateral import pccs as pccs
from tests.tee.test_pccs import vector

pytestmark = pytest.mark.timeout(120)

KEYS = {name: os.urandom(32) for name in ("row", "audit", "anchor")}
QE = "/tdx/certification/v4/qe/identity"
CRL = "/sgx/certification/v4/pckcrl?ca=platform&encoding=der"


@contextmanager
def spm_floors(
    folder: Path, db: Path, url: str, **kw: Any
) -> Iterator[tuple[Store, CollateralSource]]:
    """What an SPM wires: its store (``db``, maybe shared; its own anchor), its group
    commit, and a collateral source whose floors are its audit log's."""
    folder.mkdir(exist_ok=True)
    anchor = Anchor(folder / "audit.anchor", KEYS["anchor"])
    store = Store(f"sqlite:///{db}", audit_key=KEYS["audit"],
                  integrity=Integrity(KEYS["row"], anchor=anchor))  # fmt: skip
    store.create_all()
    verify_state(store, KEYS["audit"])
    group = GroupCommit(store)
    coll = CollateralSource(url, folder / "cache", **kw)
    coll.floors = AuditedFloors(store, group)
    try:
        yield store, coll
    finally:
        coll.close()
        group.close()
        store.close()


def logged(store: Store) -> list[dict[str, Any]]:
    with store.read() as tx:
        return [e.detail for e in tx.audit.since(0) if e.event == "collateral.verified"]


def test_a_floor_whose_entry_failed_to_commit_still_holds(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    db = tmp_path / "spm.db"
    with spm_floors(tmp_path / "a", db, pccs.url) as (store, coll):
        host = sqlite3.connect(db, isolation_level=None)
        host.execute(
            "CREATE TRIGGER no_floor BEFORE INSERT ON audit WHEN NEW.event = "
            "'collateral.verified' BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
        newer = serve(pccs, vectors, TDX_OUTDATED)
        with pytest.raises(Refused, match="^evidence: .*disk I/O error"):
            check_evidence(policy(board, TDX_OUTDATED), newer, utc(TDX_OUTDATED[4]), coll)
        host.execute("DROP TRIGGER no_floor")  # the failure was the host's, for a moment
        host.close()
        older = serve(pccs, vectors, TDX)
        with pytest.raises(Refused, match="older TCB evaluation than the one this SPM verified"):
            check_evidence(policy(board, TDX), older, utc(TDX[4]), coll)
        assert logged(store) == []
        # The next verification of the newer copy writes the entry the host stopped.
        serve(pccs, vectors, TDX_OUTDATED)
        with pytest.raises(Refused, match="^evidence: tcb: "):
            check_evidence(policy(board, TDX_OUTDATED), newer, utc(TDX_OUTDATED[4]), coll)
        assert [d["fmspc"] for d in logged(store)] == ["90C06F000000"]


def test_spms_sharing_a_database_share_their_floors(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    db = tmp_path / "shared.db"
    with (
        spm_floors(tmp_path / "a", db, pccs.url) as (_, a),
        spm_floors(tmp_path / "b", db, pccs.url) as (store_b, b),
    ):
        newer = serve(pccs, vectors, TDX_OUTDATED)
        with pytest.raises(Refused, match="^evidence: tcb: "):
            check_evidence(policy(board, TDX_OUTDATED), newer, utc(TDX_OUTDATED[4]), a)
        older = serve(pccs, vectors, TDX)  # QE identity 17 < 18, the CA's CRL of 2025 < 2026
        with pytest.raises(Refused, match="older TCB evaluation than the one this SPM verified"):
            check_evidence(policy(board, TDX), older, utc(TDX[4]), b)
        assert [d["fmspc"] for d in logged(store_b)] == ["90C06F000000"]  # nothing below it


def test_a_rolled_back_fetch_nobody_waited_for_is_asked_again(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    # (a fetch of four GETs takes ~0.1 s; 4 s leaves a loaded CI machine room: 1 s failed)
    with CollateralSource(pccs.url, tmp_path / "c", timeout=4.0, retry_after=0.1) as coll:
        newer = serve(pccs, vectors, TDX_OUTDATED)
        with pytest.raises(Refused, match="^evidence: tcb: "):
            check_evidence(policy(board, TDX_OUTDATED), newer, utc(TDX_OUTDATED[4]), coll)
        current = {QE: pccs.routes[QE], CRL: pccs.routes[CRL]}
        sgx = serve(pccs, vectors, SGX)
        older = serve(pccs, vectors, TDX)  # a lagging replica
        pccs.delay = 0.8  # four GETs: 3.2 s, within the 4 s deadline
        first = threading.Thread(target=lambda: coll.get(sgx))
        first.start()
        time.sleep(0.05)
        with pytest.raises(FetchError, match="gave no collateral in 4 s"):
            coll.get(older)  # its fetch queues behind the SGX one; this caller gives up
        first.join()
        deadline = time.monotonic() + 10
        while coll._inflight and time.monotonic() < deadline:
            time.sleep(0.05)  # the TDX fetch ends with the rolled-back copy, unread
        pccs.delay = 0.0
        pccs.routes.update(current)  # the replica caught up
        time.sleep(0.3)  # past retry_after
        asked = len(pccs.requests)
        coll.get(older)
        assert len(pccs.requests) > asked


def test_concurrent_verifications_of_one_copy_write_one_entry(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    with spm_floors(tmp_path / "a", tmp_path / "spm.db", pccs.url) as (store, coll):
        quote = serve(pccs, vectors, TDX)
        coll.get(quote)  # fetched, not yet verified
        checked = policy(board, TDX)
        barrier = threading.Barrier(16)
        errors: list[BaseException] = []

        def attest() -> None:
            barrier.wait()
            try:
                check_evidence(checked, quote, utc(TDX[4]), coll)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=attest) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [d["fmspc"] for d in logged(store)] == ["B0C06F000000"]


def _evaluation(doc: dict[str, Any], number: int) -> IntelCollateral:
    copy = IntelCollateral.model_validate(doc)
    tcb = json.loads(copy.tcb_info)
    tcb["tcbEvaluationDataNumber"] = number
    return copy.model_copy(update={"tcb_info": json.dumps(tcb)})


def test_a_copy_verified_meanwhile_never_replaces_a_newer_one(
    vectors: Path, tmp_path: Path
) -> None:
    """The review's review: the floors rose outside the source's lock, so an older copy
    verified in between replaced the newer one kept a moment before, which its own
    floor then refused: no collateral for the platform until the next fetch."""
    quote, doc = vector(vectors, TDX[0])
    older, newer = _evaluation(doc, 17), _evaluation(doc, 18)
    coll = CollateralSource("https://127.0.0.1:9", tmp_path / "cache")
    persist = coll.floors.persist
    newer_held, older_done = threading.Event(), threading.Event()

    def slow_persist(record: dict[str, Any]) -> None:  # the newer copy's commit is slow
        if record["tcb_evaluation"] == 18:
            newer_held.set()
            older_done.wait(10)
        persist(record)

    coll.floors.persist = slow_persist  # type: ignore[method-assign]
    first = threading.Thread(target=coll.verified, args=(quote, newer))
    first.start()
    assert newer_held.wait(10)
    coll.verified(quote, older)
    older_done.set()
    first.join(10)
    with coll._lock:
        kept = coll._kept(_platform(quote), quote, None)
    assert json.loads(kept.tcb_info)["tcbEvaluationDataNumber"] == 18
    coll.close()
