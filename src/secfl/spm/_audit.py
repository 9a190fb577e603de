"""The SPM's append-only, hash-chained audit log.

Every entry names the hash of the one before it::

    hash = SHA-256(bytes.fromhex(prev_hash) + canonical_json({seq, at, event, policy, detail}))

with canonical JSON = sorted keys, no spaces, UTF-8 (``ensure_ascii=False``), and
``prev_hash`` of the first entry (seq 1) = 64 zeros (:data:`GENESIS`). Changing,
removing or reordering an entry breaks the chain from that entry on.

A chain alone does not reveal a removed *tail*, nor a chain that was rewritten and
rehashed from scratch. So the head (last seq, its hash) is also kept authenticated
by :func:`head_mac`, an HMAC under a key derived from the SPM's master key, updated
in the same transaction as every append (see :class:`secfl.spm._store.Store`).
Someone who can rewrite the database but does not hold the master key can then
neither drop entries from the end nor rehash the log without being detected.

What the chain and its MAC cannot detect: a rollback of the *whole* database
(entries and head MAC together) to an older copy. The SPM's anchor, a MAC'd copy of
the head kept outside the database, does (:mod:`secfl.spm._integrity`).

Remote readers, who hold no audit key, check the head by the SPM's signature
instead: ``GET /v1/audit`` signs :func:`head_message` with the SPM's TLS key, and
:meth:`SpmClient.audit <secfl.spm.client.SpmClient.audit>` verifies it against the
pinned key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from secfl._internal.canonical import canonical_json
from secfl.errors import AuditError, SpmError

__all__ = [
    "AUDIT_HEAD_DOMAIN",
    "GENESIS",
    "MAX_DETAIL_CHARS",
    "PAGE_CHARS",
    "READ_CHARS",
    "AuditEntry",
    "ChainVerifier",
    "canonical_json",
    "check_head_mac",
    "entry_hash",
    "format_time",
    "head_mac",
    "head_message",
    "make_entry",
    "verify_chain",
]

#: ``prev_hash`` of the first entry.
GENESIS = "0" * 64
#: The most characters an entry's detail takes as stored (a round event's is at most
#: 256 KiB): a longer one is refused before it is parsed, and never written.
MAX_DETAIL_CHARS = 1 << 20
#: The most bytes of detail a page of ``GET /v1/audit`` carries (one entry more if the
#: first alone is longer): 10,000 round events of 256 KiB were a 2.5 GB answer built
#: in the SPM's memory, for anyone who asked; a reader pages on from the last. It was
#: 16 MiB: rows of 1 MiB of empty objects that the database's host wrote were some
#: 400 MB parsed, in the SPM and again in a remote reader (`secfl audit show --spm`);
#: now as much as a reader of the database holds at once (:data:`READ_CHARS`), a
#: quarter of that. A log's ordinary entries (a few hundred bytes) still fill a page
#: of 1000, what a remote reader asks for.
PAGE_CHARS = 4 << 20
#: The most characters of detail a reader of the whole log (the SPM's start, ``secfl
#: audit verify``, following the log) holds at once, in pages of at most 1000 entries
#: (one entry more if the first alone is longer). A page was 1000 entries whatever
#: their size: a JSON detail of 1 MiB takes some 24 MB once parsed, so 1000 of them
#: (the database's host's, or an aggregator's events of 256 KiB) took gigabytes.
READ_CHARS = 4 << 20
#: Domain of the head: what its MAC and the SPM's signature of it are over.
AUDIT_HEAD_DOMAIN = "secfl/audit-head/v1"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAC_LABEL = f"{AUDIT_HEAD_DOMAIN}\n".encode()


def format_time(at: datetime) -> str:
    """An aware datetime as the log writes it: ISO-8601 UTC with microseconds and ``Z``."""
    if at.tzinfo is None:
        raise SpmError("audit: timestamps must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(
    prev_hash: str, seq: int, at: str, event: str, policy: str | None, detail: dict[str, Any]
) -> str:
    """The hash of an entry with these fields (see the module docstring)."""
    body = {"seq": seq, "at": at, "event": event, "policy": policy, "detail": detail}
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_json(body)).hexdigest()


def head_mac(key: bytes, seq: int, hash: str) -> str:
    """HMAC-SHA256 (hex) that authenticates the head of the log: its last seq and hash."""
    message = _MAC_LABEL + f"{seq}\n{hash}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def head_message(seq: int, head_hash: str) -> bytes:
    """What the SPM signs with its TLS key to vouch for the head (seq, hash) it serves."""
    return f"{AUDIT_HEAD_DOMAIN}\n{seq}\n{head_hash}".encode()


def check_head_mac(key: bytes, seq: int, hash: str, mac: str | None) -> None:
    """Refuse with :class:`AuditError` unless ``mac`` authenticates the head (seq, hash)."""
    if mac is None:
        if seq == 0:
            return
        raise AuditError(
            f"audit: the head (entry {seq}) carries no MAC; the log was not written with "
            "the audit key or its MAC was removed"
        )
    if not hmac.compare_digest(head_mac(key, seq, hash), mac):
        raise AuditError(
            f"audit: the MAC of the head (entry {seq}) does not verify: the log was "
            "truncated or rewritten, or the audit key is wrong"
        )


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the log. ``detail`` is a JSON object; ``at`` is ISO-8601 UTC."""

    seq: int
    at: str
    event: str
    policy: str | None
    detail: dict[str, Any] = field(hash=False)
    prev_hash: str
    hash: str

    def computed_hash(self) -> str:
        """The hash this entry's content and ``prev_hash`` call for."""
        return entry_hash(self.prev_hash, self.seq, self.at, self.event, self.policy, self.detail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "event": self.event,
            "policy": self.policy,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, data: Any) -> AuditEntry:
        """Parse :meth:`to_dict` output (e.g. from ``GET /v1/audit``); AuditError if malformed."""
        if not isinstance(data, dict):
            raise AuditError("audit: an entry is not a JSON object")
        seq = data.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise AuditError(f"audit: an entry has an invalid seq {seq!r}")
        want = {"seq", "at", "event", "policy", "detail", "prev_hash", "hash"}
        if set(data) != want:
            raise AuditError(
                f"audit: entry {seq} is malformed (fields {sorted(data)}, expected {sorted(want)})"
            )
        at, event, policy, detail = data["at"], data["event"], data["policy"], data["detail"]
        prev_hash, hash_ = data["prev_hash"], data["hash"]
        if not isinstance(at, str) or not isinstance(event, str):
            raise AuditError(f"audit: entry {seq} is malformed (at and event must be strings)")
        if policy is not None and not isinstance(policy, str):
            raise AuditError(f"audit: entry {seq} is malformed (policy must be a string or null)")
        if not isinstance(detail, dict):
            raise AuditError(f"audit: entry {seq} is malformed (detail must be an object)")
        for name, value in (("prev_hash", prev_hash), ("hash", hash_)):
            if not isinstance(value, str) or not _HEX64.fullmatch(value):
                raise AuditError(f"audit: entry {seq} is malformed ({name} is not 64 hex digits)")
        return cls(seq, at, event, policy, detail, prev_hash, hash_)


