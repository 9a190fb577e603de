"""Repeated log lines, rate-limited: a waiting process must not flood its log.

A collaborator that waits for its aggregator, or an aggregator that refuses the
calls of a collaborator that has not joined again yet, would otherwise write the
same line every second or two for as long as the wait lasts. :class:`RepeatFilter`
lets a line through the first time, drops identical ones (same logger, level and
text) for ``interval`` seconds, and says how many it dropped when the line comes
through again: ``... (repeated 14 times since it was last shown)``.

It is a :class:`logging.Filter` for *handlers* (a filter on a logger does not see
what that logger's children log). It remembers at most ``capacity`` distinct lines,
forgetting the least recently seen, so that varied messages cannot grow it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["DEFAULT_INTERVAL", "RepeatFilter", "install"]

#: Seconds during which an identical line is shown once.
DEFAULT_INTERVAL = 30.0


class RepeatFilter(logging.Filter):
    """Shows an identical line at most once per ``interval`` seconds, with a count of
    the repeats it held back."""

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        *,
        capacity: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not interval > 0 or capacity < 1:
            raise ValueError("the interval must be positive and the capacity at least 1")
        self.interval = interval
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        #: (logger, level, text) -> [when it was last shown, repeats held back since]
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: let the handler report it as usual
            return True
        key = (record.name, record.levelno, text)
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                self._seen.move_to_end(key)
                return False
            held = int(entry[1]) if entry is not None else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
        if held:
            record.msg = f"{text} (repeated {held} times since it was last shown)"
            record.args = None
        return True


def install(handlers: list[logging.Handler], interval: float = DEFAULT_INTERVAL) -> None:
    """Put one :class:`RepeatFilter` on each of ``handlers`` (once: a handler that has
    one already keeps it)."""
    for handler in handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter(interval))
