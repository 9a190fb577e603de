"""``digits``: scikit-learn's bundled 8×8 handwritten digits, an MLP 64 → 64 → 10.

1,797 samples ship inside scikit-learn (no network). Pixels are integers 0..16,
stored as uint8 and scaled to [0, 1] on load. Small enough that the default demo's
ten federated rounds finish in seconds and still reach ≥ 0.9 accuracy.

The module itself is a task (``name``, ``build_model``, ``load_data``, ``train``,
``evaluate``), as one delivered in a code volume would be.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from torch import nn

from secfl.tasks._base import ClassificationTask, Scaling

__all__ = [
    "TASK",
    "DigitsTask",
    "build_model",
    "evaluate",
    "load_data",
    "name",
    "train",
]


class DigitsTask(ClassificationTask):
    """8×8 digit images as 64 features, classified by a one-hidden-layer MLP."""

    name = "digits"
    num_classes = 10
    feature_shape = (64,)
    storage_dtype = np.dtype(np.uint8)
    default_config: ClassVar[Mapping[str, Any]] = {"batch_size": 32, "lr": 0.1, "momentum": 0.9}

    def _network(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def load_pool(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data.astype(np.uint8), bunch.target.astype(np.int64)

    def fit_scaling(self, x_train: np.ndarray) -> Scaling:
        """A fixed [0, 1] scaling (pixel range 0..16): it needs no statistics."""
        del x_train
        return Scaling(offset=(0.0,), scale=(16.0,))


TASK = DigitsTask()
name = TASK.name
build_model = TASK.build_model
load_data = TASK.load_data
train = TASK.train
evaluate = TASK.evaluate
