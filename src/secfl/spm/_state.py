"""Check a whole SPM database before trusting it: the audit log, its anchor, every row.

:func:`verify_state` runs when the SPM starts (and, read only, for ``secfl audit verify
--data``):
it verifies the hash chain and the authenticated head, compares the head with the
anchor kept outside the database, rebuilds the floors (:mod:`secfl.spm._integrity`)
by replaying the log, and then reads every row the SPM relies on, which checks its
MAC and that it is not behind its floor. Anything off is refused in one line.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from secfl.errors import IntegrityError, SpmError
from secfl.spm import _audit
from secfl.spm._identity import IDENTITY_META
from secfl.spm._integrity import Floors
from secfl.spm._schema import (
    policy_keys_table,
    secrets_table,
    sessions_table,
    volume_tags_table,
)
from secfl.spm._status_index import StatusIndex
from secfl.spm._store import AUDIT_HEAD_MAC, Store
from secfl.spm._tx import Tx

__all__ = ["log_unlogged_secrets", "missing_anchor", "unreadable", "verify_state"]


def verify_state(
    store: Store,
    audit_key: bytes,
    status: StatusIndex | None = None,
    *,
    new_anchor: bool = False,
    read_only: bool = False,
) -> int:
    """Verify ``store`` end to end and rebuild its floors; return the number of entries.
    ``status``: an index for ``secfl status`` to fill with the verified log on the way.
    ``new_anchor``: a missing anchor over a database that holds an SPM's state is
    made anew (a second SPM sharing the database) rather than refused. ``read_only``
    (``secfl audit verify``): checked against the anchor, which is not written."""
    integrity = store.integrity
    if integrity is None:
        raise SpmError("integrity: the store was opened without its row key")
    floors = integrity.floors
    # Read before the snapshot: the SPM moves its anchor after each commit, so an anchor
    # read later could be ahead of the snapshot of a running SPM's database.
    anchored = integrity.anchor.read() if integrity.anchor is not None else None
    with store.read() as tx:
        head = tx.audit.head()
        mac = tx.meta.get(AUDIT_HEAD_MAC)
        _audit.check_head_mac(audit_key, head[0], head[1], None if mac is None else mac.decode())
        held = head[0] > 0 or tx.meta.get(IDENTITY_META) is not None
        if integrity.anchor is not None and anchored is None and held:
            if not new_anchor or read_only:
                raise IntegrityError(missing_anchor(integrity.anchor.path))
            integrity.anchor_made = True  # decided by this very read: the start logs it
        if anchored is not None and head[0] < anchored[0]:
            raise IntegrityError(rolled_back(head[0], anchored[0]))
        verifier = _audit.ChainVerifier()
        for entries in tx.audit.pages(0):
            for entry in entries:
                verifier.feed(entry)
                if anchored is not None and entry.seq == anchored[0] and entry.hash != anchored[1]:
                    raise IntegrityError(
                        f"rollback: audit entry {entry.seq} is not the one this SPM anchored: "
                        "the log was forked or rewritten"
                    )
                floors.replay(entry.event, entry.policy, entry.detail)
                if status is not None:
                    status.feed(tx, entry)
        count = verifier.finish(head)
        floors.check_head(*head)
        floors.raise_head(*head)
        tx.since = None  # the floors were just rebuilt from this very snapshot: hold it to them
        logged = _logged(floors)
        _check_rows(tx)
        _none_ahead(logged, _logged(floors))
        if status is not None:
            status.head = head
    if integrity.anchor is not None and not read_only:
        integrity.anchor.write(*head)
    return count


def missing_anchor(path: object) -> str:
    """The refusal of a missing anchor over a database that holds an SPM's state."""
    return (
        f"rollback: this SPM's audit anchor ({path}) is missing, but the database holds an "
        "SPM's state: its data folder was replaced or rolled back (a database whose log was "
        "cut back would then be accepted); restore the folder with the database from one "
        "backup (a second SPM on a shared database, or an anchor truly lost: `secfl spm "
        "serve --new-anchor` once, which the audit log records)"
    )


def rolled_back(head: int, anchored: int) -> str:
    """The refusal of a database whose log ends before the entry the anchor records,
    with the next step: most often an operator's backup, not an attack (the database
    copied after the anchor, or SQLite's ``spm.db`` copied without its ``-wal`` file while
    the SPM ran, which holds every commit since the last checkpoint)."""
    return (
        f"rollback: the database's audit log ends at entry {head}, but this SPM's anchor "
        f"records entry {anchored}: the database was rolled back, or is a copy older than "
        "the anchor beside it (a backup taken while the SPM ran: the database copied before "
        "audit.anchor, or spm.db without its spm.db-wal); restore the data folder and the "
        "database from one backup taken as docs/operations.md says (\"The SPM's master key "
        'and backups")'
    )


