"""Turns at reading a submitted policy document.

Anyone may submit a policy, and its document is read (pure-Python YAML: seconds of CPU
for the largest) before a signature can be checked. A few are read at a time, so a
flood cannot starve the SPM's other work. The rest wait their turn in order of arrival,
for a bounded time, in a bounded queue: answered "busy" at once, two slow submissions
a few seconds apart locked every board out of submitting, as any request that came
between them found both turns taken (a review). Waiting requests hold a worker thread
each, hence the queue's bound.

A full queue is shared fairly between the addresses it serves: a request from an
address with nothing waiting takes the place of the newest one of the address with
the most waiting, so one sender's many connections cannot keep every other sender out
(the review of the queue: twelve of them did). Senders behind one address (a NAT, a
TCP proxy) share its places.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager

from secfl.errors import Refused

__all__ = ["ReadingTurns"]


class _Ticket:
    __slots__ = ("evicted", "peer")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.evicted = False


class ReadingTurns:
    """At most ``readers`` documents read at once; up to ``waiting`` more wait in
    order of arrival, each for at most ``patience`` seconds; beyond that, 503."""

    def __init__(self, readers: int = 2, waiting: int = 8, patience: float = 20.0) -> None:
        self.readers, self.waiting, self.patience = readers, waiting, patience
        self._cond = threading.Condition()
        self._reading = 0
        self._queue: deque[_Ticket] = deque()

    @contextmanager
    def turn(self, peer: str = "") -> Iterator[None]:
        """Wait for this request's turn (``peer``: the address it came from), then read
        its document in the block."""
        with self._cond:
            if len(self._queue) >= self.waiting and not self._evict_for(peer):
                raise Refused("busy: many policy documents are waiting to be read; try again", 503)
            ticket, mine = _Ticket(peer), False
            self._queue.append(ticket)
            try:
                mine = self._cond.wait_for(
                    lambda: (
                        ticket.evicted
                        or (self._queue[0] is ticket and self._reading < self.readers)
                    ),
                    timeout=self.patience,
                )
                mine = bool(mine) and not ticket.evicted
            finally:
                if not mine:  # (or an exception): never left at the head, blocking the rest
                    if not ticket.evicted:
                        self._queue.remove(ticket)
                    self._cond.notify_all()
            if not mine:
                raise Refused("busy: other policy documents are being read; try again", 503)
            self._queue.popleft()
            self._reading += 1
            self._cond.notify_all()  # the next in line may have a free turn too
        try:
            yield
        finally:
            with self._cond:
                self._reading -= 1
                self._cond.notify_all()

    def _evict_for(self, peer: str) -> bool:
        """Make room for ``peer`` in the full queue if it has nothing waiting and
        another address has two or more; whether it did (caller holds the lock)."""
        waiting = Counter(t.peer for t in self._queue)
        if waiting[peer]:
            return False
        crowd, count = waiting.most_common(1)[0]
        if count < 2:
            return False
        newest = next(t for t in reversed(self._queue) if t.peer == crowd)
        newest.evicted = True
        self._queue.remove(newest)
        self._cond.notify_all()
        return True
