"""secfl's robust rules and clone-and-sample audit as Flower strategies.

:class:`SecflStrategy` is Flower 1.41's ``FedAvg`` (sampling, configuration,
evaluation, metrics: unchanged) whose training aggregation is one of secfl's rules
(:mod:`secfl.fl.strategies`): ``median``, ``trimmed-mean``, ``krum``, ``multi-krum``,
``bulyan``, ``centered-clipping``, ``fltrust``, ``fedavg``, ``fedadam`` or
``clone-audit`` over any of them. The very same code aggregates, on the same numbers:
each reply's ``ArrayRecord`` becomes the rule's update (sender: the node ID; sample
count: the reply's ``num-examples`` metric), the global model is the one this
strategy sent that round, and the result goes back as an ``ArrayRecord`` with the
model's names, order and dtypes. A ServerApp switches by changing one line::

    strategy = SecflStrategy("trimmed-mean", {"beta": 0.2}, fraction_train=1.0)
    strategy = SecflStrategy("clone-audit", {"base": "median", "clones": 20},
                             validation_loss=lambda arrays: my_val_loss(arrays))

The audit (and FLTrust) need the server's own validation data: ``validation_loss``
maps a model (``{name: numpy array}``) to its validation loss, as secfl's aggregator
scores clones (utility = minus the log of the loss). Participants the audit leaves
out are logged and, when the ServerApp runs under secfl (the SuperLink's SPM
session), written to the SPM's audit log (``fl.flower.audit-excluded``).

A rule's refusal (Krum with ``n <= 2f + 2``, Bulyan with ``n < 4f + 3``) is raised
as it is, one line, and fails the ServerApp: Flower's ``Krum`` would silently score
with fewer neighbours. This module imports Flower: it runs in the Flower venv.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from secfl._internal.values import one_line
from secfl.errors import FlError
from secfl.fl.strategies import CloneAudit, Params, Strategy, Update, get_strategy
from secfl.fl.strategies._base import check_update
from secfl.fl.strategies._secret import keep_secret
from secfl.flower._audit import SpmAudit
from secfl.flower._replies import check_metrics, median_metrics, reply_params, sample_count

__all__ = ["SecflStrategy", "from_record", "to_record"]

log = logging.getLogger("secfl.flower")


def from_record(record: ArrayRecord) -> Params:
    """An ``ArrayRecord`` as the rules' ``{name: numpy array}`` (names and order kept)."""
    return {name: np.asarray(array.numpy()) for name, array in record.items()}


def to_record(params: Mapping[str, np.ndarray], like: ArrayRecord | None = None) -> ArrayRecord:
    """``params`` as an ``ArrayRecord``, in ``like``'s order when given."""
    names = list(like.keys()) if like is not None else list(params)
    return ArrayRecord(
        array_dict={n: Array.from_numpy_ndarray(np.ascontiguousarray(params[n])) for n in names}
    )


def _utility(loss: float) -> float:
    """secfl's validation utility: minus the log of the loss, clamped (see
    :mod:`secfl.fl._strategy_wiring`)."""
    loss = float(loss)
    return -math.log(min(max(loss, 1e-9), 1e9)) if math.isfinite(loss) else -math.log(1e9)