def unreadable(exc: BaseException) -> IntegrityError:
    """The one-line refusal of a database holding a value the SPM cannot even read (here,
    not with the server: `secfl audit verify --data` gives it too, without loading the
    HTTPS server)."""
    why = " ".join(str(exc).split())[:100]
    return IntegrityError(
        f"integrity: the database holds a value the SPM cannot read ({type(exc).__name__}: "
        f"{why}); it was changed outside the SPM: restore it from a backup "
        "(docs/operations.md: The SPM's master key and backups)"
    )


_Logged = dict[str, dict[Any, int]]


def _logged(floors: Floors) -> _Logged:
    """What the replayed log says of every policy version, counter and volume version."""
    with floors.lock:
        return {
            "policy": dict(floors.policies),
            "counter": dict(floors.counters),
            "volume": dict(floors.volumes),
        }


def _none_ahead(logged: _Logged, read: _Logged) -> None:
    """Every row read must be what the log recorded last, not newer: each commit writes
    its rows and its audit entry in one transaction, so a row ahead of the log is one
    whose entries were cut away. Else a host that deleted the anchor and emptied (or cut
    back) the log could pick rows from different times (a current policy, a counter
    saved earlier, the board's revocations gone), each with a valid MAC."""
    for kind, values in read.items():
        for key, value in sorted(values.items(), key=repr):
            if value > logged[kind].get(key, 0):
                name = key if isinstance(key, str) else "/".join(map(str, key))
                raise IntegrityError(
                    f"rollback: the database holds {kind} {name} at {value}, but its audit log "
                    f"records {logged[kind].get(key, 0)}: the log was cut back (restore the "
                    "database and the SPM's data folder from one backup)"
                )


def _check_rows(tx: Tx) -> None:
    """Read every row the SPM relies on: its MAC, and its floor, are checked on read."""
    conn = tx.connection()
    names = set(tx.policies.names()) | set(tx.floors.policies if tx.floors else ())
    for name in sorted(names):
        tx.policies.history(name)
        tx.policies.current(name)
        tx.counters.of_policy(name)
        tx.certificates.of_policy(name)
        rows = {(r.kind, r.subject) for r in tx.revocations.of_policy(name)}
        missing = tx.revocations.in_force(name) - rows
        if missing:
            kind, subject = sorted(missing)[0]
            raise IntegrityError(
                f"rollback: the revocation of {kind} {subject} of policy '{name}' is missing "
                "from the database: it was deleted outside the SPM"
            )
    for policy, name in list(tx.floors.counters if tx.floors else ()):
        if tx.counters.get(policy, name) is None:
            raise IntegrityError(f"rollback: counter '{name}' of policy '{policy}' was deleted")
    for policy, volume in list(tx.floors.volumes if tx.floors else ()):
        tx.volume_tags.get(policy, volume)
    for row in conn.execute(select(volume_tags_table)):
        tx.volume_tags.get(row.policy, row.volume)
    for row in conn.execute(select(secrets_table)):
        tx.secrets.record(row)
    for policy, name in list(tx.floors.secrets if tx.floors else ()):
        if tx.secrets.get(policy, name) is None:
            raise IntegrityError(f"rollback: secret '{name}' of policy '{policy}' was deleted")
    for row in conn.execute(select(policy_keys_table.c.policy)):
        tx.data_keys.get(row.policy)
    for row in conn.execute(select(sessions_table.c.token_sha256)):
        tx.sessions.get(bytes(row.token_sha256))


def log_unlogged_secrets(store: Store) -> int:
    """Chain into the audit log every secret row whose store it does not record (rows an
    SPM older than ``secret.stored`` entries wrote), as it stands now: from then on only
    that row is the secret's, as for any row stored since. Returns how many."""
    floors = None if store.integrity is None else store.integrity.floors
    if floors is None:
        return 0
    with store.read() as tx:
        rows = tx.connection().execute(select(secrets_table.c.policy, secrets_table.c.name))
        unlogged = [
            (r.policy, r.name) for r in rows if floors.stored_secret(r.policy, r.name) is None
        ]
    if not unlogged:
        return 0
    with store.transaction() as tx:
        for policy, name in unlogged:
            record = tx.secrets.get(policy, name)
            if record is not None and floors.stored_secret(policy, name) is None:
                tx.secrets.log_stored(record, "logged at start")
    return len(unlogged)
