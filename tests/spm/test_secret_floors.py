"""What holds a secret's row to the one the SPM stored last when the log cannot (found by
a review of the ``secret.stored`` floors): rows an older release stored, with no entry
in the log, and a row put back from before the board last redefined the secret.

In process, on the SPM's own store and vault: an older release is a store writing rows
with valid MACs and no ``secret.stored`` entries (schema version 2); the real-process
attacks are in tests/spm/test_hostile.py."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import insert, update

from secfl.errors import IntegrityError, SpmError
from secfl.policy import load_policy
from secfl.spm._integrity import Anchor, Integrity
from secfl.spm._masterkey import MasterKey
from secfl.spm._records import to_us
from secfl.spm._schema import secrets_table
from secfl.spm._state import log_unlogged_secrets, verify_state
from secfl.spm._store import Store
from secfl.spm._vault import SecretVault
from tests.spm.harness import Board, policy_document

KEYS = {"rows": os.urandom(32), "audit": os.urandom(32), "anchor": os.urandom(32)}


def _store(tmp_path: Path, *, integrity: bool = True) -> Store:
    anchor = Anchor(tmp_path / "audit.anchor", KEYS["anchor"])
    store = Store(
        f"sqlite:///{tmp_path / 'spm.db'}",
        audit_key=KEYS["audit"],
        integrity=Integrity(KEYS["rows"], anchor=anchor) if integrity else None,
    )
    store.create_all()
    if integrity:
        verify_state(store, KEYS["audit"])
    return store


def _older_release_puts(store: Store, name: str, blob: bytes) -> None:
    """What an SPM of schema version 2 did: the row, MAC'd, and nothing in the log."""
    with store.transaction() as tx:
        at = to_us(datetime.now(UTC), "created_at")
        row = {"policy": "p", "name": name, "kind": "random", "definition_digest": "d" * 64,
               "ciphertext": blob, "created_at": at}  # fmt: skip
        values = tx.secrets._signed(secrets_table, row)
        conn = tx.write_connection()
        done = conn.execute(
            update(secrets_table).where(secrets_table.c.name == name).values(**values)
        )
        if done.rowcount == 0:
            conn.execute(insert(secrets_table).values(**values))


def _raw(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "spm.db", isolation_level=None)


def test_rows_an_older_release_stored_are_logged_at_start_and_held_to_that(
    tmp_path: Path,
) -> None:
    old = _store(tmp_path)
    _older_release_puts(old, "seed", b"leaked")
    saved = _raw(tmp_path).execute("SELECT ciphertext, created_at, mac FROM secrets").fetchone()
    _older_release_puts(old, "seed", b"rotated")
    old.close()
    _raw(tmp_path).execute("UPDATE meta SET value = x'32' WHERE key = 'schema_version'")

    new = _store(tmp_path)  # the upgraded SPM's start
    assert log_unlogged_secrets(new) == 1
    assert log_unlogged_secrets(new) == 0  # once
    version = _raw(tmp_path).execute("SELECT value FROM meta WHERE key = 'schema_version'")
    assert version.fetchone()[0] == b"3"  # a release of version 2 refuses it from now on
    with new.read() as tx:
        entries = [e for e in tx.audit.since(0, 100) if e.event == "secret.stored"]
    assert [(e.detail["secret"], e.detail["reason"]) for e in entries] == [
        ("seed", "logged at start")
    ]
    _raw(tmp_path).execute("UPDATE secrets SET ciphertext = ?, created_at = ?, mac = ?", saved)
    refused = pytest.raises(IntegrityError, match="^rollback: the stored value of secret 'seed'")
    with refused, new.transaction() as tx:
        tx.secrets.get("p", "seed")
    new.close()
    with pytest.raises(IntegrityError, match="^rollback: the stored value of secret 'seed'"):
        _store(tmp_path)


def test_a_schema_older_than_2_is_still_refused(tmp_path: Path) -> None:
    _store(tmp_path).close()
    _raw(tmp_path).execute("UPDATE meta SET value = x'31' WHERE key = 'schema_version'")
    with pytest.raises(SpmError, match="^store: the database has schema version 1, this SPM"):
        _store(tmp_path)


def test_a_row_from_before_the_last_redefinition_is_refused_without_a_floor(
    tmp_path: Path, board: Board, sim: tuple[Path, bytes]
) -> None:
    """Rows with no floor (stored before the log recorded secrets): the seed 16 bytes,
    then 32, then 16 again. The host put the first row back before the third version:
    its definition is the current one, but not the previous version's."""
    store = _store(tmp_path, integrity=False)  # no floors at all
    vault = SecretVault(MasterKey.generate(), ec.generate_private_key(ec.SECP256R1()))
    now = datetime.now(UTC)

    def version(n: int, size: int, before: object = None) -> object:
        after = "0" * 64 if n > 1 else ""
        doc = yaml.safe_load(policy_document("p", board, sim[1], version=n, predecessor=after))
        next(s for s in doc["secrets"] if s["name"] == "seed")["size"] = size
        policy = load_policy(yaml.safe_dump(doc))
        with store.transaction() as tx:
            vault.provision(tx, policy, now, before)  # type: ignore[arg-type]
        return policy

    v1 = version(1, 16)
    saved = _raw(tmp_path).execute("SELECT * FROM secrets WHERE name = 'seed'").fetchone()
    v2 = version(2, 32, v1)
    _raw(tmp_path).execute("DELETE FROM secrets WHERE name = 'seed'")
    _raw(tmp_path).execute("INSERT INTO secrets VALUES (?, ?, ?, ?, ?, ?, ?)", saved)
    with pytest.raises(IntegrityError, match="made for another definition than the previous"):
        version(3, 16, v2)
