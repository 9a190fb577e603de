"""A round's scores: the task's metrics of the new global model, and the objective.

After each round the aggregator evaluates the global model on its validation and
test data (when it has them). Every metric ``m`` the task's ``evaluate`` returns is
recorded as ``val_m`` and ``test_m``; the collaborators' ``loss`` (and the
objective's metric, if they report it) as ``train_m``: their mean weighted by the
sample counts under FedAvg, FedProx and FedAdam, their median under a robust rule
(where one participant's report, like its update, must not set the result; over every
update of the round, not only those the rule kept: Krum keeps one). These are
self-reported: a round's ``train_*`` says what the participants claim, ``val_*`` and
``test_*`` what the aggregator measured.

The policy's objective (``federation.objective``: a metric and ``min`` or ``max``)
says which of them reports and ranks the model. Its value is read from the
validation data, else the test data, else the collaborators' training metrics;
each round's entry gets ``objective`` (the value), ``objective_metric`` (which
key it came from, e.g. ``val_loss``), and the best round so far (``best_round``,
``best_objective``). The best round survives a restart: it travels in the sealed
checkpoint's state (:meth:`Scoreboard.state`). The final model is the last round's;
the best round is reported next to it, for the model owner to choose.

A task whose ``evaluate`` does not return the objective's metric is refused at the
first evaluation, in one line naming the metric and what the task returned.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from secfl.errors import FlError
from secfl.fl._config import Objective
from secfl.fl.strategies._base import Update
from secfl.tasks._contract import call_task, check_metrics

__all__ = ["STATE_KEY", "Scoreboard", "train_means"]

log = logging.getLogger("secfl.fl._aggregator")

#: The key of the best round in a checkpoint's state (strategies never see it).
STATE_KEY = "secfl.best"


def train_means(
    updates: Sequence[Update], names: Sequence[str], *, robust: bool = False
) -> dict[str, float]:
    """``train_<name>``: the collaborators' metric ``name``: their mean weighted by
    sample counts when every update reported it, or with ``robust`` (the round's rule
    is a robust one) the median of those that did, if they are most of the round. No
    one participant's report can then move it past the honest ones', nor take it out
    of the round by leaving it out (peer values are finite: see _messages)."""
    total = sum(u.num_samples for u in updates)
    means: dict[str, float] = {}
    for name in dict.fromkeys(names):
        values = [
            (float(v), u.num_samples)
            for u in updates
            if isinstance(v := u.metrics.get(name), int | float)
        ]
        if robust:
            if 2 * len(values) <= len(updates):
                continue
            mean = statistics.median(v for v, _ in values)
        elif not total or len(values) != len(updates):
            continue
        else:  # weights first (each <= 1): finite peer metrics cannot overflow the sum
            mean = sum((v * (n / total) for v, n in values), 0.0)
        if math.isfinite(mean):
            means[f"train_{name}"] = mean
    return means


@dataclass
class Scoreboard:
    """The objective, and the best round by it so far."""

    objective: Objective
    best_round: int | None = None
    best: float | None = None
    #: Where the objective's value is read (``val_loss``...): set by the first round.
    key: str | None = None

    def evaluate(
        self, task: Any, model: Any, splits: Sequence[tuple[str, Any]]
    ) -> dict[str, float]:
        """Every metric of ``task.evaluate`` on each ``(prefix, data)``, as ``prefix_m``."""
        scores: dict[str, float] = {}
        metric = self.objective.metric
        for prefix, data in splits:
            result = call_task("evaluate", task.evaluate, model, data)
            metrics = check_metrics(result, "evaluate")
            if metric not in metrics:
                raise FlError(
                    f"objective: the task's evaluate returned no '{metric}' (it returned: "
                    f"{', '.join(metrics) or 'nothing'}); return it, or set "
                    "federation.objective.metric to one of these"
                )
            scores.update({f"{prefix}_{name}": value for name, value in metrics.items()})
        return scores

    def observe(self, round: int, entry: dict[str, Any]) -> None:
        """Put the round's objective and the best round so far into ``entry``."""
        metric = self.objective.metric
        key = next((f"{p}_{metric}" for p in ("val", "test", "train") if f"{p}_{metric}" in entry),
                   None)  # fmt: skip
        if key is None:
            return
        if self.key is not None and key != self.key:
            log.warning("objective: now read from %s (was %s): the best round starts over",
                        key, self.key)  # fmt: skip
            self.best_round = self.best = None
        self.key = key
        value = float(entry[key])
        if self.objective.better(value, self.best):
            self.best_round, self.best = round, value
        entry.update(
            objective=value, objective_metric=key,
            best_round=self.best_round, best_objective=self.best,
        )  # fmt: skip

    def state(self) -> dict[str, Any]:
        """The best round for the sealed checkpoint (empty before any)."""
        if self.best_round is None or self.best is None or self.key is None:
            return {}
        return {STATE_KEY: {"round": self.best_round, "value": self.best, "key": self.key}}

    def restore(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Take the best round from a checkpoint's state; return the rest (the strategy's).
        A checkpoint is sealed by this federation, so a malformed entry is only ignored."""
        rest = {k: v for k, v in state.items() if k != STATE_KEY}
        saved = state.get(STATE_KEY)
        if isinstance(saved, Mapping):
            round, value, key = saved.get("round"), saved.get("value"), saved.get("key")
            if (
                type(round) is int
                and isinstance(value, int | float)
                and math.isfinite(value)
                and isinstance(key, str)
            ):
                self.best_round, self.best, self.key = round, float(value), key
        return rest

    def summary(self) -> dict[str, str]:
        """The objective and the best round, as a model file's metadata (strings)."""
        text = {"objective": f"{self.objective.metric} ({self.objective.mode})"}
        if self.best_round is not None and self.best is not None and self.key is not None:
            text.update(best_round=str(self.best_round), best_objective=repr(self.best),
                        objective_metric=self.key)  # fmt: skip
        return text
