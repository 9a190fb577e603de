"""Global training: the round loop of the aggregator.

For each round: wait for enough collaborators, sample them, send each the signed
global model and its training settings, collect updates until every sampled
collaborator has answered, gone silent or the deadline passed; below the quorum
the round is retried with a new sample, never silently accepted. Then aggregate,
evaluate on the aggregator's validation (and test) data, make the round durable
and fresh (:mod:`secfl.fl._commit`), and write one line of metrics.

Everything that talks to the SPM or the TEE is passed in (a ledger, a refresh
hook), so the same loop runs in production, in tests and in --insecure mode.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secfl.errors import FlError
from secfl.fl._commit import Commit
from secfl.fl._config import FederationConfig
from secfl.fl._envelope import PrivateKey, SignedModel, seal_model
from secfl.fl._rounds import Attempt, Rounds, without_tensors
from secfl.fl._strategy_wiring import wire_strategy
from secfl.fl._tensors import from_bytes, load_arrays, nbytes, state_dict_arrays, to_bytes
from secfl.fl._transport import Server
from secfl.fl.strategies._base import Params, Update
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

    def seal(self, params_bytes: bytes, round: int, counter: int) -> SignedModel:
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
    on_round: Callable[[dict[str, Any]], None] = lambda entry: None
    #: Called with the audit's findings when it leaves participants out of a round.
    on_exclusion: Callable[[dict[str, Any]], None] = lambda finding: None
    reset_from: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _next_refresh: float = 0.0

    def start(self, listen: str = "127.0.0.1:0") -> int:
        """Resume (or start fresh) and listen on ``listen``; returns the port."""
        self._strategy = self.config.strategy_object()
        wire_strategy(
            self._strategy, self.task, self.validation, dict(self.config.train), self.config.seed
        )
        self._params, self._start = self._resume(self._strategy)
        limit = int(nbytes(self._params) * self.config.max_update_factor) + (1 << 20)
        self.rounds = Rounds(self.config, max_update_bytes=limit)
        self.rounds.register(self.server)
        self.port = self.server.start(listen)
        return self.port

    def run(self) -> Params:
        """Train the remaining rounds (after :meth:`start`); returns the final model."""
        if not self.port:
            self.start()
        strategy, params, start = self._strategy, self._params, self._start
        self._params = {}  # the loop's local is the only reference: old models can go
        model_bytes = to_bytes(params)
        log.info("training rounds %d to %d with %s", start, self.config.rounds, strategy)
        for round in range(start, self.config.rounds + 1):
            signed = self.signer.seal(model_bytes, round - 1, self.commit.counter)
            attempt = self._collect(round, strategy, params, signed)
            del signed, model_bytes  # the attempt is closed: nobody is sent this model now
            self.rounds.attempt = None
            updates = [attempt.updates[n] for n in sorted(attempt.updates)]
            summary = _Summary.of(attempt)
            if attempt.accumulator is not None:
                acc = attempt.accumulator
            else:
                acc = strategy.accumulator(round, params)
                for update in updates:
                    acc.add(update)
            del attempt
            updates = [without_tensors(u) for u in updates]  # senders and metrics are all we keep
            params = acc.finish()
            del acc
            model_bytes = to_bytes(params)
            entry = self._evaluate(round, params, updates, summary)
            self._audit(round, strategy, entry)
            entry["counter"] = self.commit.commit(round, model_bytes, strategy.state())
            entry["duration_s"] = round_seconds(self._began)
            self._record(entry)
        self.rounds.finish()
        return params

    # --- steps -------------------------------------------------------------------------

    def _maybe_refresh(self) -> None:
        """Revocations and renewal every REFRESH_SECONDS, not on every round's path."""
        if time.monotonic() >= self._next_refresh:
            self.refresh()
            self._next_refresh = time.monotonic() + REFRESH_SECONDS

    def _resume(self, strategy: Any) -> tuple[Params, int]:
        checkpoint = self.commit.resume(reset_from=self.reset_from)
        initial = state_dict_arrays(self.task.build_model(self.config.seed))
        if checkpoint is None:
            self.commit.commit(0, to_bytes(initial), strategy.state())
            log.info("fresh start: initial model committed at counter %d", self.commit.counter)
            return initial, 1
        params, _ = from_bytes(checkpoint.params_bytes)
        from secfl.fl._tensors import check_like

        check_like(params, initial, what="checkpoint: the model")
        strategy.load_state(checkpoint.state)
        if self.reset_from is not None:
            self.commit.commit(checkpoint.round, checkpoint.params_bytes, checkpoint.state)
        log.info(
            "resumed from %s (round %d, counter %d)",
            checkpoint.path.name, checkpoint.round, self.commit.counter,
        )  # fmt: skip
        return params, checkpoint.round + 1

    def _collect(self, round: int, strategy: Any, params: Params, signed: SignedModel) -> Attempt:
        cfg = self.config
        for number in range(1, cfg.max_attempts + 1):
            self._maybe_refresh()
            alive = self.rounds.wait_available(cfg.min_clients, cfg.join_timeout)
            sampled = cfg.sample(alive, round, number)
            base = strategy.configure(round)
            attempt = Attempt(
                round=round,
                number=number,
                sampled=sampled,
                model=signed,
                configs={n: {**base, "seed": cfg.seed_for(round, n)} for n in sampled},
                deadline=time.monotonic() + cfg.round_timeout,
                accumulator=(
                    strategy.accumulator(round, params)
                    if cfg.aggregation_order == "arrival"
                    else None
                ),
                global_params=params,
            )
            log.info("round %d attempt %d: sampled %s", round, number, ", ".join(sampled))
            if number == 1:
                self._began = time.monotonic()  # round time: from the first model sent
            self.rounds.open(attempt)
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

    def _evaluate(
        self, round: int, params: Params, updates: list[Update], attempt: _Summary
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "round": round,
            "attempt": attempt.number,
            "participants": sorted(u.sender for u in updates),
            "updates": len(updates),
            "dropped": attempt.dropped,
            "refused": attempt.refused,
        }
        total = sum(u.num_samples for u in updates)
        losses = [
            (float(v), u.num_samples)
            for u in updates
            if isinstance(v := u.metrics.get("loss"), int | float)
        ]
        if total and len(losses) == len(updates):  # every update reported its loss
            # weights first (each <= 1): finite peer metrics cannot overflow the sum
            mean = sum((v * (n / total) for v, n in losses), 0.0)
            if math.isfinite(mean):
                entry["train_loss"] = mean
        if self.validation is not None or self.test is not None:
            model = self.task.build_model(self.config.seed)
            load_arrays(model, params)
            for name, data in (("val", self.validation), ("test", self.test)):
                if data is not None:
                    scores = self.task.evaluate(model, data)
                    entry[f"{name}_loss"] = float(scores["loss"])
                    entry[f"{name}_accuracy"] = float(scores["accuracy"])
        return entry

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
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, sort_keys=True) + "\n")
                fh.flush()
        shown = {k: v for k, v in entry.items() if k.endswith(("accuracy", "loss"))}
        log.info(
            "round %d done: %d updates, %s, counter %d", entry["round"], entry["updates"],
            ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), entry["counter"],
        )  # fmt: skip
        self.on_round(entry)


@dataclass(frozen=True)
class _Summary:
    """What the round's entry needs of a closed attempt (not its updates or model)."""

    number: int
    dropped: list[str]
    refused: list[str]

    @classmethod
    def of(cls, attempt: Attempt) -> _Summary:
        return cls(attempt.number, sorted(attempt.dropped), sorted(attempt.refused))


def round_seconds(began: float) -> float:
    return round(time.monotonic() - began, 3)