class SecflStrategy(FedAvg):
    """Flower's FedAvg with one of secfl's aggregation rules (see the module docstring).

    ``rule`` and ``settings`` are what a secfl policy's ``strategy`` and
    ``strategy_settings`` take; the other keyword arguments are FedAvg's. The clone
    audit's random draws (its clones, validation rows and the detector's coordinates)
    mix in a secret drawn here, in the ServerApp's TEE: the FAB every node runs holds
    the seed (``secret=False``: the seed alone, to reproduce a run exactly).
    """

    def __init__(
        self,
        rule: str = "median",
        settings: Mapping[str, Any] | None = None,
        *,
        validation_loss: Callable[[Params], float] | None = None,
        root_update: Callable[[int, Params, int], Params] | None = None,
        secret: bool = True,
        **kwargs: Any,
    ) -> None:
        rule_ = get_strategy(rule, **dict(settings or {}))
        if secret:  # the audit's draws: not from the seed alone, which every node's FAB holds
            keep_secret(rule_)
        if rule_.robust:  # one node's metrics must not set the round's, as its update
            kwargs.setdefault("train_metrics_aggr_fn", median_metrics)
            kwargs.setdefault("evaluate_metrics_aggr_fn", median_metrics)
        super().__init__(**kwargs)
        self.rule: Strategy = rule_
        for target in (self.rule, getattr(self.rule, "base", None)):
            if target is None:
                continue
            if validation_loss is not None and hasattr(target, "score"):
                target.score = lambda params: _utility(validation_loss(params))
            if root_update is not None and hasattr(target, "root_update"):
                target.root_update = root_update
        self._global: Params | None = None
        self._like: ArrayRecord | None = None
        self.kept: list[str] = []

    def summary(self) -> None:
        log.info("SecflStrategy: secfl rule %r", self.rule)
        super().summary()

    def _check_and_log_replies(
        self, replies: Iterable[Message], is_train: bool, validate: bool = True
    ) -> tuple[list[Message], list[Message]]:
        """The replies with content, and those with an error; an error is logged by its
        code only. FedAvg logged each error's reason, the ClientApp's exception message
        (``str(exc)``: it may quote a site's data), on the SuperLink's host (found by a
        review)."""
        valid: list[Message] = []
        failed: list[Message] = []
        for msg in replies:
            (failed if msg.has_error() else valid).append(msg)
        what = "aggregate_train" if is_train else "aggregate_evaluate"
        log.info("%s: %d results and %d failures", what, len(valid), len(failed))
        for msg in failed:
            log.info("secfl: node %s replied with error code %d (its reason is not shown: "
                     "it may quote the site's data)", msg.metadata.src_node_id,
                     int(msg.error.code))  # fmt: skip
        return valid, failed

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling; the model sent is the global model the rule compares to."""
        self._global = from_record(arrays)
        self._like = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's valid replies aggregated by the secfl rule. Each reply is checked
        on its own (:mod:`secfl.flower._replies`), never all of them together: one bad
        reply is left out, not the round."""
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid:
            return None, None
        if self._global is None:
            raise FlError("aggregate: no global model was sent this round (configure_train)")
        updates, by_sender = [], {}
        # In node-ID order, whatever order the replies came in: the same round always
        # aggregates the same way (secfl's canonical aggregation order).
        for msg in sorted(valid, key=lambda m: int(m.metadata.src_node_id)):
            sender = str(msg.metadata.src_node_id)
            try:  # one bad reply is left out, as secfl's aggregator refuses one update
                update = Update(
                    sender=sender,
                    params=reply_params(msg, self.arrayrecord_key, self._global),
                    num_samples=sample_count(msg, self.weighted_by_key),
                )
                check_update(update, self._global)
                check_metrics(msg)
            except Exception as exc:
                _left_out(server_round, sender, exc)
                continue
            updates.append(update)
            by_sender[sender] = msg
        if not updates:
            return None, None
        if len(updates) < self.rule.fewest_updates():  # bad replies left too few: no round
            log.warning("secfl: round %d: %d valid replies, fewer than %s needs (%d); the "
                        "model is kept", server_round, len(updates), self.rule.name,
                        self.rule.fewest_updates())  # fmt: skip
            self.kept = []
            return None, None
        new = self.rule.aggregate(server_round, self._global, updates)
        kept = self.rule.kept([u.sender for u in updates])
        self.kept = kept
        self._report(server_round, updates, kept)
        metrics = self.train_metrics_aggr_fn(  # every valid reply: Krum keeps one
            [msg.content for msg in by_sender.values()], self.weighted_by_key
        )
        return to_record(new, self._like), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The evaluation replies' metrics, each reply checked on its own (FedAvg's
        check of them all together ended the ServerApp over one bad reply)."""
        valid, _ = self._check_and_log_replies(replies, is_train=False, validate=False)
        kept = []
        for msg in valid:
            try:
                sample_count(msg, self.weighted_by_key)
                check_metrics(msg)
            except Exception as exc:
                _left_out(server_round, str(msg.metadata.src_node_id), exc)
                continue
            kept.append(msg.content)
        return self.evaluate_metrics_aggr_fn(kept, self.weighted_by_key) if kept else None

    def _report(self, server_round: int, updates: list[Update], kept: list[str]) -> None:
        if not isinstance(self.rule, CloneAudit) or not self.rule.excluded:
            return
        excluded = self.rule.excluded
        log.warning("secfl: round %d: the audit leaves out nodes %s", server_round, excluded)
        audit = SpmAudit()
        audit.report(
            "audit-excluded",
            {"round": server_round, "excluded": excluded,
             "suspicion": {k: round(v, 4) for k, v in sorted(self.rule.suspicion.items())}},
        )  # fmt: skip
        audit.close()


def _left_out(server_round: int, node: str, exc: BaseException) -> None:
    reason = exc if isinstance(exc, FlError) else f"unreadable ({type(exc).__name__})"
    log.warning("secfl: round %d: the reply of node %s is left out: %s",
                server_round, node, one_line(str(reason)))  # fmt: skip
