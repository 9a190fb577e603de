"""The matching entries of a whole audit log, oldest first, in bounded memory.

A hash chain authenticates backwards from its head (see :mod:`secfl.spm._audit_read`),
but people read a log forwards, oldest first: ``secfl audit show --limit 0`` held
every matching entry of the log in memory until the walk back reached the first
(gigabytes for a long log of large entries), and only then printed them. Here the
log is read twice instead: the first walk back verifies every window and remembers
the windows that hold a matching entry (their bounds and the hash of their newest
entry, which that walk authenticated); the second reads those windows again, oldest
first, each verified anew against the hash remembered, and yields its matching
entries. Memory holds one page of the source and a few numbers a window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from secfl.spm._audit import AuditEntry
from secfl.spm._audit_read import PAGE, AuditSource, Head, walk_back

__all__ = ["PAGE", "Window", "matching_windows", "oldest_first"]


@dataclass(frozen=True)
class Window:
    """Entries ``after`` + 1 to ``upto`` (whose hash is ``upto_hash``, authenticated),
    of which the ``matches`` newest matching ones are shown."""

    after: int
    upto: int
    upto_hash: str
    matches: int


def matching_windows(
    source: AuditSource,
    head: Head,
    limit: int | None,
    match: Callable[[AuditEntry], bool],
    seen: Callable[[AuditEntry], object] = lambda entry: None,
) -> list[Window]:
    """The first pass: the windows (newest first) holding the newest ``limit`` entries
    that ``match`` (all of them, with ``None``), every window back to the oldest of
    them verified from ``head``; ``seen`` is called with each of those entries."""
    windows: list[Window] = []
    wanted = limit
    for window in walk_back(source, head, page=PAGE):
        found = 0
        for entry in reversed(window):
            if wanted is not None and found == wanted:
                break
            if match(entry):
                seen(entry)
                found += 1
        if wanted is not None:
            wanted -= found
        if found:
            last = window[-1]
            windows.append(Window(window[0].seq - 1, last.seq, last.hash, found))
        if wanted == 0:
            break
    return windows


def oldest_first(
    source: AuditSource, windows: list[Window], match: Callable[[AuditEntry], bool]
) -> Iterator[list[AuditEntry]]:
    """The second pass: each of ``windows`` (as :func:`matching_windows` gave them) read
    again, oldest first, verified back from its newest entry's authenticated hash; its
    matching entries, ascending (the log changed in between: an :class:`AuditError`)."""
    for w in reversed(windows):
        parts = list(walk_back(source, (w.upto, w.upto_hash), most=w.upto - w.after))
        entries = [entry for part in reversed(parts) for entry in part if match(entry)]
        yield entries[len(entries) - w.matches :]
