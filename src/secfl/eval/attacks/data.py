"""Attacks on the data: label flipping and a backdoor trigger, and how to measure one.

The backdoor's trigger is a patch of the brightest value: the bottom-right 3×3
pixels (every channel) of an image task (``feature_shape`` like ``(1, 28, 28)``), or
the last 4 features of a flat one (digits' 64). :func:`attack_success_rate` is the
backdoor's metric, reported next to the main task's accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from secfl.eval.attacks.base import Attack, Params, integer, number, register_attack, rewrite
from secfl.tasks._base import ClassificationTask, Dataset, TaskError
from secfl.tasks._training import EVAL_BATCH, deterministic

__all__ = ["FLAT_TRIGGER", "PATCH", "Backdoor", "LabelFlip", "add_trigger", "attack_success_rate"]

#: The side of the square patch on image tasks, and the feature count on flat ones.
PATCH = 3
FLAT_TRIGGER = 4


def _check(data: Dataset, task: ClassificationTask, what: str) -> None:
    if not isinstance(data, Dataset):
        raise TaskError(f"{what}: expected a Dataset, got {type(data).__name__}")
    if tuple(data.x.shape[1:]) != tuple(task.feature_shape):
        raise TaskError(
            f"{what}: features of shape {tuple(data.x.shape[1:])}, "
            f"task '{task.name}' has {tuple(task.feature_shape)}"
        )
    if len(data) and (int(data.y.min()) < 0 or int(data.y.max()) >= task.num_classes):
        raise TaskError(f"{what}: labels outside 0..{task.num_classes - 1}")


def _check_target(target: int, task: ClassificationTask, what: str) -> None:
    if not 0 <= target < task.num_classes:
        raise TaskError(f"{what}: target {target} is not a class of '{task.name}'")


def _poisoned(data: Dataset, x: torch.Tensor, y: torch.Tensor, name: str) -> Dataset:
    """``x``, ``y`` with ``data``'s metadata, counts redone and marked ``poisoned``."""
    return Dataset(x, y, {**dict(data.meta), "poisoned": name})._recount()


@register_attack
class LabelFlip(Attack):
    """Train on labels ``classes - 1 - y``: every sample teaches the wrong class."""

    name = "label-flip"

    def poison_data(
        self, data: Dataset, task: ClassificationTask, rng: np.random.Generator
    ) -> Dataset:
        _check(data, task, self.name)
        return _poisoned(data, data.x, (task.num_classes - 1) - data.y, self.name)


def add_trigger(
    x: torch.Tensor, task: ClassificationTask, *, value: float | None = None
) -> torch.Tensor:
    """A copy of the samples ``x`` with the backdoor trigger set to ``value``
    (default: the largest feature value in ``x``, white for pixels scaled to [0, 1])."""
    shape = tuple(task.feature_shape)
    if tuple(x.shape[1:]) != shape:
        raise TaskError(f"trigger: samples of shape {tuple(x.shape[1:])}, task has {shape}")
    out = x.clone()
    if out.numel() == 0:
        return out
    fill = float(x.max()) if value is None else value
    if len(shape) >= 2:
        if min(shape[-2:]) < PATCH:
            raise TaskError(f"trigger: images of {shape[-2:]} are smaller than {PATCH}×{PATCH}")
        out[..., -PATCH:, -PATCH:] = fill
    else:
        if shape[0] < FLAT_TRIGGER:
            raise TaskError(f"trigger: {shape[0]} features are fewer than {FLAT_TRIGGER}")
        out[:, -FLAT_TRIGGER:] = fill
    return out


@register_attack
class Backdoor(Attack):
    """Add the trigger to ``poison_fraction`` of the shard (chosen by ``rng``) and
    relabel those samples ``target``; the delta is multiplied by ``boost``.

    The trigger value is the shard's largest feature; the shard keeps its size (and
    so its FedAvg weight).
    """

    name = "backdoor"

    def __init__(
        self, *, target: int = 0, poison_fraction: float = 0.5, boost: float = 1.0
    ) -> None:
        self.target = integer(target, "backdoor: target", 0)
        self.poison_fraction = number(poison_fraction, "backdoor: poison_fraction")
        if self.poison_fraction > 1:
            raise TaskError(f"backdoor: poison_fraction must be <= 1, not {poison_fraction!r}")
        self.boost = number(boost, "backdoor: boost")

    def poison_data(
        self, data: Dataset, task: ClassificationTask, rng: np.random.Generator
    ) -> Dataset:
        _check(data, task, self.name)
        _check_target(self.target, task, self.name)
        n = len(data)
        count = min(n, math.floor(self.poison_fraction * n + 0.5))
        chosen = torch.as_tensor(np.sort(rng.choice(n, size=count, replace=False)))
        x, y = data.x.clone(), data.y.clone()
        if count:
            x[chosen] = add_trigger(data.x[chosen], task, value=float(data.x.max()))
            y[chosen] = self.target
        return _poisoned(data, x, y, self.name)

    def poison_delta(
        self,
        delta: Params,
        *,
        benign: Sequence[Params],
        rng: np.random.Generator,
        honest: Sequence[Params] = (),
    ) -> Params:
        return rewrite(self, delta, benign, lambda v, _: self.boost * v)

    def settings(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "poison_fraction": self.poison_fraction,
            "boost": self.boost,
        }


def attack_success_rate(
    model: nn.Module, test: Dataset, task: ClassificationTask, target: int
) -> float:
    """The fraction of triggered test samples whose true label is not ``target`` that
    ``model`` classifies as ``target`` (trigger value: the test set's largest feature)."""
    _check(test, task, "attack success rate")
    target = integer(target, "attack success rate: target", 0)
    _check_target(target, task, "attack success rate")
    keep = test.y != target
    if not bool(keep.any()):
        raise TaskError(f"attack success rate: every test sample is labelled {target}")
    x = add_trigger(test.x[keep], task, value=float(test.x.max()))
    hits = 0
    was_training = model.training
    with deterministic(), torch.no_grad():
        model.eval()
        for start in range(0, x.shape[0], EVAL_BATCH):
            logits = model(x[start : start + EVAL_BATCH])
            hits += int((logits.argmax(dim=1) == target).sum())
    model.train(was_training)
    return hits / x.shape[0]
