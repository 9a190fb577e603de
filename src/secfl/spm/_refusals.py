"""How many refusals anyone may write into the audit log.

Every refusal is audited, and the log is kept for ever and replayed at every start.
Some refusals cost their sender nothing: an attestation with no genuine nonce or
evidence that does not verify, a policy, or a revocation, that no board signed. One
client on loopback wrote 2,000 such entries in 5 s; a day of that is gigabytes of log
and minutes of start-up. :class:`RefusalBudget` lets :data:`PER_WINDOW` of each kind
into the log one by one every :data:`WINDOW` seconds and counts the rest; the next
entry let in is preceded by ``audit.suppressed`` (the refused event, how many were
left out), and so is a stopping SPM's log (:meth:`RefusalBudget.flush`). Refusals
after a genuine quote or a valid board signature are always written one by one.

A quote that verifies but is of other code, or not bound to its nonce, costs little
more: one captured quote, replayed with a fresh nonce each time, was written one
entry per request. Such refusals have a budget of their own (a *lane*), so a flood of
junk does not hide them, nor they the junk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from secfl.spm._tx import Tx

__all__ = ["LANES", "PER_WINDOW", "WINDOW", "RefusalBudget"]

#: Unverified refusals of one kind written one by one per window.
PER_WINDOW = 30
#: Seconds of a window.
WINDOW = 60.0
#: The budgets of each event, and what ``audit.suppressed`` says of what each left out.
LANES = {
    "unverified": "unverified refusals over budget",
    "evidence": "refusals of evidence that verified (of other code, or not bound to "
    "its nonce) over budget",
}


class RefusalBudget:
    """Decides which unverified refusals go into the audit log (module docstring)."""

    def __init__(
        self,
        per_window: int = PER_WINDOW,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_window = per_window
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        #: (event, lane) -> (window start, written in it, left out since the last written)
        self._state: dict[tuple[str, str], tuple[float, int, int]] = {}

    def append(
        self,
        tx: Tx,
        event: str,
        policy: str | None,
        detail: dict[str, Any],
        *,
        lane: str = "unverified",
    ) -> bool:
        """Write the refusal ``event`` in ``tx``, unless this window's budget for it (in
        ``lane``, one of :data:`LANES`) is spent (then count it); whether it was written."""
        if lane not in LANES:
            raise ValueError(f"no refusal lane {lane!r}")
        now, key = self.clock(), (event, lane)
        with self._lock:
            start, written, left_out = self._state.get(key, (now, 0, 0))
            if now - start >= self.window:
                start, written = now, 0
            if written >= self.per_window:
                self._state[key] = (start, written, left_out + 1)
                return False
            self._state[key] = (start, written + 1, 0)
        if left_out:
            _suppressed(tx, key, left_out)
        tx.audit.append(event, policy, detail)
        return True

    def flush(self, tx: Tx) -> int:
        """Write what was left out and not yet told (the SPM stops); how many entries."""
        with self._lock:
            told = {key: left for key, (_, _, left) in self._state.items() if left}
            self._state = {k: (start, n, 0) for k, (start, n, _) in self._state.items()}
        for key, left_out in sorted(told.items()):
            _suppressed(tx, key, left_out)
        return len(told)


def _suppressed(tx: Tx, key: tuple[str, str], count: int) -> None:
    event, lane = key
    tx.audit.append(
        "audit.suppressed", None, {"event": event, "count": count, "reason": LANES[lane]}
    )
