"""One task model kept across rounds instead of built again for every round.

Building a model (``build_model``: a forked, seeded RNG, the layers' initialisation)
costs a millisecond or two, more than loading weights into one that exists; with
short rounds, a collaborator and the aggregator each paid it every round. A
:class:`ModelSlot` builds the model once and from then on loads each round's
weights into it (``load_state_dict``-like, in place: :func:`load_arrays`).

Equivalence with a fresh model. A collaborator's model is entirely replaced by the
global weights before it trains, so what a fresh model and a kept one could differ
in is what lives outside the ``state_dict``. The slot puts back what torch keeps
there: each module's training mode and each parameter's ``requires_grad`` as
``build_model`` left them, and no gradients (``.grad`` cleared, as in a new
model). Anything else ``train`` adds to the module (hooks, attributes, submodules)
is the task's to undo: the contract says ``train`` trains in place and nothing
more (:class:`secfl.tasks._contract.Task`). When the weights do not fit the kept
model (another task, other names, shapes or dtypes, or ``train`` changed the
module's tensors), the slot builds a fresh model and loads into that: the same
check and the same refusal as before when even a fresh model does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl._tensors import load_arrays
from secfl.tasks._contract import Task, call_task

__all__ = ["ModelSlot"]


class ModelSlot:
    """A model of ``task`` (built with ``seed``, or none: a collaborator's), reused."""

    def __init__(self, task: Task, seed: int | None = None) -> None:
        self.task = task
        self.seed = seed
        self._model: Any = None
        self._modes: list[bool] = []
        self._grads: list[bool] = []
        #: How many times a model was built (tests and benchmarks read it).
        self.builds = 0

    def load(self, params: Mapping[str, np.ndarray]) -> Any:
        """The kept model holding ``params`` (a fresh one when they do not fit it)."""
        model = self._model
        if model is not None:
            try:
                load_arrays(model, params)
            except FlError:
                model = None  # another shape: a fresh model, checked again below
            else:
                if self._restore(model):
                    return model
        model = self._build()
        load_arrays(model, params)
        return model

    def _build(self) -> Any:
        self._model = None
        args = () if self.seed is None else (self.seed,)
        model = call_task("build_model", self.task.build_model, *args)
        self.builds += 1
        self._modes = [m.training for m in model.modules()]
        self._grads = [p.requires_grad for p in model.parameters()]
        self._model = model
        return model

    def _restore(self, model: Any) -> bool:
        """Put back what a fresh model has outside its ``state_dict``; False when the
        module no longer has the modules and parameters it was built with."""
        modules = list(model.modules())
        params = list(model.parameters())
        if len(modules) != len(self._modes) or len(params) != len(self._grads):
            return False
        for module, mode in zip(modules, self._modes, strict=True):
            module.training = mode
        for param, grad in zip(params, self._grads, strict=True):
            param.requires_grad_(grad)
            param.grad = None
        return True
