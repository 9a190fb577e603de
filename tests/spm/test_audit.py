"""The hash-chained audit log: the chain format, and tampering with the database
(modified, removed, reordered entries, a removed tail, a rehashed chain) on both backends."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, text

from secfl.errors import AuditError, SpmError
from secfl.spm._audit import (
    GENESIS,
    AuditEntry,
    canonical_json,
    entry_hash,
    head_mac,
    make_entry,
    verify_chain,
)
from secfl.spm._engine import normalise_url
from secfl.spm._store import AUDIT_HEAD_MAC, Store
from tests.spm.conftest import AUDIT_KEY

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def chain(n: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    head = (0, GENESIS)
    for i in range(n):
        entry = make_entry(head, "event", "fl", {"i": i}, AT)
        entries.append(entry)
        head = (entry.seq, entry.hash)
    return entries


# --- the format -----------------------------------------------------------------------------


def test_hash_is_the_documented_formula() -> None:
    entry = make_entry((0, GENESIS), "policy.accepted", "fl", {"b": "é", "a": [1, 2]}, AT)
    body = (
        '{"at":"2025-03-01T12:00:00.000000Z","detail":{"a":[1,2],"b":"é"},'
        '"event":"policy.accepted","policy":"fl","seq":1}'
    )
    assert canonical_json(
        {"seq": 1, "at": entry.at, "event": entry.event, "policy": "fl", "detail": entry.detail}
    ) == body.encode("utf-8")
    assert entry.hash == hashlib.sha256(bytes(32) + body.encode("utf-8")).hexdigest()
    assert entry.prev_hash == GENESIS == "0" * 64
    second = make_entry((1, entry.hash), "x", None, {}, AT)
    assert second.seq == 2 and second.prev_hash == entry.hash
    assert second.hash == entry_hash(entry.hash, 2, second.at, "x", None, {})


def test_detail_is_normalised_and_must_be_json() -> None:
    entry = make_entry((0, GENESIS), "e", None, {"t": (1, 2), "n": None}, AT)
    assert entry.detail == {"t": [1, 2], "n": None}
    assert verify_chain([entry]) == 1
    assert make_entry((0, GENESIS), "e", None, {3: "int key"}, AT).detail == {"3": "int key"}
    with pytest.raises(SpmError, match="not JSON-serialisable"):
        make_entry((0, GENESIS), "e", None, {"x": object()}, AT)
    with pytest.raises(SpmError, match="not JSON-serialisable"):
        make_entry((0, GENESIS), "e", None, {"x": float("nan")}, AT)


def test_to_dict_from_dict() -> None:
    entries = chain(3)
    wire = json.loads(json.dumps([e.to_dict() for e in entries]))
    parsed = [AuditEntry.from_dict(d) for d in wire]
    assert parsed == entries
    assert verify_chain(parsed, head=(3, entries[-1].hash)) == 3
    bad = dict(wire[0], extra=1)
    with pytest.raises(AuditError, match="entry 1 is malformed"):
        AuditEntry.from_dict(bad)
    with pytest.raises(AuditError, match="invalid seq"):
        AuditEntry.from_dict(dict(wire[0], seq="1"))
    with pytest.raises(AuditError, match="hash is not 64 hex"):
        AuditEntry.from_dict(dict(wire[0], hash="zz"))
    with pytest.raises(AuditError, match="not a JSON object"):
        AuditEntry.from_dict([1])


def test_verify_chain_in_memory() -> None:
    entries = chain(6)
    assert verify_chain(entries) == 6
    assert verify_chain([]) == 0
    assert verify_chain([], head=(0, GENESIS)) == 0

    modified = list(entries)
    modified[2] = AuditEntry(**{**entries[2].to_dict(), "detail": {"i": 99}})
    with pytest.raises(AuditError, match="^audit: entry 3 was modified"):
        verify_chain(modified)

    with pytest.raises(AuditError, match="^audit: entry 3 is missing \\(found 4\\)"):
        verify_chain(entries[:2] + entries[3:])

    swapped = [entries[0], entries[2], entries[1], *entries[3:]]
    with pytest.raises(AuditError, match="^audit: entries out of order at 2"):
        verify_chain(swapped)
    with pytest.raises(AuditError, match="^audit: entries out of order at 3 \\(found 2\\)"):
        verify_chain([entries[0], entries[1], entries[1]])

    with pytest.raises(
        AuditError, match="^audit: the log ends at 4 but its head is 6 \\(entries removed\\)"
    ):
        verify_chain(entries[:4], head=(6, entries[-1].hash))
    with pytest.raises(AuditError, match="does not match the head"):
        verify_chain(entries, head=(6, "f" * 64))
    with pytest.raises(AuditError, match="past its head"):
        verify_chain(entries, head=(5, entries[4].hash))

    # Rehashed after a change: entry 3 verifies on its own, entry 4 no longer chains.
    forged = list(entries)
    e3 = entries[2]
    forged[2] = AuditEntry(
        3, e3.at, e3.event, e3.policy, {"i": 99}, e3.prev_hash,
        entry_hash(e3.prev_hash, 3, e3.at, e3.event, e3.policy, {"i": 99}),
    )  # fmt: skip
    with pytest.raises(AuditError, match="^audit: entry 4 does not chain to entry 3"):
        verify_chain(forged)

    # Continue from a trusted head.
    assert verify_chain(entries[3:], start_hash=entries[2].hash) == 3
    assert verify_chain(entries[3:], start_hash=entries[2].hash, start_seq=4) == 3
    with pytest.raises(AuditError, match="does not chain to the start hash"):
        verify_chain(entries[3:], start_hash=entries[1].hash)
    with pytest.raises(AuditError, match="entry 1 is missing"):
        verify_chain(entries[1:])


def test_head_mac() -> None:
    mac = head_mac(AUDIT_KEY, 5, "a" * 64)
    assert mac != head_mac(AUDIT_KEY, 4, "a" * 64)
    assert mac != head_mac(bytes(32), 5, "a" * 64)
    assert len(mac) == 64


# --- the database ---------------------------------------------------------------------------


@pytest.fixture
def raw(store_url: str) -> Iterator[Engine]:
    """Direct SQL access to the store's database, behind its back (the attacker's view)."""
    engine = create_engine(normalise_url(store_url))
    yield engine
    engine.dispose()


def fill(store: Store, n: int = 20) -> None:
    for i in range(1, n + 1):
        with store.transaction() as tx:
            tx.audit.append(f"event.{i % 3}", "fl" if i % 2 else None, {"i": i, "text": f"n{i}"})


def test_chain_verifies_and_pages(store: Store) -> None:
    assert store.verify_audit(AUDIT_KEY) == 0
    assert store.audit_head() == (0, GENESIS)
    fill(store, 25)
    assert store.verify_audit(AUDIT_KEY) == 25
    assert store.verify_audit(AUDIT_KEY, page=7) == 25
    seq, digest = store.audit_head()
    assert seq == 25
    all_entries = store.audit_since(0, limit=100)
    assert [e.seq for e in all_entries] == list(range(1, 26))
    assert all_entries[-1].hash == digest
    assert [e.seq for e in store.audit_since(20, limit=3)] == [21, 22, 23]
    assert verify_chain(store.audit_since(10), start_hash=all_entries[9].hash) == 15
    assert verify_chain(all_entries, head=(seq, digest)) == 25
    entry = all_entries[4]
    assert (entry.event, entry.policy, entry.detail) == ("event.2", "fl", {"i": 5, "text": "n5"})
    assert entry.at.endswith("Z")


def test_append_returns_the_stored_entry(store: Store) -> None:
    with store.transaction() as tx:
        entry = tx.audit.append("x", None, {"k": (1,)}, at=AT)
        assert tx.audit.head() == (1, entry.hash)
    assert store.audit_since(0) == [entry]
    assert entry.detail == {"k": [1]}
    assert entry.at == "2025-03-01T12:00:00.000000Z"


def test_modified_detail(store: Store, raw: Engine) -> None:
    fill(store)
    with raw.begin() as conn:
        conn.execute(text("UPDATE audit SET detail = :d WHERE seq = 7"), {"d": '{"i":700}'})
    with pytest.raises(AuditError, match="^audit: entry 7 was modified"):
        store.verify_audit(AUDIT_KEY)


def test_deleted_middle_row(store: Store, raw: Engine) -> None:
    fill(store)
    with raw.begin() as conn:
        conn.execute(text("DELETE FROM audit WHERE seq = 9"))
    with pytest.raises(AuditError, match="^audit: entry 9 is missing \\(found 10\\)"):
        store.verify_audit(AUDIT_KEY)


def test_deleted_tail_row(store: Store, raw: Engine) -> None:
    fill(store)
    with raw.begin() as conn:
        conn.execute(text("DELETE FROM audit WHERE seq = 20"))
    with pytest.raises(AuditError, match="the log ends at 19 but its head is 20"):
        store.verify_audit(AUDIT_KEY)
    # Rewinding the head to the new tail as well: the head MAC gives it away.
    with raw.begin() as conn:
        h19 = conn.execute(text("SELECT hash FROM audit WHERE seq = 19")).scalar_one()
        conn.execute(text("UPDATE audit_head SET seq = 19, hash = :h"), {"h": h19})
    with pytest.raises(AuditError, match="MAC of the head \\(entry 19\\) does not verify"):
        store.verify_audit(AUDIT_KEY)


def test_swapped_rows(store: Store, raw: Engine) -> None:
    fill(store)
    with raw.begin() as conn:
        rows = {r.seq: r for r in conn.execute(text("SELECT seq, event, detail FROM audit"))}
        for a, b in ((4, 5), (5, 4)):
            conn.execute(
                text("UPDATE audit SET event = :e, detail = :d WHERE seq = :s"),
                {"e": rows[b].event, "d": rows[b].detail, "s": a},
            )
    with pytest.raises(AuditError, match="^audit: entry 4 was modified"):
        store.verify_audit(AUDIT_KEY)


def test_swapped_whole_rows_with_hashes(store: Store, raw: Engine) -> None:
    """Moving complete rows (content and hashes) to other seqs breaks the chain."""
    fill(store)
    columns = "at, event, policy, detail, prev_hash, hash"
    with raw.begin() as conn:
        r4, r5 = (
            conn.execute(text(f"SELECT {columns} FROM audit WHERE seq = {s}")).one()  # noqa: S608
            for s in (4, 5)
        )
        for seq, row in ((4, r5), (5, r4)):
            conn.execute(
                text(
                    "UPDATE audit SET at = :at, event = :event, policy = :policy, "
                    "detail = :detail, prev_hash = :prev_hash, hash = :hash WHERE seq = :seq"
                ),
                {**row._asdict(), "seq": seq},
            )
    with pytest.raises(AuditError, match="^audit: entry 4 was modified"):
        store.verify_audit(AUDIT_KEY)


def test_rehashed_chain_without_the_key(store: Store, raw: Engine) -> None:
    """Rewrite one entry and recompute every hash after it, and the head row: the chain
    is self-consistent again, but the attacker cannot recompute the head MAC."""
    fill(store)
    entries = store.audit_since(0)
    forged: list[AuditEntry] = []
    prev = GENESIS
    for e in entries:
        detail = {"i": 0, "text": "forged"} if e.seq == 3 else e.detail
        digest = entry_hash(prev, e.seq, e.at, e.event, e.policy, detail)
        forged.append(AuditEntry(e.seq, e.at, e.event, e.policy, detail, prev, digest))
        prev = digest
    assert verify_chain(forged) == 20
    with raw.begin() as conn:
        for e in forged:
            conn.execute(
                text("UPDATE audit SET detail = :d, prev_hash = :p, hash = :h WHERE seq = :s"),
                {
                    "d": canonical_json(e.detail).decode(),
                    "p": e.prev_hash,
                    "h": e.hash,
                    "s": e.seq,
                },
            )
    # Head row left alone: the last entry no longer matches it.
    with pytest.raises(AuditError, match="^audit: entry 20 does not match the head"):
        store.verify_audit(AUDIT_KEY)
    # Head row rewritten too: its MAC no longer verifies.
    with raw.begin() as conn:
        conn.execute(text("UPDATE audit_head SET hash = :h"), {"h": forged[-1].hash})
    with pytest.raises(AuditError, match="MAC of the head \\(entry 20\\) does not verify"):
        store.verify_audit(AUDIT_KEY)
    # And a forged MAC under some other key does not help.
    with raw.begin() as conn:
        conn.execute(
            text("UPDATE meta SET value = :v WHERE key = :k"),
            {"v": head_mac(bytes(32), 20, forged[-1].hash).encode(), "k": AUDIT_HEAD_MAC},
        )
    with pytest.raises(AuditError, match="does not verify"):
        store.verify_audit(AUDIT_KEY)


def test_removed_mac_and_wrong_key(store: Store, raw: Engine) -> None:
    fill(store, 3)
    with pytest.raises(AuditError, match="does not verify"):
        store.verify_audit(bytes(32))
    with raw.begin() as conn:
        conn.execute(text("DELETE FROM meta WHERE key = :k"), {"k": AUDIT_HEAD_MAC})
    with pytest.raises(AuditError, match="carries no MAC"):
        store.verify_audit(AUDIT_KEY)


def test_detail_that_is_not_json(store: Store, raw: Engine) -> None:
    fill(store, 3)
    with raw.begin() as conn:
        conn.execute(text("UPDATE audit SET detail = 'not json' WHERE seq = 2"))
    with pytest.raises(AuditError, match="^audit: entry 2 was modified"):
        store.verify_audit(AUDIT_KEY)


def test_keyless_store(store_url: str) -> None:
    """Without an audit key the head is not authenticated, and a keyless writer cannot
    extend a log that is (its MAC would go stale)."""
    with Store(store_url) as plain:
        plain.create_all()
        with plain.transaction() as tx:
            tx.audit.append("x", None, {})
        with pytest.raises(AuditError, match="carries no MAC"):
            plain.verify_audit(AUDIT_KEY)
    with Store(store_url, audit_key=AUDIT_KEY) as keyed:
        with keyed.transaction() as tx:
            tx.audit.append("y", None, {})
        assert keyed.verify_audit(AUDIT_KEY) == 2
    with Store(store_url) as plain:
        expected = "open the store with its audit key"
        with pytest.raises(SpmError, match=expected), plain.transaction() as tx:
            tx.audit.append("z", None, {})
        assert plain.audit_head()[0] == 2


def test_rolled_back_entries_leave_no_trace(store: Store) -> None:
    fill(store, 2)
    head = store.audit_head()
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.audit.append("lost", None, {})
        raise RuntimeError
    assert store.audit_head() == head
    with store.transaction() as tx:
        entry = tx.audit.append("kept", None, {})
    assert entry.seq == 3 and entry.prev_hash == head[1]
    assert store.verify_audit(AUDIT_KEY) == 3


def test_verify_an_empty_continuation() -> None:
    entries = chain(3)
    head = (3, entries[-1].hash)
    assert verify_chain([], start_hash=entries[-1].hash, head=head) == 0
    assert verify_chain([], start_hash=entries[-1].hash, start_seq=4, head=head) == 0
    with pytest.raises(AuditError, match="entries removed"):
        verify_chain([], start_hash=entries[1].hash, head=head)
    with pytest.raises(AuditError, match="the log ends at 2 but its head is 3"):
        verify_chain([], start_hash=entries[1].hash, start_seq=3, head=head)
