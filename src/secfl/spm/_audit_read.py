"""Reading the audit log a page at a time, every entry verified before it is used.

The log is authenticated at its head: the SPM signs the head it serves (a remote
reader checks that signature against the pinned key), and the head row in the
database carries a MAC under the SPM's master key (a reader with the SPM's data
folder checks it). A hash chain read *backwards* from an authenticated head
authenticates every entry it reaches, since entry n is authentic when its hash is
the ``prev_hash`` of the authentic entry n+1. So a reader that wants the newest
entries verifies just those, not the whole log (``secfl audit verify`` does that),
and a reader that follows the log verifies each new stretch between the head it
trusted last and the new authenticated head.

Sources: :class:`RemoteSource` (the SPM's ``GET /v1/audit``), :class:`DatabaseSource`
(the SPM's database and data folder, read only) and :class:`SnapshotSource` (one
read transaction of the SPM itself, for the status it serves).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from secfl.errors import AuditError, IntegrityError
from secfl.spm._audit import GENESIS, READ_CHARS, AuditEntry, check_head_mac

if TYPE_CHECKING:
    from secfl.spm._integrity import Anchor
    from secfl.spm._masterkey import MasterKey
    from secfl.spm._store import Store
    from secfl.spm._tx import Tx
    from secfl.spm.client import SpmClient

__all__ = [
    "PAGE",
    "AuditSource",
    "BackwardVerifier",
    "DatabaseSource",
    "RemoteSource",
    "SnapshotSource",
    "data_folder_key",
    "newest",
    "open_database",
    "walk_back",
]

#: Entries read per request (the SPM serves at most 10 000 per page).
PAGE = 1000
#: Past this seq a value is not a sequence number (the SPM's own bound).
MAX_SEQ = 2**62

Head = tuple[int, str]


class AuditSource(Protocol):
    """Where entries come from. Only :meth:`head` is trusted (authenticated by the
    source); the entries are checked against it by the reader."""

    def head(self) -> Head:
        """The authenticated head (last seq, its hash), or an error saying why not."""
        ...

    def entries(self, after: int, limit: int) -> list[AuditEntry]:
        """Entries with a seq above ``after``, ascending, at most ``limit`` (unchecked);
        fewer when the source's page ends early, at what it may hold at once."""
        ...


class BackwardVerifier:
    """Verifies windows of entries from the head back towards the first entry.

    Each window (ascending, contiguous) must end where the last verified one began:
    its newest entry's hash is the ``prev_hash`` of the entry after it (for the
    first window: the head's hash). Every entry's hash is recomputed from its
    content, so a modified entry, a missing one, or one moved elsewhere is refused.
    """

    def __init__(self, head: Head) -> None:
        #: The next entry expected going back: its seq and the hash it must carry.
        self.seq, self.hash = head
        self._head_seq = head[0]

    def feed(self, window: list[AuditEntry]) -> None:
        if not window:
            raise AuditError(f"audit: entry {self.seq} is missing{_NEXT}")
        for back, entry in enumerate(reversed(window)):
            if entry.seq != self.seq - back:
                raise AuditError(
                    f"audit: entry {self.seq - back} is missing or out of place "
                    f"(found {entry.seq}){_NEXT}"
                )
        want = self.hash
        for entry in reversed(window):
            try:
                computed = entry.computed_hash()
            except (TypeError, ValueError, RecursionError):  # nested past the stack too
                computed = ""
            if computed != entry.hash:
                raise AuditError(f"audit: entry {entry.seq} was modified (its hash does not "
                                 f"match its content){_NEXT}")  # fmt: skip
            if entry.hash != want:
                where = (
                    "the authenticated head"
                    if entry.seq == self._head_seq
                    else f"entry {entry.seq + 1}"
                )
                raise AuditError(
                    f"audit: entry {entry.seq} does not chain to {where} (one of them was "
                    f"modified, or the log was rewritten){_NEXT}"
                )
            want = entry.prev_hash
        self.seq, self.hash = window[0].seq - 1, window[0].prev_hash
        if self.seq == 0 and self.hash != GENESIS:
            raise AuditError(f"audit: entry 1 does not start the log (its prev_hash is not "
                             f"the genesis){_NEXT}")  # fmt: skip


_NEXT = "; the log was changed outside the SPM (`secfl audit verify` checks all of it)"


