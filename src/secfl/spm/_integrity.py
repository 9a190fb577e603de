"""The SPM's database is untrusted storage: every row it relies on is authenticated,
and nothing it has seen may go back.

With PostgreSQL the database lies outside the SPM's TEE, and even SQLite is a file
the host's root can rewrite. So the SPM treats it as untrusted storage:

- **Row MACs.** Every row the SPM acts on (policy versions, secrets, policy keys,
  sessions, counters, certificates, revocations, volume records) carries an
  HMAC-SHA256 under a key derived from the master key, over the table name and the
  row's every column. A row that was written, changed or moved by anyone else does
  not verify and is refused (``integrity: ...``): an unsigned policy, a forged
  session, a counter set to another value.
- **Floors.** A MAC cannot tell an old row from a current one: a counter restored to
  an older value with its older MAC verifies. Every change the SPM makes is also
  chained into the audit log (policy versions, counter values, volume releases,
  revocations and readmissions, and the Intel collateral it verified), and the SPM
  keeps, inside its TEE, the highest value it has seen of each: a row behind its
  floor is a rollback and is refused.
  At start the floors are rebuilt by replaying the whole verified audit log.
- **The anchor.** The audit log itself could be rolled back as a whole (entries
  deleted, an older head and its MAC restored). The SPM keeps the last head it
  wrote in a file of its own data folder (``audit.anchor``, MAC'd), outside the
  database: a database whose head is behind the anchor, or has forked from it, is
  refused at start and while running.

What this does not cover: someone who rolls back the database *and* the SPM's data
folder together (root on the SPM's host, or a restored whole-machine backup). That
needs a monotonic counter outside the host (a TEE's, or a second SPM); see the
README's threat model (a reader who kept a head the log printed sees it: ``secfl
audit verify --seen``). Nor, with several SPMs sharing one database, a rollback of
what one of them committed that another has not read yet: the database's writer
saves the head and its MAC, lets SPM B commit, then puts them back with B's rows and
entries deleted; SPM A, whose anchor is at that head, accepts it (B refuses it).
Each anchor covers only what its SPM saw.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from secfl._internal.canonical import canonical_json
from secfl.errors import IntegrityError, SpmError
from secfl.spm._anchor import ANCHOR_FILE, Anchor
from secfl.spm._floor_changes import replayed
from secfl.spm._issued import IssuedIndex
from secfl.spm._renewal import EndedSessions

_ROW_LABEL = b"secfl/spm-row/v1\n"
#: Raises of one floor remembered at most (:attr:`Floors.raises`) while reads are open:
#: a read that spans more commits of one counter than this (a host holding it for
#: minutes) is refused, never let through. Without an open read nothing is kept.
RAISES_KEPT = 100_000
#: Named increments of each counter remembered (:attr:`Floors.history`).
HISTORY_KEPT = 4096


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b": bytes(value).hex()}
    return value


class RowMac:
    """HMAC-SHA256 of a table's row under the SPM's row key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise SpmError("integrity: the row key must be 32 bytes")
        self._key = bytes(key)

    def mac(self, table: str, values: dict[str, Any]) -> str:
        doc = {"table": table, "row": {k: _jsonable(v) for k, v in sorted(values.items())}}
        message = _ROW_LABEL + canonical_json(doc)
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def check(self, table: str, values: dict[str, Any], mac: Any, what: str) -> None:
        """Refuse a row whose MAC is missing or does not verify (or cannot be computed:
        a value no SPM writes, such as a float or a huge nesting)."""
        try:
            expected = self.mac(table, values)
        except (TypeError, ValueError, RecursionError):
            expected = ""
        if not expected or not isinstance(mac, str) or not hmac.compare_digest(expected, mac):
            raise IntegrityError(
                f"integrity: {what} fails its MAC: the database was modified outside the SPM "
                "(restore it from a backup; docs/operations.md: The SPM's master key and backups)"
            )


