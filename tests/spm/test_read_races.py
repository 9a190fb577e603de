"""A read that began before a commit sees the state before it: that is a consistent
snapshot, not a rollback. The SPM's floors (what it has seen, which nothing may go
back behind) are raised by every commit; a read whose snapshot predates the commit
that raised a floor must not be refused as if the database had been rolled back,
while a value behind a floor that was raised before the read began still is."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from secfl.errors import IntegrityError
from secfl.spm._integrity import RAISES_KEPT, Floors
from secfl.spm._server import open_spm
from tests.spm.harness import Board, policy_document


@pytest.fixture
def spm(tmp_path: Path, sim: tuple[Path, bytes], board: Board) -> Iterator[Any]:
    spm = open_spm(tmp_path / "data", platform="simulated", sim_dir=sim[0])
    document = policy_document("fed", board, sim[1])
    spm.submit_policy(document, [s.model_dump() for s in board.sign(document, "alice", "bob")])
    yield spm
    spm.close()


def db_file(spm: Any) -> str:
    """The SPM's SQLite file (the host's to change at will)."""
    url = str(spm.store.url)
    return url[url.index(":///") + 3 :]


def bump(spm: Any) -> int:
    with spm.store.transaction() as tx:
        value = int(tx.counters.increment("fed", "round"))
        tx.audit.append("counter.incremented", "fed", {"counter": "round", "value": value})
    return value


def test_a_read_that_began_before_a_commit_is_not_refused(spm: Any) -> None:
    assert bump(spm) == 1
    with spm.store.read() as tx:
        head = tx.audit.head()  # the snapshot begins here
        writer = threading.Thread(target=bump, args=(spm,))
        writer.start()
        writer.join(timeout=30)
        assert spm.store.integrity.floors.counters[("fed", "round")] == 2
        spm.store.check_head(tx, head)  # the head it read is behind the floor: stale
        assert tx.counters.get("fed", "round") == 1
        assert tx.counters.of_policy("fed") == {"round": 1}
    with spm.store.read() as tx:
        assert tx.counters.get("fed", "round") == 2
        spm.store.check_head(tx, tx.audit.head())


def test_a_value_behind_a_floor_raised_before_the_read_is_a_rollback() -> None:
    floors = Floors()
    floors.apply(("counter", "fed", "round", 5))
    since = floors.begin_read()
    with pytest.raises(IntegrityError, match="^rollback: counter 'round' of 'fed' is 4"):
        floors.check_counter("fed", "round", 4, since=since)
    floors.apply(("counter", "fed", "round", 6))  # a commit after the read began
    floors.check_counter("fed", "round", 5, since=since, learn=False)
    with pytest.raises(IntegrityError, match="^rollback: "):
        floors.check_counter("fed", "round", 5, since=floors.epoch)
    with pytest.raises(IntegrityError, match="^rollback: "):
        floors.check_counter("fed", "round", 5)  # a write transaction: no since
    floors.raise_head(10, "a" * 64)
    since = floors.begin_read()
    with pytest.raises(IntegrityError, match="^rollback: the database's audit log ends at"):
        floors.check_head(9, "b" * 64, since=since)
    floors.raise_head(11, "c" * 64)
    floors.check_head(10, "a" * 64, since=since)


def test_a_stale_read_may_see_only_the_floor_that_stood_when_it_began() -> None:
    """Found by a hostile review: a read that began before a floor was raised accepted
    any value behind that floor, so a host that held a read while one increment went
    through (it runs the database and schedules the TEE's threads) could answer it with
    any authentic old row: a counter at 3 where the read began at 10."""
    floors = Floors()
    for value in range(1, 11):
        floors.apply(("counter", "fed", "round", value))
    since = floors.begin_read()  # the read begins: the floor is 10
    floors.apply(("counter", "fed", "round", 11))  # a commit it predates
    floors.check_counter("fed", "round", 10, since=since, learn=False)  # stale: fine
    with pytest.raises(IntegrityError, match="^rollback: counter 'round' of 'fed' is 3 "):
        floors.check_counter("fed", "round", 3, since=since, learn=False)
    floors.raise_head(10, "a" * 64)
    since = floors.begin_read()
    floors.raise_head(11, "b" * 64)
    floors.check_head(10, "a" * 64, since=since)
    with pytest.raises(
        IntegrityError, match="^rollback: the database's audit log ends at entry 4,"
    ):
        floors.check_head(4, "c" * 64, since=since)
    # a read that spans more raises than are remembered is refused
    since = floors.begin_read()
    for value in range(12, 13 + RAISES_KEPT):
        floors.apply(("counter", "fed", "round", value))
    with pytest.raises(IntegrityError, match="^rollback: "):
        floors.check_counter("fed", "round", 11, since=since, learn=False)


def test_a_rolled_back_row_served_to_a_held_read_is_refused(spm: Any) -> None:
    """The same on the real store: the read began at 10, one increment went through,
    and the host put back the row of value 3 (authentic: its MAC is the SPM's)."""
    import sqlite3

    def row() -> tuple[Any, ...]:
        with contextlib.closing(sqlite3.connect(db_file(spm))) as db:
            return db.execute("SELECT value, mac FROM counters WHERE name='round'").fetchone()

    def put(value: Any, mac: Any) -> None:
        with contextlib.closing(sqlite3.connect(db_file(spm))) as db, db:
            db.execute("UPDATE counters SET value=?, mac=? WHERE name='round'", (value, mac))

    old = None
    for _ in range(10):
        if bump(spm) == 3:
            old = row()
    assert old is not None
    with spm.store.read() as tx:
        writer = threading.Thread(target=bump, args=(spm,))
        writer.start()
        writer.join(timeout=30)
        put(*old)
        with pytest.raises(IntegrityError, match="^rollback: counter 'round' of 'fed' is 3"):
            tx.counters.get("fed", "round")


def test_no_release_under_a_version_superseded_while_the_attestation_was_checked(
    spm: Any, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a hostile review: the policy version an attestation is checked against
    is read before its write; a host that hid the board's new version from that one
    read (v2, which drops this measurement) had v1's secrets released to the workload
    v2 removed. The write now compares the version with the floor every commit raised."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, x25519

    from secfl.errors import Refused
    from secfl.spm._report_data import spki_sha256, workload_report_data
    from secfl.spm.enroll import make_csr
    from secfl.tee._simulated import SimulatedPlatform
    from tests.spm.harness import AGGREGATOR_MR

    v1 = spm.policy("fed")
    doc = yaml.safe_load(policy_document("fed", board, sim[1], version=2,
                                         predecessor=v1[0].digest))  # fmt: skip
    doc["services"][0]["measurements"]["simulated"] = ["b2" * 48]  # the old code removed
    v2 = yaml.safe_dump(doc, sort_keys=False)
    spm.submit_policy(v2, [s.model_dump() for s in board.sign(v2, "alice", "bob")])
    spm.policies.get = lambda name, version=None: v1  # what the hidden row made it read

    hpke = (
        x25519.X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    nonce, _ = spm.new_nonce()
    report = workload_report_data(nonce, hpke, spki_sha256(key.public_key()))
    evidence = SimulatedPlatform(sim[0]).get_evidence(report, measurement=AGGREGATOR_MR)
    with pytest.raises(Refused, match=r"^policy: version 2 of 'fed' replaced version 1 while"):
        spm.attest("fed", "aggregator", nonce=nonce, evidence=evidence.to_json().encode(),
                   hpke_public_key=hpke, csr_pem=make_csr(key, "aggregator"))  # fmt: skip
    with spm.store.read() as tx:
        assert not [e for e in tx.audit.since(0, 1000) if e.event == "secrets.released"]


def test_a_long_read_under_load_is_not_called_a_rollback(spm: Any) -> None:
    """Found by review of the first version (it remembered 256 raises a key): a status
    read that walked a long audit log while an aggregator went on incrementing was told
    the database had been rolled back. Raises are now kept for as long as a read that
    may need them is open, and dropped when none is."""
    floors = spm.store.integrity.floors
    with spm.store.read() as tx:
        first = tx.counters.get("fed", "round")
        for _ in range(600):
            bump(spm)
        assert tx.counters.get("fed", "round") == first  # its snapshot: stale, not refused
    assert floors.readers == {}
    bump(spm)  # the next raise drops what no open read needs
    assert len(floors.raises[("counter", ("fed", "round"))]) == 0


def test_no_revocation_decided_by_the_board_of_a_replaced_version(
    spm: Any, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by review of the fix above: the same race on the board's statements. Bob,
    whom v2 removed from the board, and Carol readmitted a revoked measurement while the
    host hid v2 from the one read that checked their signatures."""
    from secfl.errors import Refused
    from secfl.policy._signatures import sign_statement
    from secfl.spm._service import REVOCATION_DOMAIN, revocation_digest, revocation_doc

    def signed(statement: dict[str, str], *who: str) -> list[dict[str, Any]]:
        digest = revocation_digest(revocation_doc("fed", statement))
        return [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m).model_dump()
                for m in who]  # fmt: skip

    bad = "ab" * 48
    revoke = {"kind": "measurement", "subject": bad, "reason": "leaky build"}
    spm.revoke("fed", revoke, signed(revoke, "alice", "bob"))
    v1 = spm.policy("fed")
    doc = yaml.safe_load(policy_document("fed", board, sim[1], version=2,
                                         predecessor=v1[0].digest))  # fmt: skip
    doc["board"]["members"] = [m for m in doc["board"]["members"] if m["name"] != "bob"]
    v2 = yaml.safe_dump(doc, sort_keys=False)
    spm.submit_policy(v2, [s.model_dump() for s in board.sign(v2, "alice", "bob", "carol")])
    readmit = {
        "kind": "measurement",
        "subject": bad,
        "reason": "fine",
        "action": "readmit",
        "lifts": revocation_digest(revocation_doc("fed", revoke)),
    }
    with pytest.raises(Refused, match="^approval: "):  # v2's board has no Bob
        spm.revoke("fed", readmit, signed(readmit, "carol", "bob"))
    spm.policies.get = lambda name, version=None: v1  # what the hidden row made it read
    with pytest.raises(Refused, match=r"^revocation: version 2 of 'fed' replaced version 1"):
        spm.revoke("fed", readmit, signed(readmit, "carol", "bob"))
    with spm.store.read() as tx:
        assert ("measurement", bad) in tx.revocations.in_force("fed")
