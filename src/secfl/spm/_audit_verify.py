"""Check an SPM's audit log end to end: from its database, or through its API."""

from __future__ import annotations

from pathlib import Path

from secfl.errors import AuditError, SpmError
from secfl.spm._audit import AuditEntry, verify_chain
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
    try:
        count = store.verify_audit(master.derive("audit-head"))
        seq, _ = store.audit_head()
    finally:
        store.close()
    return count, seq


def verify_remote(url: str, pin: str) -> tuple[int, int]:
    """Fetch the whole log from the pinned SPM and verify it against its signed head."""
    from secfl.spm.client import SpmClient

    entries: list[AuditEntry] = []
    with SpmClient(url, pin=pin) as client:
        since, head = 0, (0, "")
        while True:
            doc = client.audit(since=since, limit=PAGE)
            head = (int(doc["head_seq"]), str(doc["head_hash"]))
            page = [AuditEntry.from_dict(e) for e in doc["entries"]]
            entries.extend(page)
            if not page or page[-1].seq >= head[0]:
                break
            since = page[-1].seq
    count = verify_chain(entries, head=head)
    return count, head[0]


def _verify_unauthenticated(db_url: str) -> tuple[int, int]:
    store = Store(db_url)
    try:
        head = store.audit_head()
        entries: list[AuditEntry] = []
        while True:
            page = store.audit_since(entries[-1].seq if entries else 0, PAGE)
            entries.extend(page)
            if len(page) < PAGE:
                break
    finally:
        store.close()
    return verify_chain(entries, head=head), head[0]
