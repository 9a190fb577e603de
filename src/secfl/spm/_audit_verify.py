"""Check an SPM's audit log end to end: from its database, or through its API."""

from __future__ import annotations

from pathlib import Path

from secfl.errors import AuditError, SpmError
from secfl.spm._audit import AuditEntry, ChainVerifier, verify_pages
from secfl.spm._masterkey import load_or_create_master_key
from secfl.spm._store import Store

__all__ = ["PAGE", "verify_database", "verify_remote"]

PAGE = 1000


def verify_database(data_dir: Path | str | None, db_url: str | None = None) -> tuple[int, int]:
    """Verify the chain and its head straight from the SPM's store.

    With the SPM's data folder (its master key authenticates the head), removing
    the newest entries is detected too. With only ``db_url``, the chain is checked
    against the stored head: any modified, reordered or removed entry is found,
    except a tail removed together with a rewritten head. Returns (entries, head seq).
    """
    if data_dir is None:
        if db_url is None:
            raise AuditError("audit: give the SPM's data folder or its database URL")
        return _verify_unauthenticated(db_url)
    data = Path(data_dir)
    if not (data / "master.key").exists():
        raise AuditError(f"audit: no SPM master key in {data}")
    master = load_or_create_master_key(data)
    from secfl.spm._server import open_store

    try:
        store = open_store(data, master, db_url)
    except AuditError:
        raise
    except SpmError as exc:  # a row that fails its MAC, a rollback
        raise AuditError(str(exc)) from None
    try:  # one snapshot, checked against the floors (and so the anchor) open_store set
        count = store.verify_audit(master.derive("audit-head"))
    finally:
        store.close()
    return count, count  # a verified chain numbers its entries 1..count


def verify_remote(url: str, pin: str) -> tuple[int, int]:
    """Fetch the whole log from the pinned SPM and verify it against its signed head,
    page by page (memory bounded whatever the log's length)."""
    from secfl.spm.client import SpmClient

    verifier = ChainVerifier()
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
    return count, head[0]


def _verify_unauthenticated(db_url: str) -> tuple[int, int]:
    store = Store(db_url)
    try:
        with store.read() as tx:  # one snapshot: the head and the entries it ends
            head = tx.audit.head()
            return verify_pages(tx.audit.since, head, PAGE), head[0]
    finally:
        store.close()
