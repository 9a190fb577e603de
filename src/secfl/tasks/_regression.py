"""Regression: a model that predicts one real number per sample.

:class:`RegressionTask` shares everything but the loss and the metrics with the
classifiers (:class:`~secfl.tasks._base.ArrayTask`). Its shards store the raw
targets (float32) with a ``target_scaling`` in their metadata, fitted like the
feature scaling on the training samples only (mean and standard deviation), so
every party trains on the same standardised targets: SGD on raw targets in the
hundreds would diverge at any learning rate that trains the features.

Training minimises the mean squared error on the standardised targets, which is
the ``loss`` both ``train`` and ``evaluate`` report. The other metrics are in the
targets' own units: ``mse``, ``rmse``, ``mae``, and ``r2`` (the coefficient of
determination, unit-free; absent on data whose targets are all equal, where it is
undefined), with ``n``, the sample count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from secfl.errors import TaskError
from secfl.tasks._base import ArrayTask, Dataset, Scaling

__all__ = [
    "RegressionTask",
    "evaluate_regressor",
    "fit_target_scaling",
    "mse_loss",
    "train_regressor",
]


def fit_target_scaling(y_train: np.ndarray) -> Scaling:
    """The mean and (population) standard deviation of the training targets."""
    return Scaling.standardise(np.asarray(y_train, dtype=np.float64))


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean squared error of one prediction per sample (output ``(B,)`` or ``(B, 1)``)."""
    if output.shape not in (target.shape, (*target.shape, 1)):
        raise TaskError(
            f"regression: the model returned shape {list(output.shape)} for "
            f"{target.shape[0]} samples; return one value per sample"
        )
    return F.mse_loss(output.reshape(target.shape), target)


def train_regressor(model: nn.Module, data: Dataset, config: Mapping[str, Any]) -> dict[str, float]:
    """Deterministic SGD on the mean squared error (``loss``, ``n``, ``epochs``, ``steps``)."""
    from secfl.tasks._training import train_supervised

    return train_supervised(model, data, config, mse_loss)


def evaluate_regressor(model: nn.Module, data: Dataset, threads: int = 1) -> dict[str, float]:
    """``loss`` (standardised MSE), ``mse``, ``rmse``, ``mae`` (target units), ``r2``, ``n``."""
    from secfl.tasks._training import predict

    n = len(data)
    if n == 0:
        raise TaskError("evaluation: the shard has no samples")
    output = predict(model, data, threads)
    target = data.y.to(torch.float64)
    error = output.reshape(-1).to(torch.float64) - target
    if error.shape != target.shape:
        raise TaskError(f"regression: the model returned {output.numel()} values for {n} samples")
    scale = _target_scale(data)
    loss = float((error**2).mean())
    metrics = {
        "loss": loss,
        "mse": loss * scale**2,
        "rmse": math.sqrt(loss) * scale,
        "mae": float(error.abs().mean()) * scale,
    }
    spread = float(((target - target.mean()) ** 2).sum())
    if spread > 0:
        metrics["r2"] = 1.0 - float((error**2).sum()) / spread
    metrics["n"] = float(n)
    return metrics


def _target_scale(data: Dataset) -> float:
    scaling = data.meta.get("target_scaling")
    if not isinstance(scaling, Mapping):
        return 1.0
    return float(scaling["scale"][0])


class RegressionTask(ArrayTask):
    """A regression over fixed-shape features: MSE loss, one output per sample."""

    target = "value"

    def fit_target_scaling(self, y_train: np.ndarray) -> Scaling:
        """The target scaling every shard carries (default: standardise)."""
        return fit_target_scaling(y_train)

    def _fit(self, model: nn.Module, data: Dataset, config: Mapping[str, Any]) -> dict[str, float]:
        return train_regressor(model, data, config)

    def _score(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        return evaluate_regressor(model, data)
