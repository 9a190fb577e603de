"""What some rules need from the aggregator's own data: the clone audit scores
clones on the validation data, FLTrust trains a root update on it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from secfl.errors import TaskError
from secfl.fl._tensors import load_arrays, state_dict_arrays
from secfl.fl.strategies._base import Params, Strategy
from secfl.tasks._contract import call_task

__all__ = ["wire_strategy"]


def wire_strategy(
    strategy: Strategy, task: Any, validation: Any, train: dict[str, Any], seed: int
) -> None:
    """Give ``strategy`` (and a rule it wraps) the hooks it has slots for; without
    validation data they stay unset and the rule refuses to run, saying why."""
    if validation is None:
        return
    for rule in (strategy, getattr(strategy, "base", None)):
        if rule is None:
            continue
        if hasattr(rule, "score"):
            rule.score = _scorer(task, validation)
        if hasattr(rule, "root_update"):
            rule.root_update = _root_update(task, validation, train, seed)


def _scorer(task: Any, validation: Any) -> Any:
    model = task.build_model()

    def score(params: Params) -> float:
        """The validation utility of ``params``: minus the log of the mean cross-entropy.

        A difference in it is a relative change in loss, the same on every task and
        at every stage of training (the audit's ``tolerance`` is in these units); a
        wrecked model's loss in the thousands stays a few units, not a few thousand."""
        load_arrays(model, params)
        scores = call_task("evaluate", task.evaluate, model, validation)
        value = scores.get("loss") if isinstance(scores, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TaskError("evaluate: returned no numeric 'loss', which the audit scores by")
        loss = float(value)  # a wrecked model's loss may be infinite: it scores lowest
        return -math.log(min(max(loss, 1e-9), 1e9)) if math.isfinite(loss) else -math.log(1e9)

    return score


def _root_update(task: Any, validation: Any, train: dict[str, Any], seed: int) -> Any:
    model = task.build_model()

    def root_update(round: int, params: Params, samples: int) -> Params:
        """The global model trained as the participants train, on a random ``samples``
        of the aggregator's root data (all of it when it holds fewer), drawn anew
        each round."""
        data = validation
        if samples < len(validation):
            pick = np.random.default_rng([seed, round, 17]).choice(
                len(validation), size=samples, replace=False
            )
            if not callable(getattr(validation, "subset", None)):
                raise TaskError(
                    "fltrust: the validation data has no subset(indices) to draw the root "
                    "data from; give load_data's result one (built-in tasks' data has it)"
                )
            data = validation.subset(np.sort(pick))
        load_arrays(model, params)
        task.train(model, data, {**train, "seed": seed * 7919 + round})
        return state_dict_arrays(model)

    return root_update
