"""A committed round's hook (``on_round``) off the round loop.

Recording a round (:meth:`secfl.fl._aggregator.Aggregator._record`) ends with a call
to ``on_round`` when one is set (by a program embedding the aggregator; the SPM's
``fl.round`` needs no hook: it goes with the round's counter increment). A hook may
be slow, and with rounds of tens of milliseconds it would sit on the round
loop's thread between the next round's opening and its closing. :class:`InOrder`
makes those calls in one worker thread instead, one after the other in the order the
rounds were recorded, so the round loop goes on at once.

A round reaches :class:`InOrder` only once its counter is committed.
:meth:`InOrder.drain` waits for the calls still queued; the aggregator drains before
it tells collaborators training is over and before
:meth:`~secfl.fl._aggregator.Aggregator.run` returns or raises. Only a process killed
outright may leave its last committed round's hook uncalled (the round itself is
committed and resumes as such).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from secfl._internal.worker import Worker

__all__ = ["InOrder"]

log = logging.getLogger("secfl.fl._aggregator")


class InOrder:
    """``call(entry)`` for each :meth:`post`, in order, in one daemon thread started on
    first use; an exception from ``call`` is logged (one line) and the next goes on."""

    def __init__(self, call: Callable[[dict[str, Any]], None]) -> None:
        self._call = call
        self._worker = Worker("secfl-round-events")

    def post(self, entry: dict[str, Any]) -> None:
        self._worker.submit(lambda: self._deliver(entry))

    def drain(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout`` seconds; None: no limit) until every posted entry
        was handed to ``call``; False if some are still queued."""
        return self._worker.drain(timeout)

    def close(self) -> None:
        """No more posts: the thread ends once the posted entries are delivered."""
        self._worker.close()

    def _deliver(self, entry: dict[str, Any]) -> None:
        try:
            self._call(entry)
        except Exception as exc:  # a hook's bug must not stop the events after it
            log.warning("round %s: the round hook failed: %s", entry.get("round"), exc)
