"""A committed round's hook (``on_round``: the SPM's round event) off the round loop.

Recording a round (:meth:`secfl.fl._aggregator.Aggregator._record`) ends with a call
to ``on_round``, which in production posts the round's event to the SPM over HTTPS
(:func:`secfl.fl._progress.round_reporter`): with rounds of tens of milliseconds that
call sat on the round loop's thread between the next round's opening and its
closing. :class:`InOrder` makes those calls in one worker thread instead, one after
the other in the order the rounds were recorded, so the round loop goes on at once.

Nothing about what the event says, or when it may be said, changes: a round reaches
:class:`InOrder` only once its counter is committed (the hook is called from the
same place as before), and the hook itself already turns a refusal or an unreachable
SPM into one warning. :meth:`InOrder.drain` waits for the calls still queued; the
aggregator drains before it tells collaborators training is over and before
:meth:`~secfl.fl._aggregator.Aggregator.run` returns or raises, so a finished run's
events are all in the SPM, as before. Only a process killed outright may leave the
event of its last committed round unposted (the round itself is committed and
resumes as such); the hook's failures were never more than a warning.
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