def make_entry(
    prev: tuple[int, str],
    event: str,
    policy: str | None,
    detail: dict[str, Any],
    at: datetime | None = None,
) -> AuditEntry:
    """The entry that follows the head ``prev`` = (seq, hash); ``detail`` is normalised
    through canonical JSON so the entry equals what a reader parses back."""
    if not isinstance(detail, dict):
        raise SpmError("audit: detail must be a dict")
    try:
        text = canonical_json(detail)
        normal = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise SpmError(f"audit: detail is not JSON-serialisable ({exc})") from None
    if len(text) > MAX_DETAIL_CHARS:  # (bytes: at least as many as characters)
        raise SpmError(f"audit: a detail of {len(text)} bytes, at most {MAX_DETAIL_CHARS}")
    seq = prev[0] + 1
    stamp = format_time(at or datetime.now(UTC))
    digest = entry_hash(prev[1], seq, stamp, event, policy, normal)
    return AuditEntry(seq, stamp, event, policy, normal, prev[1], digest)


class ChainVerifier:
    """Verifies entries one at a time, in order (so a huge log streams through).

    ``start_hash``/``start_seq`` let a verifier pick up from a trusted earlier head;
    the default starts at the genesis. :meth:`finish` compares the end with the head.
    ``seen``: a head (seq, hash) its reader saw before (``secfl audit verify --seen``):
    the log must still hold that very entry, or it was rolled back.
    """

    def __init__(
        self,
        *,
        start_hash: str = GENESIS,
        start_seq: int | None = None,
        seen: tuple[int, str] | None = None,
    ) -> None:
        if not _HEX64.fullmatch(start_hash):
            raise AuditError("audit: the start hash is not 64 lowercase hex digits")
        self.seen = seen
        self.prev_hash = start_hash
        #: The seq the next entry must carry (None: whatever the first one says).
        self.expected: int | None = (
            start_seq if start_seq is not None else (1 if start_hash == GENESIS else None)
        )
        self.last_seq: int | None = None if self.expected is None else self.expected - 1
        self.count = 0

    def feed(self, entry: AuditEntry) -> None:
        seq = entry.seq
        if self.expected is not None and seq != self.expected:
            if seq > self.expected:
                raise AuditError(f"audit: entry {self.expected} is missing (found {seq})")
            raise AuditError(f"audit: entries out of order at {self.expected} (found {seq})")
        if not (_HEX64.fullmatch(entry.hash) and _HEX64.fullmatch(entry.prev_hash)):
            raise AuditError(f"audit: entry {seq} was modified (its hashes are not 64 hex digits)")
        try:
            computed = entry.computed_hash()
        except (TypeError, ValueError, RecursionError):  # nested past the stack too
            raise AuditError(f"audit: entry {seq} was modified (detail is not JSON)") from None
        if computed != entry.hash:
            raise AuditError(f"audit: entry {seq} was modified (its hash does not match)")
        if entry.prev_hash != self.prev_hash:
            if self.count == 0:
                raise AuditError(f"audit: entry {seq} does not chain to the start hash")
            raise AuditError(
                f"audit: entry {seq} does not chain to entry {seq - 1} (one of them was modified)"
            )
        if self.seen is not None and seq == self.seen[0] and entry.hash != self.seen[1]:
            raise AuditError(
                f"rollback: audit entry {seq} is not the one seen before (its hash is "
                f"{entry.hash[:16]}…, not {self.seen[1][:16]}…): the SPM's database was rolled "
                "back and written anew, or forked"
            )
        self.prev_hash = entry.hash
        self.last_seq = seq
        self.expected = seq + 1
        self.count += 1

    def finish(self, head: tuple[int, str] | None = None) -> int:
        """Check the end of the log against ``head`` (when given), and that it reached the
        head seen before (when given); return the count."""
        end = self.last_seq if self.last_seq is not None else (head[0] if head else 0)
        if self.seen is not None and end < self.seen[0]:
            raise AuditError(
                f"rollback: the audit log ends at entry {end}, but entry {self.seen[0]} was "
                "seen before: the SPM's database was rolled back"
            )
        if head is not None:
            head_seq, head_hash = head
            if self.last_seq is None:  # nothing fed, and the start seq was not given
                if self.prev_hash != head_hash:
                    raise AuditError(
                        f"audit: no entries after the start, but the head is {head_seq} "
                        "(entries removed)"
                    )
                return 0
            last = self.last_seq
            if last < head_seq:
                raise AuditError(
                    f"audit: the log ends at {last} but its head is {head_seq} (entries removed)"
                )
            if last > head_seq:
                raise AuditError(
                    f"audit: the log goes on to {last} past its head {head_seq} "
                    "(entries added without updating the head)"
                )
            if self.prev_hash != head_hash:
                raise AuditError(
                    f"audit: entry {last} does not match the head (the log was rewritten)"
                )
        return self.count


