"""Each round made durable and fresh: a sealed checkpoint, then the SPM counter.

The order (see :mod:`secfl.fl._checkpoint_dir`): write the checkpoint of round ``r``
with counter ``c + 1``, increment the SPM counter (it must answer ``c + 1``, or
another aggregator is running for this policy), and only then sign and send the
model with ``(r, c + 1)``. A restart resumes from the checkpoint whose counter
equals the SPM's (of this run; a new policy version starts a new run:
:mod:`secfl.fl._runs`); an older one is a rollback and refused, unless the board
signed a reset for exactly that state (:mod:`secfl.fl._reset`).

Overlapped with the next round (:meth:`Commit.begin`, then :meth:`Commit.settle`).
With a slow ledger (the SPM, over HTTPS) or checkpoints on disk, the aggregator
hands the commit of round ``r`` to a background thread, which does exactly the
steps above in the same order (checkpoint, fsync, read the counter, increment),
and meanwhile signs the model with ``(r, c + 1)`` and sends it. It waits for the
commit once the next round's models are out and records round ``r`` (metrics line,
the SPM's round event, ``sealed``) only once the SPM answered ``c + 1``; the final
model is written and collaborators told "done" only after the last commit. If the
commit fails, the aggregator closes the round and stops, as it would have before
sending. Why this keeps the freshness guarantees:

- the aggregator's own state is untouched: the checkpoint is still durable before
  the counter moves, and a restart still resumes only from the checkpoint whose
  counter equals the SPM's;
- a collaborator may now receive, and train on, a model ``(r, c + 1)`` whose
  counter never moved (the aggregator crashed, or another aggregator of the policy
  moved the counter first). Nothing of that training reaches a committed model:
  the update is addressed to this aggregator process's attempt (a random epoch, a
  round, an attempt number), and this process either commits ``c + 1`` first or
  never commits again, while a restarted or other aggregator refuses the update
  (``protocol: no open round``). The collaborator's replay floor does not move
  past anything committed either: the next committed model carries a counter above
  ``c``, and a model ``(r, c + 1)`` made again after a restart is accepted when it
  is the same one and refused otherwise (the collaborator stops and is started
  again with the SPM's counter as its floor: availability, never a rollback);
- nobody outside a TEE sees a model or a metric before its counter is committed:
  the model goes only to attested collaborators, the metrics line, the round
  event and the final model wait for the SPM's answer.

So the models and metrics anyone can see, and the state a restart resumes from,
are exactly those of the sequential order; only a collaborator's work on a round
that never commits is lost, as an update in flight is lost when an aggregator
crashes today.

The checkpoint's fsyncs beside the counter. :meth:`Commit.commit` writes the sealed
checkpoint whole and renames it into place *before* it reads and increments the
counter, as above, but fsyncs it (file, then folder) in a thread while the SPM calls
are under way, and returns (so the round is recorded) only once both are done. What
proves freshness is the SPM's counter, not the disk: a checkpoint is resumed from
only when its authenticated counter equals the SPM's, so nothing on the disk, synced
or not, can make a restart accept an older state. And nothing committed is lost:

- a crash of the aggregator (kill -9, an error, Ctrl-C) at any moment after the
  increment finds the new checkpoint in place: the rename happened before the
  increment, and a file's written pages belong to the kernel, not to the process
  (``tests/fl/test_commit_crash.py`` kills it right after the increment and resumes);
- only a power loss or a kernel crash in the few milliseconds between the increment
  and the fsync's end can leave the SPM at ``c + 1`` with no durable checkpoint
  ``c + 1``. The restart then refuses to resume (a checkpoint older than the SPM's
  counter is a rollback, and a torn file ``c + 1`` does not open: both fail closed)
  until the operator sets such a torn file aside and the board signs a reset, which
  resumes from round ``r - 1`` with the counter moving on from ``c + 1``. Round
  ``r`` was not committed in anyone's eyes: it is recorded (metrics, the SPM's round
  event, ``sealed``, the final model, "done") only after the fsync, and its model
  went only to attested collaborators, as above. The cost is availability after a
  power loss in that window, never a rollback and never a round anyone saw.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from secfl._internal import interrupts
from secfl._internal.buffers import Frozen, frozen
from secfl._internal.worker import Worker
from secfl.errors import CounterMoved, FlError
from secfl.fl._checkpoint import SyncInBackground, write_checkpoint
from secfl.fl._checkpoint_dir import prune_checkpoints
from secfl.fl._checkpoint_names import new_request
from secfl.fl._ledger import Ledger, MemoryLedger, SpmLedger, new_version
from secfl.fl._phases import ms
from secfl.fl._runs import ResumePoint, find_resume_point, reset_point

__all__ = ["Commit", "Ledger", "MemoryLedger", "SpmLedger", "new_version"]

log = logging.getLogger("secfl.fl._aggregator")


#: The round's ``fl.round`` detail at a counter value (see :meth:`Commit.begin`).
RoundEvent = Callable[[int], dict[str, Any]]


class Commit:
    """Checkpoints in ``directory`` (``None``: none) tied to ``ledger``."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        directory: Path | None,
        key: bytes | None,
        policy_digest: str,
        keep: int = 2,
        overlap: bool | None = None,
    ) -> None:
        if directory is not None and key is None:
            raise FlError("checkpoint: a checkpoint directory needs a checkpoint key")
        self.ledger = ledger
        self.directory = directory
        self.key = key
        self.policy_digest = policy_digest
        self.keep = keep
        self.counter = 0
        #: The name of the increment that committed ``counter`` (None: unnamed, or none).
        self.request: str | None = None
        #: Counter values this aggregator knows committed, with their increments' names
        #: (the last few): pruning keeps those files and deletes the forks beside them.
        self._known: dict[int, str | None] = {}
        #: The runs (policy digests) whose files pruning may delete: this run's, and the
        #: run a resume authenticated a checkpoint of (the one before it). Another
        #: federation's files in a shared folder are never this aggregator's to delete.
        self._runs: set[str] = {policy_digest}
        #: Commit in the background while the next round starts (default: when the
        #: ledger is not in memory or checkpoints go to disk: when it is slow).
        self.overlap = (
            overlap
            if overlap is not None
            else directory is not None or not isinstance(ledger, MemoryLedger)
        )
        #: Milliseconds of the last commit's steps (``checkpoint``: sealed and in place;
        #: then, side by side, ``counter`` (read and incremented) and ``fsync``; ``commit``).
        self.phases: dict[str, float] = {}
        self._pending: threading.Event | None = None
        self._files = threading.RLock()
        # one thread each for the whole run, not one a round (secfl._internal.worker)
        self._worker = Worker("secfl-commit")
        self._syncer = Worker("secfl-fsync")
        self._promised = 0
        self._outcome: int | BaseException | None = None
        self._gate = threading.Lock()  # a cancel against the commit's first step
        self._cancelled: list[bool] = [False]  # the pending commit's (each has its own)
        self._begun: threading.Event | None = None

    def resume(self, *, reset_from: int | None = None, previous: bool = False) -> ResumePoint:
        """Where this run goes on from (see :mod:`secfl.fl._runs`; the policy digest
        names the run).

        ``reset_from`` is the SPM counter value a board-approved reset names: the
        newest checkpoint of this run at or below it is accepted (or a fresh start
        when there is none: with ``previous``, the policy's ``start_from: previous``,
        after an earlier run's newest committed checkpoint), and the next commit moves
        the counter on from the SPM's value.
        """
        spm, request = self.ledger.committed()
        self.counter = spm
        self.request = request
        self._known = {spm: request} if spm else {}
        if self.directory is None:
            if spm and reset_from is None:
                log.warning("no checkpoints (counter at %d): starting from round 0", spm)
            return ResumePoint(spm)
        assert self.key is not None
        if reset_from is not None:
            if reset_from != spm:
                raise FlError(
                    f"reset: the board approved a reset at counter {reset_from}, the SPM's "
                    f"counter is {spm}: have the board sign a new reset with --value {spm}"
                )
            point = reset_point(
                self.directory, key=self.key, run=self.policy_digest, committed=(spm, request),
                request_at=self.ledger.request_at, previous=previous,
            )  # fmt: skip
        else:
            point = find_resume_point(
                self.directory, key=self.key, run=self.policy_digest, counter=spm, request=request
            )
        for found in (point.checkpoint, point.previous):
            if found is not None:  # opened with this policy's key: one of its runs
                self._runs.add(found.policy_digest)
        return point

    def commit(
        self,
        round: int,
        params_bytes: Frozen,
        state: dict[str, Any],
        *,
        prune: bool = True,
        event: RoundEvent | None = None,
    ) -> int:
        """Make ``round`` durable and fresh; returns the new counter value.

        The counter is incremented only from the value this aggregator committed last
        (a compare-and-increment in one SPM request): if another aggregator of the
        policy moved it (an old one still running when the board approved a new
        version, or a second copy), this one stops *without* incrementing, so that
        the value it would have taken is not burnt and the other's checkpoint stays
        the newest committed state (nobody needs a reset). ``prune=False`` leaves the
        old checkpoints to :meth:`prune` (the overlapped commit prunes after it settled)."""
        with self._files:  # an overlapped commit's pruning is over first
            return self._commit(round, params_bytes, state, prune=prune, event=event)

    def _commit(
        self,
        round: int,
        params_bytes: Frozen,
        state: dict[str, Any],
        *,
        prune: bool,
        event: RoundEvent | None,
    ) -> int:
        began = time.monotonic()
        target = self.counter + 1
        # the increment's name, in the checkpoint too: of two aggregators forked from
        # one state, the SPM says whose checkpoint at ``target`` it committed
        request = new_request()
        syncing: SyncInBackground | None = None
        if self.directory is not None:
            assert self.key is not None
            path = write_checkpoint(
                self.directory, key=self.key, policy_digest=self.policy_digest,
                round=round, counter=target, params_bytes=params_bytes, state=state,
                durable=False, request=request,
            )  # fmt: skip
        sealed = time.monotonic()  # (before the fsync thread starts: it may end first)
        if self.directory is not None:
            # in place under its name now: fsynced while the counter moves (module doc)
            syncing = SyncInBackground(path, self._syncer)
        value = self._increment(round, target, event, request)  # (failed: the fsync ends)
        counted = time.monotonic()
        synced = syncing.wait() if syncing is not None else sealed
        self.counter, self.request = value, request
        self._known[value] = request
        for old in sorted(self._known)[: -(self.keep + 1)]:
            del self._known[old]
        if prune:
            self.prune()
        self.phases = {
            "checkpoint": ms(sealed - began),
            "counter": ms(counted - sealed),
            "fsync": ms(synced - sealed),
            "commit": ms(time.monotonic() - began),
        }
        return value

    def prune(self) -> None:
        """All but the ``keep`` newest checkpoints deleted (the newest is the committed
        one or a newer, uncommitted one: never the one a restart needs)."""
        if self.directory is not None:
            with self._files:  # never beside a commit: its new file is not committed yet
                prune_checkpoints(self.directory, keep=self.keep, committed=dict(self._known),
                                  runs=frozenset(self._runs))  # fmt: skip

    def _increment(self, round: int, target: int, event: RoundEvent | None, request: str) -> int:
        """The counter moved from the value this aggregator committed last to ``target``,
        in one compare-and-increment: a counter another aggregator moved is left as it is."""
        records = getattr(self.ledger, "increment_round", None)
        try:
            if event is not None and records is not None:
                value = int(records(self.counter, event(target), request=request))
            else:
                value = self.ledger.increment(expect=self.counter, request=request)
        except CounterMoved as exc:
            seen = f"is {exc.seen}" if exc.seen is not None else "moved"
            raise FlError(
                f"counter: the SPM's counter {seen}, this aggregator committed "
                f"{self.counter} last: another aggregator of this policy is running; round "
                f"{round} is not committed; stop the other one, then start this one again"
            ) from None
        if value != target:
            raise FlError(
                f"counter: the SPM answered {value}, expected {target}: another aggregator "
                "incremented this policy's counter at the same moment; stop every other "
                "aggregator of this policy, then start this one again (if it refuses a "
                f"rollback, the board signs a reset with --value {value})"
            )
        return value

    # --- overlapped with the next round (see the module's docstring) ---------------------

    @property
    def promised(self) -> int:
        """The counter value the next model is signed with: the pending commit's."""
        return self._promised if self._pending is not None else self.counter

    def begin(
        self,
        round: int,
        params_bytes: Frozen,
        state: dict[str, Any],
        *,
        event: RoundEvent | None = None,
        prepare: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """:meth:`commit` in a background thread (or here, without ``overlap``); the
        caller sends nothing derived from this round's counter to anyone outside a TEE
        before :meth:`settle` returns. ``event(counter)`` is the round's ``fl.round``
        detail, which a ledger that can (the SPM's) logs with the increment.
        ``prepare()`` runs first, in the same thread, and what it returns joins
        ``state``: the round's evaluation, which then takes nothing from the next
        round's path (an error it raises fails the commit, before any step of it)."""
        if self._pending is not None:
            raise FlError("checkpoint: a commit is still pending")  # a caller's bug
        if not self.overlap:
            extra = prepare() if prepare is not None else {}
            self._outcome = self.commit(round, params_bytes, {**state, **extra}, event=event)
            return
        # the round loop goes on meanwhile: the thread gets what nothing can change
        params_bytes = frozen(params_bytes)  # (no second copy of a model nothing writes)
        state = copy.deepcopy(state)

        finished, begun = threading.Event(), threading.Event()
        cancelled = [False]  # this commit's: a later begin() does not un-cancel it

        def work() -> None:
            outcome: int | BaseException
            try:
                full = {**state, **prepare()} if prepare is not None else state
                with self._gate:
                    if cancelled[0]:  # the caller stopped before its first step
                        return
                    begun.set()
                outcome = self.commit(round, params_bytes, full, prune=False, event=event)
            except BaseException as exc:  # handed to settle(), raised in the round loop
                outcome = exc
            finally:
                begun.set()
            self._outcome = outcome
            finished.set()  # the round can be recorded: pruning is off its path
            if not isinstance(outcome, BaseException):
                try:
                    self.prune()
                except (OSError, FlError) as exc:
                    log.warning("checkpoint: old checkpoints not pruned: %s", exc)

        self._outcome = None
        self._cancelled = cancelled
        self._promised = self.counter + 1  # read before the thread can move self.counter
        self._worker.submit(work)
        self._pending, self._begun = finished, begun

    @property
    def pending(self) -> bool:
        """Whether a commit :meth:`begin` started awaits :meth:`settle`."""
        return self._pending is not None

    def wait_begun(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds) until the pending commit's preparation is
        over: its first step is under way (it will end within the SPM's answer), or it
        already ended; False if it is still preparing. Interruptible: the preparation
        (the round's evaluation, task code) may take any time."""
        if self._pending is not None and self._begun is not None:
            return interrupts.wait(self._begun, timeout)
        return True

    def cancel(self) -> bool:
        """Give up the pending commit if none of its steps began (its preparation may
        still be running: its outcome is dropped); True when it never commits, False
        when it is under way and must be settled."""
        with self._gate:
            if self._pending is None:  # nothing under way, or done here (an outcome waits)
                return self._outcome is None
            if self._begun is not None and self._begun.is_set() and not self._cancelled[0]:
                return False
            self._cancelled[0] = True
            self._pending = None
            # its preparation may never end (task code): later commits get a thread of
            # their own rather than queue behind it (the old one ends once it returns)
            self._worker.close()
            self._worker = Worker("secfl-commit")
            return True

    def drain(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` seconds) for the last overlapped commit, pruning
        included: a process about to exit leaves the folder pruned."""
        self._worker.drain(timeout)

    def close(self) -> None:
        """Done committing: the threads end once their calls returned (a later commit
        starts them again). The fsync thread is closed from the commit's thread, after
        every commit queued there, since a commit under way still hands it its fsyncs."""
        self._worker.submit(self._syncer.close)
        self._worker.close()

    def settle(self) -> int | None:
        """Wait for the commit :meth:`begin` started; returns the counter value (None:
        nothing was pending) or raises the commit's error."""
        finished = self._pending
        if finished is not None:
            # an Event, not Thread.join: a join cut short by Ctrl-C may later return
            # while the thread still runs (CPython marks it stopped); a wait does not
            # (interrupted here: still pending, a later settle waits again)
            interrupts.wait(finished)
        self._pending = None
        outcome, self._outcome = self._outcome, None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