def walk_back(source: AuditSource, head: Head, *, stop: Head | None = None,
              page: int = PAGE, most: int | None = None) -> Iterator[list[AuditEntry]]:  # fmt: skip
    """Verified windows of entries from ``head`` back to the start of the log, or back
    to ``stop`` (an entry already trusted: the walk must reach exactly it), or over
    the ``most`` newest entries only.

    Each window is yielded only after it verified, newest window first, entries in
    ascending order inside it. A window the source ended early (its page full: the
    first entries asked for, in a row) is asked for again, as the newest that many (or
    half as many): memory holds one page of the source, whatever the entries' size."""
    verifier = BackwardVerifier(head)
    floor = stop[0] if stop is not None else 0
    if most is not None and stop is None:
        floor = max(floor, head[0] - most)
    upto, size = head[0], page
    while upto > floor:
        after = max(floor, upto - size)
        window = source.entries(after, upto - after)
        if 0 < len(window) < upto - after and all(
            entry.seq == after + 1 + i for i, entry in enumerate(window)
        ):
            # at most half as many each time (at least one entry comes): a source short
            # of its newest entries (removed) is found missing in a few asks
            size = min(len(window), size // 2)
            continue
        verifier.feed(window)
        if verifier.seq != after:  # the window must reach back to what was asked for
            raise AuditError(
                f"audit: entry {verifier.seq} is missing (the log holds nothing before entry "
                f"{verifier.seq + 1} of the {upto - after} asked for){_NEXT}"
            )
        yield window
        upto, size = after, page
    if stop is not None and verifier.hash != stop[1]:
        raise AuditError(
            f"audit: entry {stop[0]} changed since it was read (the log was rewritten){_NEXT}"
        )


def newest(
    source: AuditSource,
    limit: int | None,
    match: Callable[[AuditEntry], bool] = lambda entry: True,
    *,
    after: Head | None = None,
    scan: int | None = None,
) -> tuple[list[AuditEntry], Head]:
    """The newest ``limit`` entries that ``match`` (all, with ``None``), ascending,
    each verified against the authenticated head; and that head.

    ``after``: only entries after this trusted one (a follower's last head), which
    must still be in the log as it was. ``scan``: look at no more than this many of
    the newest entries."""
    head = source.head()
    if after is not None:
        if head[0] < after[0] or (head[0] == after[0] and head[1] != after[1]):
            raise IntegrityError(
                f"rollback: the audit log's head went back from entry {after[0]} to "
                f"{head[0]}: the SPM's database was rolled back or forked"
            )
        if head == after:
            return [], head
    found: deque[AuditEntry] = deque()
    for window in walk_back(source, head, stop=after, most=scan):
        for entry in reversed(window):
            if match(entry):
                found.appendleft(entry)
                if limit is not None and len(found) >= limit:
                    return list(found), head
    return list(found), head


# --- sources -----------------------------------------------------------------------------


class RemoteSource:
    """The log of a pinned SPM, through ``GET /v1/audit`` (its head signed by the SPM)."""

    def __init__(self, client: SpmClient) -> None:
        self.client = client

    def head(self) -> Head:
        doc = self.client.audit(since=MAX_SEQ, limit=1)  # no entries: the signed head
        return _head_of(doc.get("head_seq"), doc.get("head_hash"))

    def entries(self, after: int, limit: int) -> list[AuditEntry]:
        """One page: the SPM ends it early once it holds
        :data:`~secfl.spm._audit.PAGE_CHARS` of detail (:func:`walk_back` asks again)."""
        want = max(1, min(limit, 10_000))
        doc = self.client.audit(since=after, limit=want)
        rows = doc.get("entries")
        if not isinstance(rows, list):
            raise AuditError("audit: the SPM's answer holds no list of entries")
        return [AuditEntry.from_dict(row) for row in rows[:want]]


class DatabaseSource:
    """The SPM's database, read only, with its data folder: the master key there
    authenticates the head (its MAC), and the anchor there, the newest head the SPM
    wrote, reveals a database rolled back to an older copy. Nothing is written (SQLite
    may still fold its write-ahead log into the file on close: the same content)."""

    def __init__(self, data: Path | str, db_url: str | None = None) -> None:
        from secfl.spm._integrity import ANCHOR_FILE, Anchor

        folder = Path(data)
        master = data_folder_key(folder)
        self._audit_key = master.derive("audit-head")
        self._anchor: Anchor = Anchor(folder / ANCHOR_FILE, master.derive("store-anchor"))
        self._store: Store = open_database(folder, db_url)
        self._checked: Head | None = None

    def close(self) -> None:
        self._store.close()

    def head(self) -> Head:
        from secfl.spm._tx_audit import AUDIT_HEAD_MAC

        # (the anchor first: a running SPM moves it after each commit, so an anchor read
        # after the snapshot could be ahead of it)
        anchored = self._anchor.read() if self._checked is None else None
        with self._store.read() as tx:
            head = tx.audit.head()
            raw = tx.meta.get(AUDIT_HEAD_MAC)
        try:
            mac = None if raw is None else bytes(raw).decode("ascii")
        except UnicodeDecodeError:
            mac = "not-a-mac"
        check_head_mac(self._audit_key, head[0], head[1], mac)
        self._check_anchor(head, anchored)
        return head

    def _check_anchor(self, head: Head, anchored: Head | None) -> None:
        """The head is not older than the SPM's anchor, and the anchored entry is still
        the one the SPM wrote (checked once: later heads extend a verified one)."""
        if self._checked is not None:
            self._checked = head
            return
        if anchored is None and head[0] > 0:  # deleted: any earlier database would pass
            # (here: the state's checks load SQLAlchemy, which a remote reader never needs)
            from secfl.spm._state import missing_anchor

            raise IntegrityError(missing_anchor(self._anchor.path))
        if anchored is None:
            self._checked = head
            return
        if head[0] < anchored[0]:
            from secfl.spm._state import rolled_back

            raise IntegrityError(rolled_back(head[0], anchored[0]))
        if anchored[0] > 0:
            for _ in walk_back(self, head, stop=anchored):
                pass
        self._checked = head

    def entries(self, after: int, limit: int) -> list[AuditEntry]:
        return self._store.audit_since(after, limit, chars=READ_CHARS)


def data_folder_key(folder: Path) -> MasterKey:
    """The master key of the SPM's data folder ``folder`` (never made: refused if absent)."""
    from secfl.spm._masterkey import load_or_create_master_key

    if not (folder / "master.key").exists():  # (one that is not a file: its own refusal)
        raise AuditError(
            f"audit: no SPM master key in {folder}: give the SPM's data folder (--data)"
        )
    return load_or_create_master_key(folder)


def open_database(folder: Path | None, db_url: str | None, **store: Any) -> Store:
    """The SPM's database (``db_url``, else the data folder's spm.db) opened read only:
    nothing is created, not even a missing SQLite file, and a database without the SPM's
    tables is refused. ``store``: more arguments of the :class:`Store`."""
    from secfl.spm._engine import normalise_url
    from secfl.spm._schema import SCHEMA_UPGRADES, SCHEMA_VERSION
    from secfl.spm._store import Store

    if db_url is None:
        if folder is None or not (folder / "spm.db").is_file():
            raise AuditError(
                f"audit: no database spm.db in {folder}: give the SPM's database URL (--db)"
            )
        db_url = f"sqlite:///{folder / 'spm.db'}"
    parsed = normalise_url(db_url)
    shown = parsed.database if parsed.drivername.startswith("sqlite") else None
    if shown is not None and not Path(shown).is_file():
        raise AuditError(f"audit: no database {shown}: check --db (an SPM's sqlite:///PATH)")
    opened = Store(db_url, read_only=True, **store)
    try:
        version = opened.schema_version()
    except BaseException:
        opened.close()
        raise
    shown = shown or opened.url
    if version is None or (version != SCHEMA_VERSION and version not in SCHEMA_UPGRADES):
        opened.close()
        if version is None:
            raise AuditError(
                f"audit: {shown} is not an SPM database (no SPM tables): check --db/--data"
            )
        found = "".join(c if c.isprintable() else "?" for c in version[:16].decode("latin-1"))
        raise AuditError(
            f"audit: {shown} has schema version {found}, this secfl reads "
            f"{SCHEMA_VERSION.decode()}: check --db/--data, or use the release that made it"
        )
    return opened


class SnapshotSource:
    """One read transaction of the SPM's store, whose head the SPM has checked."""

    def __init__(self, tx: Tx, head: Head) -> None:
        self._tx, self._head = tx, head

    def head(self) -> Head:
        return self._head

    def entries(self, after: int, limit: int) -> list[AuditEntry]:
        return self._tx.audit.since(after, limit, chars=READ_CHARS)


def _head_of(seq: object, head_hash: object) -> Head:
    if (
        not isinstance(seq, int)
        or isinstance(seq, bool)
        or not 0 <= seq < MAX_SEQ
        or not isinstance(head_hash, str)
        or len(head_hash) != 64
    ):
        raise AuditError("audit: the SPM's answer holds no valid head")
    return seq, head_hash
