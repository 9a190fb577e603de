"""Turns at reading a submitted policy document.

Anyone may submit a policy, and its document is read (pure-Python YAML: seconds of CPU
for the largest) before a signature can be checked. A few are read at a time, so a
flood cannot starve the SPM's other work. The rest wait their turn in order of arrival,
for a bounded time, in a bounded queue: answered "busy" at once, two slow submissions
a few seconds apart locked every board out of submitting, as any request that came
between them found both turns taken (a review). Waiting requests hold a worker thread
each, hence the queue's bound.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from secfl.errors import Refused

__all__ = ["ReadingTurns"]


class ReadingTurns:
    """At most ``readers`` documents read at once; up to ``waiting`` more wait in
    order of arrival, each for at most ``patience`` seconds; beyond that, 503."""

    def __init__(self, readers: int = 2, waiting: int = 8, patience: float = 30.0) -> None:
        self.readers, self.waiting, self.patience = readers, waiting, patience
        self._cond = threading.Condition()
        self._reading = 0
        self._queue: deque[object] = deque()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this request's turn, then read its document in the block."""
        with self._cond:
            if len(self._queue) >= self.waiting:
                raise Refused("busy: many policy documents are waiting to be read; try again", 503)
            ticket, mine = object(), False
            self._queue.append(ticket)
            try:
                mine = self._cond.wait_for(
                    lambda: self._queue[0] is ticket and self._reading < self.readers,
                    timeout=self.patience,
                )
            finally:
                if not mine:  # (or an exception): never left at the head, blocking the rest
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