def verify_pages(
    since: Callable[[int, int], list[AuditEntry]],
    head: tuple[int, str],
    page: int = 1000,
    *,
    seen: tuple[int, str] | None = None,
) -> int:
    """Verify a whole log read a page at a time (``since(after, limit)``, which may
    return fewer than ``limit``: it ends with an empty page) against its ``head`` (and
    the head ``seen`` before, see :class:`ChainVerifier`); return the count. Memory
    holds one page, whatever the log's length."""
    verifier = ChainVerifier(seen=seen)
    last = 0
    while entries := since(last, page):
        for entry in entries:
            verifier.feed(entry)
        last = entries[-1].seq
    return verifier.finish(head)


def verify_chain(
    entries: Iterable[AuditEntry],
    *,
    start_hash: str = GENESIS,
    head: tuple[int, str] | None = None,
    start_seq: int | None = None,
) -> int:
    """Verify ``entries`` (in the order given) and return how many were verified.

    Raises :class:`AuditError` naming the first bad seq and why: a modified entry, a
    missing one, entries out of order, or a log that ends before ``head`` (removed
    tail) or does not match it (rewritten). ``start_hash`` (and ``start_seq``) let a
    verifier continue from a head it already trusts instead of the genesis.
    """
    items = list(entries)
    verifier = ChainVerifier(start_hash=start_hash, start_seq=start_seq)
    for i, entry in enumerate(items):
        expected = verifier.expected
        if (
            expected is not None
            and entry.seq > expected
            and any(e.seq == expected for e in items[i + 1 :])
        ):
            raise AuditError(f"audit: entries out of order at {expected} (found {entry.seq})")
        verifier.feed(entry)
    return verifier.finish(head)
