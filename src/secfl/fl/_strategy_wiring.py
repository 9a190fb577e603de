"""What some rules need from the aggregator's own data: the clone audit scores
clones on the validation data, FLTrust trains a root update on it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from secfl.errors import TaskError
from secfl.fl._tensors import load_arrays, state_dict_arrays
from secfl.fl.strategies._base import Params, Strategy
from secfl.tasks._base import ClassificationTask, Dataset
from secfl.tasks._contract import call_task
from secfl.tasks._training import deterministic

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
    return _Scorer(task, validation)


class _Scorer:
    """The validation utility of a model (:meth:`__call__`), and for a built-in
    classifier its per-example losses on chosen rows (:meth:`losses`, ``size``), which
    let the clone audit score on a subsample (:mod:`secfl.fl.strategies._clone_scoring`).
    A task with its own evaluation has ``size`` ``None``: the audit scores it whole."""

    def __init__(self, task: Any, validation: Any) -> None:
        self._task = task
        self._validation = validation
        self._model = task.build_model()
        per_example = (
            isinstance(task, ClassificationTask)
            and type(task)._score is ClassificationTask._score
            and type(task).evaluate is ClassificationTask.evaluate
            and isinstance(validation, Dataset)
        )
        #: Validation rows :meth:`losses` can score (``None``: only the whole set).
        self.size: int | None = len(validation) if per_example else None
        self._layout: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] | None = None
        self._gathered: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, params: Params) -> float:
        """The validation utility of ``params``: minus the log of the mean cross-entropy.

        A difference in it is a relative change in loss, the same on every task and
        at every stage of training (the audit's ``tolerance`` is in these units); a
        wrecked model's loss in the thousands stays a few units, not a few thousand."""
        load_arrays(self._model, params)
        scores = call_task("evaluate", self._task.evaluate, self._model, self._validation)
        value = scores.get("loss") if isinstance(scores, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TaskError("evaluate: returned no numeric 'loss', which the audit scores by")
        loss = float(value)  # a wrecked model's loss may be infinite: it scores lowest
        return -math.log(min(max(loss, 1e-9), 1e9)) if math.isfinite(loss) else -math.log(1e9)

    def losses(self, params: Params, rows: np.ndarray) -> np.ndarray:
        """The cross-entropy of ``params`` on each of validation ``rows``, in one batch
        (their mean over every row is what :meth:`__call__` takes the log of)."""
        if self.size is None:
            raise TaskError(f"{self._task.name}: the task scores only the whole validation set")
        self._load(params)
        x, y = self._rows(np.asarray(rows, dtype=np.int64))
        was_training = self._model.training
        with deterministic(1), torch.inference_mode():
            self._model.eval()
            out = F.cross_entropy(self._model(x), y, reduction="none")
        self._model.train(was_training)
        return out.double().numpy()

    def _load(self, params: Params) -> None:
        """:func:`load_arrays` without its per-tensor checks when ``params`` has the
        model's names, shapes and dtypes (a clone, scored dozens of times a round): a
        NaN gives a NaN loss, which the audit scores as the worst. Anything else goes
        through :func:`load_arrays`, which refuses it in one line."""
        if self._layout is None:
            self._layout = {
                k: (v.shape, v.dtype) for k, v in state_dict_arrays(self._model).items()
            }
        state = self._model.state_dict()
        if params.keys() != self._layout.keys() or any(
            not isinstance(v, np.ndarray) or (v.shape, v.dtype) != self._layout[k]
            for k, v in params.items()
        ):
            load_arrays(self._model, params)
            return
        with torch.no_grad():
            for name, target in state.items():
                source = params[name]
                if not source.flags.writeable:
                    source = np.array(source, copy=True)
                target.copy_(torch.from_numpy(source))

    def _rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation rows as tensors, gathered once for all the round's models."""
        key = rows.tobytes()
        if key not in self._gathered:
            if len(self._gathered) >= 8:
                self._gathered.clear()
            index = torch.from_numpy(rows)
            self._gathered[key] = (self._validation.x[index], self._validation.y[index])
        return self._gathered[key]


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
