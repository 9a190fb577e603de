"""Check an SPM's audit log end to end: from its database, or through its API."""

from __future__ import annotations

from pathlib import Path

from secfl.errors import AuditError, SpmError
from secfl.spm._audit import READ_CHARS, AuditEntry, ChainVerifier, verify_pages
from secfl.spm._audit_read import data_folder_key, open_database

__all__ = ["PAGE", "check_database", "check_remote", "verify_database", "verify_remote"]

PAGE = 1000

Head = tuple[int, str]


def verify_database(data_dir: Path | str | None, db_url: str | None = None) -> tuple[int, int]:
    """:func:`check_database`: (entries, head seq)."""
    count, head = check_database(data_dir, db_url)
    return count, head[0]


def verify_remote(url: str, pin: str) -> tuple[int, int]:
    """:func:`check_remote`: (entries, head seq)."""
    count, head = check_remote(url, pin)
    return count, head[0]


def check_database(
    data_dir: Path | str | None, db_url: str | None = None, *, seen: Head | None = None
) -> tuple[int, Head]:
    """Verify the chain and its head straight from the SPM's store, read only: nothing
    is created or written (not the database, not the anchor).

    With the SPM's data folder (its master key authenticates the head), removing
    the newest entries is detected too. With only ``db_url``, the chain is checked
    against the stored head: any modified, reordered or removed entry is found,
    except a tail removed together with a rewritten head. ``seen``: a head its reader
    saw before, which the log must still hold (else a rollback: of the database and
    the data folder together, which the SPM itself cannot see). Returns (entries, head).
    """
    if data_dir is None:
        if db_url is None:
            raise AuditError("audit: give the SPM's data folder or its database URL")
        return _verify_unauthenticated(db_url, seen)
    data = Path(data_dir)
    master = data_folder_key(data)
    from secfl.spm._integrity import ANCHOR_FILE, Anchor, Integrity
    from secfl.spm._state import unreadable, verify_state

    audit_key = master.derive("audit-head")
    integrity = Integrity(
        master.derive("store-rows"),
        anchor=Anchor(data / ANCHOR_FILE, master.derive("store-anchor")),
    )
    store = open_database(data, db_url, audit_key=audit_key, integrity=integrity)
    try:  # the whole database (log, anchor, every row), as the SPM checks it at its start
        verify_state(store, audit_key, read_only=True)
        # one snapshot, checked against the floors (and so the anchor) just rebuilt
        count, head = store.verify_audit_head(audit_key, seen=seen)
    except AuditError:
        raise
    except SpmError as exc:  # a row that fails its MAC, a rollback
        raise AuditError(str(exc)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise unreadable(exc) from None  # a value no SPM wrote: one line, no traceback
    finally:
        store.close()
    return count, head


def check_remote(url: str, pin: str, *, seen: Head | None = None) -> tuple[int, Head]:
    """Fetch the whole log from the pinned SPM and verify it against its signed head,
    page by page (memory bounded whatever the log's length); ``seen``: as for
    :func:`check_database`. Returns (entries, head)."""
    from secfl.spm.client import SpmClient

    verifier = ChainVerifier(seen=seen)
    with SpmClient(url, pin=pin) as client:
        since, head = 0, (0, "")
        while True:
            doc = client.audit(since=since, limit=PAGE)
            page_head = (int(doc["head_seq"]), str(doc["head_hash"]))
            if since == 0:
                head = page_head  # the head the log is checked against: the first page's
            page = [AuditEntry.from_dict(e) for e in doc["entries"]]
            for entry in page:
                if entry.seq > head[0]:
                    break
                verifier.feed(entry)
            if not page or page[-1].seq >= head[0]:
                break
            since = page[-1].seq
    count = verifier.finish(head)
    return count, head


def _verify_unauthenticated(db_url: str, seen: Head | None) -> tuple[int, Head]:
    store = open_database(None, db_url)
    try:
        with store.read() as tx:  # one snapshot: the head and the entries it ends
            head = tx.audit.head()

            def since(after: int, limit: int) -> list[AuditEntry]:
                return tx.audit.since(after, limit, chars=READ_CHARS)

            return verify_pages(since, head, PAGE, seen=seen), head
    finally:
        store.close()
