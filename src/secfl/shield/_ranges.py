"""Handing out the chunks of one range read to the threads that decrypt them.

A read of many whole chunks (:meth:`secfl.shield._parallel.Pipeline.decrypt_chunks`)
splits them into one contiguous range per thread; :class:`Ranges` is the state the
threads share: which chunk each takes next, the lowest chunk that failed (the error
the sequential path would raise), and how many chunks helpers are still writing
into the caller's buffer, so that the read returns or raises only once none is.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Final

__all__ = ["Ranges"]

_NOTHING: Final = memoryview(b"")


class Ranges:
    """The chunks of one range read, handed out to its threads.

    Chunks ``[first, end)`` are split into one contiguous range per thread. A
    thread takes its own range from the front, then chunks from the back of the
    largest range left. After a chunk fails, no chunk above it is handed out (those
    below still are: the lowest failure is the one the sequential path raises).
    """

    def __init__(self, first: int, end: int, parts: int, out: memoryview):
        count = end - first
        bounds = [first + count * k // parts for k in range(parts + 1)]
        self.front, self.back = bounds[:-1], bounds[1:]
        self.first = first
        self.out = out  # the caller's buffer; dropped once the read is over
        self.failed = end
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        #: Chunks a helper (a part other than 0, the reader's) took and has not finished.
        self._busy = 0

    def next(self, part: int) -> int | None:
        with self._lock:
            front, back = self.front, self.back
            if front[part] >= back[part]:
                mine = part
                part = max(range(len(front)), key=lambda p: back[p] - front[p])
                if front[part] >= back[part]:
                    return None
                back[part] -= 1
                self._busy += mine != 0
                return back[part]
            front[part] += 1
            self._busy += part != 0
            return front[part] - 1

    def done(self) -> None:
        """A helper finished the chunk :meth:`next` gave it."""
        with self._lock:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    def settle(self, helpers: list[Future[None]]) -> None:
        """Hand out no more chunks, and return once no helper writes into ``out``: a
        helper still queued is cancelled (it would find nothing to do), one at work is
        waited for. A Ctrl-C meanwhile is raised once that holds: a reader that wipes
        its buffer when the read raises must find no thread still writing into it. The
        helpers are counted by the chunks they took, not by ``helpers``, which an
        interrupt may have left one short (between submitting and listing it)."""
        interrupted: BaseException | None = None
        while True:
            try:
                self.stop()
                for helper in helpers:
                    helper.cancel()
                with self._idle:
                    while self._busy:
                        self._idle.wait()
                self.out = _NOTHING  # a queued, cancelled helper keeps no view of ``out``
                break
            except BaseException as exc:  # KeyboardInterrupt, SystemExit from a handler
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted

    def fail(self, chunk: int, error: BaseException) -> None:
        with self._lock:
            if chunk < self.failed:
                self.failed, self.error = chunk, error
                self.back = [min(b, chunk) for b in self.back]

    def stop(self) -> None:
        """Hand out no more chunks (the reader gives up: an interrupt)."""
        with self._lock:
            self.back = list(self.front)