@dataclass
class Floors:
    """The highest state this SPM has seen of everything that must never go back.

    Kept in the SPM's memory (inside its TEE); rebuilt at start from the verified
    audit log, raised by every commit and every row read.
    """

    head: tuple[int, str] = (0, "")
    policies: dict[str, int] = field(default_factory=dict)
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    volumes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: policy -> {(kind, subject)} currently revoked.
    revoked: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    #: (policy, kind, subject) -> the digest of the revocation statement in force for it:
    #: what a readmission must name (``lifts``), so that one signed for an earlier
    #: revocation of the subject, held back, never lifts a later one.
    revoked_by: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: Digests of the board's revocation and readmission statements already applied:
    #: each is applied once (old signatures cannot lift, or renew, a later decision).
    statements: set[str] = field(default_factory=set)
    #: policy -> SHA-256 of its current wrapped data key (replaced when the board changes).
    data_keys: dict[str, str] = field(default_factory=dict)
    #: (policy, secret) -> SHA-256 of the ciphertext this SPM stored last as its value:
    #: an older value restored with its MAC (one the board rotated away) is a rollback.
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Intel collateral verified (secfl.spm._collateral_floors): what none taken later
    #: may be older than (TCB evaluation numbers, CRL issue times).
    collateral: dict[tuple[str, ...], int] = field(default_factory=dict)
    #: (policy, counter) -> (value, request, by) of its newest named compare-and-increment
    #: (``by``: the service and its session's certificate serial): that request, sent
    #: again by the same session because its answer was lost, is answered with the value
    #: it took instead of a refusal (secfl.spm._increment).
    requests: dict[tuple[str, str], tuple[int, str, str]] = field(default_factory=dict)
    #: (policy, counter) -> {value: request} of its newest :data:`HISTORY_KEPT` named
    #: increments: which one took the counter to an earlier value (asked by a board
    #: reset that finds two checkpoints there, a fork's: secfl.fl._commit).
    history: dict[tuple[str, str], dict[int, str]] = field(default_factory=dict)
    #: The live certificates issued, with what each was attested as: what the
    #: revocation list implies rests on these, not on session rows the host can delete.
    issued: IssuedIndex = field(default_factory=IssuedIndex)
    #: Sessions their workload replaced by attesting again (secfl.spm._renewal).
    ended: EndedSessions = field(default_factory=EndedSessions)
    #: Moves on whenever a floor is raised. A read transaction notes it when it
    #: begins (:attr:`Tx.since <secfl.spm._tx.Tx.since>`): a floor raised after that
    #: may be a commit its snapshot predates, so a value behind such a floor but not
    #: behind the floor as it stood at ``since`` is stale, not rolled back (the next
    #: read checks it against the floor again).
    epoch: int = 0
    #: (kind, key) -> its floor's raises since the oldest open read began, oldest first:
    #: (the epoch of the raise, the floor before it) ("head", "policy", "counter",
    #: "volume"). Kept so that a stale read may see only what stood when it began, not
    #: any older value: else a host that held a read while a commit went through could
    #: answer it with any authentic old row (a counter far back, a superseded version).
    raises: dict[tuple[str, Any], deque[tuple[int, int]]] = field(default_factory=dict)
    #: (kind, key) -> the newest epoch of a raise dropped for :data:`RAISES_KEPT`: a read
    #: that began before it cannot be told stale from rolled back.
    forgotten: dict[tuple[str, Any], int] = field(default_factory=dict)
    #: The ``since`` of every read transaction open now (:meth:`begin_read`), counted.
    readers: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- checks (raise on a rollback, raise the floor otherwise)
    def check_head(self, seq: int, head_hash: str, *, since: int | None = None) -> None:
        with self.lock:
            floor_seq, floor_hash = self.head
            if seq < floor_seq and self._stale("head", None, since, seq):
                return
            if seq < floor_seq:
                raise IntegrityError(
                    f"rollback: the database's audit log ends at entry {seq}, but this SPM "
                    f"wrote up to entry {floor_seq}: the database was rolled back"
                )
            if seq == floor_seq and floor_hash and head_hash != floor_hash:
                raise IntegrityError(
                    f"rollback: the database's audit entry {seq} is not the one this SPM wrote: "
                    "the log was forked or rewritten"
                )

    def raise_head(self, seq: int, head_hash: str) -> None:
        with self.lock:
            if seq >= self.head[0]:
                if seq > self.head[0]:
                    self._raised("head", None, self.head[0])
                self.head = (seq, head_hash)

    def check_policy(
        self, name: str, version: int, *, learn: bool = True, since: int | None = None
    ) -> None:
        what = f"policy '{name}' version"
        self._check("policy", self.policies, name, version, what, learn, since)

    def check_counter(
        self, policy: str, name: str, value: int, *, learn: bool = True, since: int | None = None
    ) -> None:
        what = f"counter '{name}' of '{policy}'"
        self._check("counter", self.counters, (policy, name), value, what, learn, since)

    def check_volume(
        self, policy: str, volume: str, version: int, *, learn: bool = True,
        since: int | None = None,
    ) -> None:  # fmt: skip
        what = f"volume '{volume}' of '{policy}'"
        self._check("volume", self.volumes, (policy, volume), version, what, learn, since)

    def check_data_key(self, policy: str, wrapped_sha256: str) -> None:
        """The data key must be the one the log last recorded for ``policy``."""
        with self.lock:
            want = self.data_keys.get(policy)
        if want is not None and want != wrapped_sha256:
            raise IntegrityError(
                f"rollback: the data key of policy '{policy}' is not the one this SPM last "
                "recorded: the database was rolled back"
            )

    def stored_secret(self, policy: str, name: str) -> str | None:
        """The SHA-256 of the row the log last recorded for a secret, None if none."""
        with self.lock:
            return self.secrets.get((policy, name))

    def check_secret(self, policy: str, name: str, sha256: str, pending: str | None) -> None:
        """A secret's row must be the one the log last recorded for it (or ``pending``,
        the one the reading transaction itself stored). Rows stored before the log
        recorded secrets have no floor until they are stored again."""
        with self.lock:
            want = pending or self.secrets.get((policy, name))
        if want is not None and want != sha256:
            raise IntegrityError(
                f"rollback: the stored value of secret '{name}' of policy '{policy}' is not "
                "the one this SPM last stored: the database was rolled back (restore it from "
                "a backup; docs/operations.md: The SPM's master key and backups)"
            )

    def _check(
        self, kind: str, table: dict[Any, int], key: Any, value: int, what: str, learn: bool,
        since: int | None,
    ) -> None:  # fmt: skip
        """Refuse a value behind its floor (unless the floor was raised after ``since``,
        the epoch the reading transaction began at); a committed value read (``learn``)
        raises it. Inside a write transaction nothing is learnt: what it reads may
        never commit."""
        with self.lock:
            floor = table.get(key, 0)
            if value < floor:
                if self._stale(kind, key, since, value):
                    return
                raise IntegrityError(
                    f"rollback: {what} is {value} in the database, but this SPM recorded "
                    f"{floor}: the database was rolled back"
                )
            if learn and value > floor:
                table[key] = value
                self._raised(kind, key, floor)

    def begin_read(self) -> int:
        """A read transaction begins: its ``since`` (the epoch now), kept open until
        :meth:`end_read` so that the raises it may need are remembered."""
        with self.lock:
            self.readers[self.epoch] += 1
            return self.epoch

    def end_read(self, since: int) -> None:
        with self.lock:
            self.readers[since] -= 1
            if self.readers[since] <= 0:
                del self.readers[since]
            if not self.readers:  # nobody can need a past raise (the start's replay kept many)
                self.raises.clear()

    def _raised(self, kind: str, key: Any, before: int) -> None:
        """Note that a floor moved from ``before`` (the caller holds the lock). Raises no
        open read can need (at or before the oldest one's ``since``) are dropped."""
        self.epoch += 1
        raises = self.raises.get((kind, key))
        if raises is None:
            raises = self.raises[(kind, key)] = deque()
        oldest = min(self.readers, default=self.epoch)
        while raises and raises[0][0] <= oldest:
            raises.popleft()
        if not self.readers:
            return
        if len(raises) >= RAISES_KEPT:
            self.forgotten[(kind, key)] = raises.popleft()[0]
        raises.append((self.epoch, before))

    def _stale(self, kind: str, key: Any, since: int | None, value: int) -> bool:
        """Whether ``value``, behind the floor of (kind, key), is what a read that
        began at epoch ``since`` may see: the floor as it stood then, or a later one.
        If that floor is no longer known (more than :data:`RAISES_KEPT` raises since
        the read began), it is not (fail closed)."""
        if since is None or self.forgotten.get((kind, key), 0) > since:
            return False
        raises = self.raises.get((kind, key))
        if not raises or raises[-1][0] <= since:
            return False
        first = next(i for i, (epoch, _) in enumerate(raises) if epoch > since)
        return value >= raises[first][1]

    def revoked_in(self, policy: str) -> set[tuple[str, str]]:
        with self.lock:
            return set(self.revoked.get(policy, ()))

    def lifted_by(self, policy: str, kind: str, subject: str) -> str | None:
        """The digest of the revocation statement in force for (kind, subject), None if
        none is known (not revoked, or revoked before the log recorded digests)."""
        with self.lock:
            return self.revoked_by.get((policy, kind, subject))

    def revoked_of(self, policy: str, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of ``keys`` (kind, subject) this SPM knows were revoked in ``policy``."""
        with self.lock:
            return keys & self.revoked.get(policy, set())

    # -- changes (applied once their transaction committed)
    def apply(self, change: tuple[Any, ...]) -> None:
        what = change[0]
        if what == "issued":  # an index of its own, with its own lock
            self.issued.add(change[1], change[2])
            return
        if what == "ended":
            self.ended.add(change[1], change[2])
            return
        if what == "ended-serial":
            self.ended.add_serial(change[1], change[2], change[3])
            return
        with self.lock:
            if what == "policy":
                _, name, version = change
                before = self.policies.get(name, 0)
                self.policies[name] = max(before, version)
                self._raised("policy", name, before)
            elif what == "counter":
                _, policy, name, value = change
                key = (policy, name)
                before = self.counters.get(key, 0)
                self.counters[key] = max(before, value)
                self._raised("counter", key, before)
            elif what == "volume":
                _, policy, volume, version = change
                key = (policy, volume)
                before = self.volumes.get(key, 0)
                self.volumes[key] = max(before, version)
                self._raised("volume", key, before)
            elif what == "revoke":
                _, policy, kind, subject = change
                self.revoked.setdefault(policy, set()).add((kind, subject))
            elif what == "readmit":
                _, policy, kind, subject = change
                self.revoked.get(policy, set()).discard((kind, subject))
                self.revoked_by.pop((policy, kind, subject), None)
            elif what == "revoked-by":
                _, policy, kind, subject, digest = change
                self.revoked_by[(policy, kind, subject)] = digest
            elif what == "statement":
                self.statements.add(change[1])
            elif what == "datakey":
                self.data_keys[change[1]] = change[2]
            elif what == "secret":
                self.secrets[(change[1], change[2])] = change[3]
            elif what == "collateral":
                _, key, value = change
                self.collateral[key] = max(value, self.collateral.get(key, 0))
            elif what == "request":
                _, policy, name, value, request, by = change
                key = (policy, name)
                if value >= self.requests.get(key, (0, "", ""))[0]:
                    self.requests[key] = (value, request, by)
                past = self.history.setdefault(key, {})
                past[value] = request
                if len(past) > HISTORY_KEPT:  # values come in rising: the first is oldest
                    del past[next(iter(past))]

    def replay(self, event: str, policy: str | None, detail: dict[str, Any]) -> None:
        """Raise the floors by one verified audit entry (at start)."""
        for change in replayed(event, policy, detail):
            self.apply(change)


class Integrity:
    """What a :class:`~secfl.spm._store.Store` needs to treat its database as untrusted."""

    def __init__(self, row_key: bytes, *, anchor: Anchor | None = None) -> None:
        self.rows = RowMac(row_key)
        self.floors = Floors()
        self.anchor = anchor
        #: Set when the start made the anchor anew over a database that held an SPM's
        #: state (``--new-anchor``): the start logs it, where the board sees it.
        self.anchor_made = False


__all__ = [
    "ANCHOR_FILE",
    "Anchor",
    "Floors",
    "Integrity",
    "IntegrityError",
    "RowMac",
]
