"""Turns at reading a submitted policy document.

Anyone may submit a policy, and its document is read (pure-Python YAML: seconds of CPU
for the largest) before a signature can be checked. A few are read at a time, so a
flood cannot starve the SPM's other work. The rest wait their turn in order of arrival,
for a bounded time, in a bounded queue: answered "busy" at once, two slow submissions
a few seconds apart locked every board out of submitting, as any request that came
between them found both turns taken (a review). Waiting requests hold a worker thread
each, hence the queue's bound.

A full queue is shared between the addresses it serves: a request from an address
with nothing waiting takes the place of the newest one of an address holding half the
queue or more, so one sender's many connections cannot keep every other sender out
(the review of the queue: twelve of them did), and a few honest requests behind one
NAT are not pushed out by a newcomer. An IPv6 /64 counts as one address (one host
commonly has all of it). Senders with many addresses can still fill the queue.
"""

from __future__ import annotations

import ipaddress
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
        peer = _address_group(peer)
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
        another address holds half the queue or more; whether it did (caller holds
        the lock)."""
        waiting = Counter(t.peer for t in self._queue)
        if waiting[peer]:
            return False
        crowd, count = waiting.most_common(1)[0]
        if count < max(2, self.waiting // 2):
            return False
        newest = next(t for t in reversed(self._queue) if t.peer == crowd)
        newest.evicted = True
        self._queue.remove(newest)
        self._cond.notify_all()
        return True


def _address_group(peer: str) -> str:
    """The address a request counts under: an IPv6 address's /64, else the address."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
