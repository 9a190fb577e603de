"""The round whose evaluation and commit run beside the next round, until it is recorded.

With a slow ledger (the SPM) or checkpoints on disk, the aggregator hands a round's
commit to a background thread (:meth:`Commit.begin`; why that is safe:
:mod:`secfl.fl._commit`) and goes on with the next round. The round's evaluation
runs first in that thread, once the next round's models are out (or after
:data:`DISPATCH_GRACE`), so neither takes CPU from the models on their way. The
round is recorded only once its counter is committed: :meth:`PendingRound.settle`
waits for that under :func:`~secfl._internal.interrupts.held` (a Ctrl-C never
separates a committed round from its record), but does not hold a Ctrl-C during the
evaluation, which is task code and may take any time: a stopping aggregator waits
for it at most :data:`STOP_GRACE`, then gives the round up before its checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from secfl._internal.buffers import Frozen
from secfl._internal.interrupts import held
from secfl.errors import FlError
from secfl.fl._commit import Commit, RoundEvent
from secfl.fl._phases import ms

__all__ = ["DISPATCH_GRACE", "STOP_GRACE", "PendingRound"]

log = logging.getLogger("secfl.fl._aggregator")

#: How long a round's evaluation and commit wait for the next round's models to go
#: out (seconds): on a small model they would slow its dispatch, a large model's
#: dispatch takes longer than this and shares the CPU with them, as before.
DISPATCH_GRACE = 0.25
#: How long a stopping aggregator waits for a round's evaluation before it gives the
#: round up (seconds): see :meth:`PendingRound.settle`.
STOP_GRACE = 10.0

#: (round, counter, entry, phases): the round is committed, record it.
Record = Callable[[int, int, dict[str, Any], dict[str, float]], None]


class PendingRound:
    """At most one round between :meth:`begin` and its record (one round loop drives
    it; the commit's thread only runs the evaluation and the commit)."""

    def __init__(self, commit: Commit, record: Record) -> None:
        self.commit = commit
        self._record = record
        self._go: threading.Event | None = None  # set: the next round's models are out
        self._waiting: tuple[int, dict[str, Any], dict[str, float]] | None = None

    @property
    def round(self) -> int | None:
        """The round waiting to be recorded, if any."""
        return None if self._waiting is None else self._waiting[0]

    @property
    def waits_for_dispatch(self) -> bool:
        """Whether a commit waits for the next round's models (see :meth:`dispatched`)."""
        return self._go is not None

    def begin(
        self,
        round: int,
        model_bytes: Frozen,
        state: dict[str, Any],
        entry: dict[str, Any],
        phases: dict[str, float],
        *,
        score: Callable[[], Mapping[str, Any]],
        event: RoundEvent | None,
    ) -> None:
        """Evaluate (``score()``: fills ``entry`` in, returns the scores' state for the
        checkpoint) and commit ``round``: here without overlap, else in the commit's
        thread once :meth:`dispatched` (or :data:`DISPATCH_GRACE` passed)."""
        go = self._go = threading.Event() if self.commit.overlap else None

        def evaluate() -> Mapping[str, Any]:
            if go is not None:
                go.wait(DISPATCH_GRACE)
            began = time.monotonic()
            extra = score()
            phases["evaluate"] = ms(time.monotonic() - began)
            return extra

        self._waiting = (round, entry, phases)
        try:
            self.commit.begin(round, model_bytes, state, event=event, prepare=evaluate)
        except BaseException:
            if not self.commit.pending:  # evaluated or committed here, and it failed
                self._waiting = None
            raise
        if not self.commit.overlap:
            self.settle()

    def dispatched(self) -> None:
        """The next round's models are out: the commit waits for nothing more."""
        if self._go is not None:
            self._go.set()
            self._go = None

    def settle(self, *, stopping: bool = False) -> None:
        """Wait for the pending commit, then record its round. A Ctrl-C is held until
        both are done: a round whose counter is committed is always recorded (metrics,
        round event, ``sealed``), or a restart resumes after a round the record lacks.
        The round's evaluation before it is not held (task code: it may take any time):
        on a Ctrl-C, or ``stopping`` (on the way out), it gets a bounded wait."""
        self.dispatched()
        waiting = self._waiting
        if waiting is None:
            return
        if stopping:
            self._finish_or_give_up(waiting)
            return
        try:
            self.commit.wait_begun()  # the evaluation: a Ctrl-C does not wait for it...
        except KeyboardInterrupt:
            self._finish_or_give_up(waiting)  # ...longer than STOP_GRACE
            raise
        with held():
            self._settle_held(*waiting)

    def _finish_or_give_up(self, waiting: tuple[int, dict[str, Any], dict[str, float]]) -> None:
        """On the way out: the pending commit gets :data:`STOP_GRACE` seconds to finish
        its evaluation and begin, and is then recorded. The next round's models went
        out with its counter, which the collaborators took as their floor: given up, a
        restart would send them an older one, and they would stop. Past the grace (a
        hung ``evaluate``) it is given up, and the aggregator still stops."""
        if self.commit.wait_begun(STOP_GRACE) or not self.commit.cancel():
            with held():
                self._settle_held(*waiting)
            return
        self._waiting = None
        log.warning(
            "round %d: its evaluation did not end within %.0f s of the stop: not committed; "
            "collaborators that took the next round's model stop when the restarted "
            "aggregator sends them another: start them again", waiting[0], STOP_GRACE,
        )  # fmt: skip

    def _settle_held(self, round: int, entry: dict[str, Any], phases: dict[str, float]) -> None:
        began = time.monotonic()
        try:
            value = self.commit.settle()
        except KeyboardInterrupt:  # not held (no interrupt_once): settled on the way out
            raise
        except BaseException:
            self._waiting = None  # the commit failed: there is nothing to record
            raise
        self._waiting = None
        if value is None:  # a caller's bug: recording it would claim a commit
            raise FlError(f"checkpoint: round {round} has no commit to wait for")
        phases.update(self.commit.phases)
        phases["commit_wait"] = ms(time.monotonic() - began)
        self._record(round, value, entry, phases)
