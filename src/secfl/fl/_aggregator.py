"""Global training: the round loop of the aggregator.

For each round: wait for enough collaborators, sample them, send each the signed
global model and its training settings, collect updates until every sampled
collaborator has answered, gone silent or the deadline passed; below the quorum
the round is retried with a new sample, never silently accepted. Then aggregate,
evaluate on the aggregator's validation (and test) data, make the round durable
and fresh (:mod:`secfl.fl._commit`; with the SPM or checkpoints on disk, overlapped
with the next round, evaluation included, once that round's models are out; the
round recorded once its counter is committed), and
write one line of metrics, with the round's phases in milliseconds (``phases_ms``:
see :func:`_attempt_phases` and :meth:`Commit.commit`).

Everything that talks to the SPM or the TEE is passed in (a ledger, a refresh
hook), so the same loop runs in production, in tests and in --insecure mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secfl._internal import files
from secfl._internal.buffers import Frozen
from secfl.errors import FlError
from secfl.fl import _pending
from secfl.fl._commit import Commit
from secfl.fl._config import FederationConfig
from secfl.fl._envelope import PrivateKey, SignedModel, seal_model
from secfl.fl._global_model import model_views, next_model
from secfl.fl._model_slot import ModelSlot
from secfl.fl._pending import PendingRound
from secfl.fl._phases import Summary, attempt_phases, ms, round_seconds
from secfl.fl._reporter import InOrder
from secfl.fl._reset import ApprovedReset
from secfl.fl._resuming import resume_or_begin, stopped_hint
from secfl.fl._rounds import Attempt, Rounds, without_tensors
from secfl.fl._scoring import Scoreboard, train_means
from secfl.fl._strategy_wiring import wire_strategy
from secfl.fl._tensors import (
    nbytes,
    to_bytes,
)
from secfl.fl._transport import Server
from secfl.fl.strategies._base import Params, Strategy, Update
from secfl.fl.strategies._secret import keep_secret
from secfl.tasks._base import Dataset, Task

__all__ = ["REFRESH_SECONDS", "Aggregator", "Signer", "round_seconds"]

log = logging.getLogger("secfl.fl._aggregator")
#: How often revocations are re-read and the identity's renewal checked (seconds).
REFRESH_SECONDS = 10.0


@dataclass
class Signer:
    """Signs global models for one policy (the aggregator's key from the SPM)."""

    policy_digest: str
    key: PrivateKey

    def seal(self, params_bytes: Frozen, round: int, counter: int) -> SignedModel:
        return seal_model(
            params_bytes, policy_digest=self.policy_digest, round=round, counter=counter,
            key=self.key,
        )  # fmt: skip


@dataclass
class Aggregator:
    """One federation's global training; :meth:`run` returns the final model."""

    task: Task
    config: FederationConfig
    server: Server
    signer: Signer
    commit: Commit
    validation: Dataset | None = None
    test: Dataset | None = None
    metrics_path: Path | None = None
    #: Called before every round attempt: refresh revocations, renew the identity.
    refresh: Callable[[], None] = lambda: None
    #: Called every REFRESH_SECONDS in a thread of its own, from :meth:`start` until
    #: :meth:`stop`: re-reads the revocation list, so that a peer the board revokes
    #: (or a new version drops) is refused within seconds, not once the round that is
    #: open (up to ``round_timeout``) is over; and renews the identity when due, so that
    #: its certificate does not expire while an attempt waits.
    reread: Callable[[], None] | None = None
    #: Called with each committed round's entry, off the round loop (None: no hook, and
    #: no thread woken for it).
    on_round: Callable[[dict[str, Any]], None] | None = None
    #: The SPM's ``fl.round`` detail of a round's entry: when set, the commit logs it
    #: with the round's counter increment (one request a round, not two).
    round_event: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    #: Called with the audit's findings when it leaves participants out of a round.
    on_exclusion: Callable[[dict[str, Any]], None] = lambda finding: None
    #: A board-approved reset that applies at this start (used up by the first commit).
    reset: ApprovedReset | None = None
    #: How logs name this run (:func:`secfl.fl._runs.run_label`).
    run_label: str = "run 1"
    #: The policy version it runs under (None: --insecure), in every metrics entry
    #: with the run's number, so that the rounds of two runs in one file stay apart.
    policy_version: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The newest sealed (committed) round and its counter value: where a restart resumes.
    sealed: tuple[int, int] | None = None
    port: int = 0
    _next_refresh: float = 0.0
    _stop_rereading: threading.Event = field(default_factory=threading.Event, repr=False)

    def start(self, listen: str = "127.0.0.1:0") -> int:
        """Resume (or start fresh) and listen on ``listen``; returns the port."""
        self._strategy = self.config.strategy_object()
        self.scores = Scoreboard(self.config.objective)
        wire_strategy(
            self._strategy, self.task, self.validation, dict(self.config.train), self.config.seed
        )
        keep_secret(self._strategy)  # before a checkpoint's state brings back its own
        begun = resume_or_begin(
            self.commit, self.task, self.config, self._strategy, self.scores, self.reset,
            self.run_label,
        )  # fmt: skip
        if begun.used_reset:
            self.reset = None
        self._params, self._start, self.sealed = begun.params, begun.round, begun.sealed
        self._scorer = ModelSlot(self.task, self.config.seed)
        self._pending = PendingRound(self.commit, self._sealed_round)
        self._events = InOrder(self._round_hook)  # off the round's path
        limit = int(nbytes(self._params) * self.config.max_update_factor) + (1 << 20)
        self.rounds = Rounds(self.config, max_update_bytes=limit, spill_dir=self.commit.directory)
        self.rounds.register(self.server)
        self.port = self.server.start(listen)
        if self.reread is not None:
            threading.Thread(
                target=self._rereading, args=(self.reread,), name="secfl-revocations", daemon=True
            ).start()
        return self.port

    def _rereading(self, reread: Callable[[], None]) -> None:
        wait = REFRESH_SECONDS
        while not self._stop_rereading.wait(wait):
            began = time.monotonic()
            try:
                reread()
            except Exception as exc:  # the round path's refresh reads it too, and fails
                log.warning("could not refresh from the SPM (revocations, renewal): %s", exc)
            # every REFRESH_SECONDS from the last one's start, not its end: a slow SPM, or a
            # renewal, spaced the reads past the list's STALE_SECONDS (found by a review)
            wait = max(1.0, REFRESH_SECONDS - (time.monotonic() - began))

    def run(self) -> Params:
        """Train the remaining rounds (after :meth:`start`); returns the final model."""
        if not self.port:
            self.start()
        strategy, start = self._strategy, self._start
        log.info("training rounds %d to %d with %s", start, self.config.rounds, strategy)
        try:
            try:
                params = self._rounds(strategy, start)
            except BaseException:  # stopped (Ctrl-C, an error): a round already durable
                self._settle_on_the_way_out()  # is recorded: a restart does not lose it
                self._events.drain(timeout=10.0)
                with contextlib.suppress(Exception):  # the original error goes on
                    self.rounds.receiver.close()  # its spill file goes now, not at exit
                raise
            self._settle()
            self.commit.drain()  # the old checkpoints pruned before the process may exit
            self._events.drain()  # every round's event is out before anyone hears "done"
            self.rounds.finish()
            return params
        finally:  # their threads end once idle (tests make many aggregators)
            self.commit.close()
            self._events.close()

    def stop(self, grace: float | None = 2.0) -> None:
        """Stop serving, and only then reading the revocation list and renewing: the
        server still answers (late collaborators hear "done") and the session still
        records the final model while it is written out after :meth:`run` (found by a
        hostile review: reading stopped with training, so past STALE_SECONDS every
        call was UNAVAILABLE, and a short certificate's session could expire first)."""
        try:
            self.server.stop(grace)
        finally:
            self._stop_rereading.set()

    def _settle_on_the_way_out(self) -> None:
        round = self._pending.round
        if round is None:
            return
        try:
            self._settle(stopping=True)
        except BaseException as exc:  # the original error is raised next
            log.warning("round %d was not committed: %s", round, exc)

    def _rounds(self, strategy: Any, start: int) -> Params:
        """The loop of :meth:`run`: rounds ``start`` to the last; the last commit may
        still be pending when it returns. The loop's locals are the only references
        to the global model (kept once: its tensors are views of its bytes), so each
        old model goes as soon as the next one is made."""
        model_bytes: Frozen = to_bytes(self._params)
        self._params = {}
        params = model_views(model_bytes)
        for round in range(start, self.config.rounds + 1):
            top = time.monotonic()
            signed = self.signer.seal(model_bytes, round - 1, self.commit.promised)
            attempt = self._collect(round, strategy, params, signed)
            phases = attempt_phases(attempt, top)
            del signed  # the attempt is closed: nobody is sent this model now
            self.rounds.attempt = None
            updates = [attempt.updates[n] for n in sorted(attempt.updates)]
            summary = Summary.of(attempt)
            if attempt.accumulator is not None:
                acc = attempt.accumulator
            else:
                acc = strategy.accumulator(round, params)
                for update in updates:
                    acc.add(update)
            del attempt
            updates = [without_tensors(u) for u in updates]  # senders and metrics are all we keep
            model_bytes = next_model(acc, model_bytes)
            del acc
            params = model_views(model_bytes)
            entry = self._entry(round, updates, summary, strategy)
            self._audit(round, strategy, entry)
            self._commit_round(round, model_bytes, params, strategy.state(), entry, phases)
        return params

    # --- steps -------------------------------------------------------------------------

    def _commit_round(
        self,
        round: int,
        model_bytes: Frozen,
        params: Params,
        state: dict[str, Any],
        entry: dict[str, Any],
        phases: dict[str, float],
    ) -> None:
        """Evaluate and commit ``round`` (:class:`~secfl.fl._pending.PendingRound`: here,
        or beside the next round once its models are out); recorded (metrics, round
        event, ``sealed``) only once its counter is committed."""
        phases["aggregate"] = ms(time.monotonic() - phases.pop("_closed"))
        if self.commit.overlap:  # the round's own time: up to the commit handed over
            entry["duration_s"] = round_seconds(self._began)

        def score() -> Mapping[str, Any]:
            self._score(round, params, entry)
            return self.scores.state()

        self._pending.begin(
            round, model_bytes, state, entry, phases, score=score, event=self._event_of(entry)
        )

    def _event_of(self, entry: dict[str, Any]) -> Callable[[int], dict[str, Any]] | None:
        """The round's event at a counter value, from what the entry says now (the
        commit's thread builds it: the entry itself changes once the commit settled)."""
        build = self.round_event
        if build is None:
            return None
        # read in the commit's thread, once the evaluation filled the entry in
        duration = entry.get("duration_s", round_seconds(self._began))
        return lambda counter: build({**entry, "duration_s": duration, "counter": counter})

    def _settle(self, *, stopping: bool = False) -> None:
        """The pending round's commit awaited and recorded (:meth:`PendingRound.settle`)."""
        self._pending.settle(stopping=stopping)

    def _sealed_round(
        self, round: int, counter: int, entry: dict[str, Any], phases: dict[str, float]
    ) -> None:
        """``round`` is committed at ``counter``: record it."""
        entry["counter"] = counter
        self.sealed = (round, counter)
        entry.setdefault("duration_s", round_seconds(self._began))
        entry["phases_ms"] = phases
        self._record(entry)

    def _settle_opened(self, attempt: Attempt) -> None:
        """The last round's commit, awaited once the next round is open (its models are
        on their way); if it failed, no collaborator gets this round's model any more."""
        try:
            self._settle()
        except BaseException:
            with self.rounds.cond:
                attempt.open = False
                self.rounds.cond.notify_all()
            raise

    def _maybe_refresh(self) -> None:
        """Revocations and renewal every REFRESH_SECONDS, not on every round's path."""
        if time.monotonic() >= self._next_refresh:
            self.refresh()
            self._next_refresh = time.monotonic() + REFRESH_SECONDS

    def resume_hint(self) -> str:
        """One line for an operator who stopped the aggregator: what is sealed, and
        how to go on."""
        with contextlib.suppress(Exception):
            self._settle(stopping=True)  # a commit under way: finished and recorded first
            self._events.drain(timeout=10.0)
        return stopped_hint(self.sealed, self.commit.directory, self.config.rounds, self.run_label)

    def _sample_caps(self, sampled: list[str]) -> dict[str, int]:
        """The most samples each of ``sampled`` may report: what it said when it joined,
        else the policy's ``max_samples``. Their sum sizes an exact sum's grid."""
        with self.rounds.cond:
            return {
                n: (p.samples if (p := self.rounds.participants.get(n)) and p.samples else None)
                or self.config.max_samples
                for n in sampled
            }

    def _collect(self, round: int, strategy: Any, params: Params, signed: SignedModel) -> Attempt:
        try:
            return self._attempts(round, strategy, params, signed)
        except BaseException:
            # the last round's commit, if still pending, is recorded before stopping
            with contextlib.suppress(Exception):
                self._settle(stopping=True)
            raise

    def _attempts(self, round: int, strategy: Any, params: Params, signed: SignedModel) -> Attempt:
        cfg = self.config
        for number in range(1, cfg.max_attempts + 1):
            self._maybe_refresh()
            alive = self.rounds.wait_available(cfg.min_clients, cfg.join_timeout)
            sampled = cfg.sample(alive, round, number)
            base = strategy.configure(round)
            caps = self._sample_caps(sampled)
            attempt = Attempt(
                round=round,
                number=number,
                sampled=sampled,
                model=signed,
                configs={n: {**base, "seed": cfg.seed_for(round, n)} for n in sampled},
                deadline=time.monotonic() + cfg.round_timeout,
                # rules whose sum does not depend on order fold on arrival in either order
                accumulator=(
                    strategy.accumulator(
                        round, params, weight_bound=min(sum(caps.values()), 1 << 53)
                    )
                    if strategy.streaming
                    else strategy.accumulator(round, params)
                    if cfg.aggregation_order == "arrival"
                    else None
                ),
                global_params=params,
                caps=caps,
            )
            log.info("round %d attempt %d: sampled %s", round, number, ", ".join(sampled))
            if number == 1:
                self._began = time.monotonic()  # round time: from the first model sent
            self.rounds.open(attempt)
            if self._pending.waits_for_dispatch:  # the last round's evaluation and
                attempt.dispatched.wait(_pending.DISPATCH_GRACE)  # commit wait for these models
            self._settle_opened(attempt)
            self.rounds.wait_closed()
            got = len(attempt.updates)
            if got >= cfg.needed:
                return attempt
            missing = sorted(set(sampled) - set(attempt.updates))
            log.warning(
                "round %d attempt %d: %d of %d updates needed (missing: %s); retrying",
                round, number, got, cfg.needed, ", ".join(missing),
            )  # fmt: skip
        raise FlError(
            f"round {round}: quorum of {cfg.needed} updates not reached in "
            f"{cfg.max_attempts} attempts"
        )

    def _entry(
        self, round: int, updates: list[Update], attempt: Summary, strategy: Strategy
    ) -> dict[str, Any]:
        """The round's metrics entry, without the scores of its model (:meth:`_score`);
        under a robust rule its training metrics are a median (:func:`train_means`)."""
        entry: dict[str, Any] = {
            "round": round,
            "run": self.config.run,
            **({} if self.policy_version is None else {"policy_version": self.policy_version}),
            "attempt": attempt.number,
            "participants": sorted(u.sender for u in updates),
            "updates": len(updates),
            "dropped": attempt.dropped,
            "refused": attempt.refused,
        }
        metrics = ["loss", self.config.objective.metric]
        entry.update(train_means(updates, metrics, robust=strategy.robust))
        return entry

    def _score(self, round: int, params: Params, entry: dict[str, Any]) -> None:
        """The new global model's scores on the validation and test data, into ``entry``."""
        named = (("val", self.validation), ("test", self.test))
        splits = [(name, data) for name, data in named if data is not None]
        if splits:
            model = self._scorer.load(params)  # one model, reloaded every round
            entry.update(self.scores.evaluate(self.task, model, splits))
        self.scores.observe(round, entry)

    def _audit(self, round: int, strategy: Any, entry: dict[str, Any]) -> None:
        """Put the clone audit's findings (if the rule has one) in the round's entry."""
        history = getattr(strategy, "history", None)
        if not history or history[-1].round != round:
            return
        finding = history[-1].to_json()
        entry["audit"] = finding
        entry["excluded"] = finding["excluded"]
        if finding["excluded"]:
            serials = {
                name: p.serial
                for name, p in self.rounds.participants.items()
                if name in finding["excluded"]
            }
            self.on_exclusion({**finding, "serials": serials})

    def _record(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        if self.metrics_path is not None:
            try:  # opened at start (check_host_paths); the round is committed by now
                line = json.dumps(entry, sort_keys=True) + "\n"
                files.append(self.metrics_path, line.encode("utf-8"))
            except OSError as exc:
                log.warning(
                    "metrics: cannot append round %d to %s: %s (the round is committed; "
                    "training goes on)", entry["round"], self.metrics_path, exc.strerror or exc,
                )  # fmt: skip
        keys = [k for k in entry if k.endswith(("_loss", "_accuracy"))]
        keys.append(str(entry.get("objective_metric", "")))
        shown = [f"{k} {entry[k]:.4f}" for k in dict.fromkeys(keys) if k in entry]
        if entry.get("best_round") is not None:
            shown.append(f"best round {entry['best_round']}")
        log.info(
            "round %d done: %d updates, %s, counter %d", entry["round"], entry["updates"],
            ", ".join(shown), entry["counter"],
        )  # fmt: skip
        if self.on_round is not None:
            self._events.post(entry)

    def _round_hook(self, entry: dict[str, Any]) -> None:
        if self.on_round is not None:
            self.on_round(entry)
