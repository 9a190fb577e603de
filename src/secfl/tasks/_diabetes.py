"""``diabetes``: scikit-learn's bundled diabetes data, a small MLP regression.

442 patients, ten baseline measurements (age, sex, body-mass index, blood pressure,
six blood serum values); the target is a quantitative measure of disease progression
one year later (25 to 346). Bundled with scikit-learn (no network). Features are
standardised with the training samples' mean and standard deviation, and so are
the targets (:mod:`secfl.tasks._regression`); ``rmse`` and ``mae`` are reported in
the target's units. The network is 10 → 16 → 1 with a ReLU.

The module itself is a task, as one delivered in a code volume would be.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from torch import nn

from secfl.tasks._base import Scaling
from secfl.tasks._regression import RegressionTask

__all__ = [
    "TASK",
    "DiabetesTask",
    "build_model",
    "evaluate",
    "load_data",
    "name",
    "train",
]


class DiabetesTask(RegressionTask):
    """Ten clinical measurements → disease progression after a year."""

    name = "diabetes"
    feature_shape = (10,)
    storage_dtype = np.dtype(np.float64)
    default_config: ClassVar[Mapping[str, Any]] = {"batch_size": 16, "lr": 0.02, "momentum": 0.9}

    def _network(self) -> nn.Module:
        return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))

    def load_pool(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_diabetes

        bunch = load_diabetes(scaled=False)
        return bunch.data.astype(np.float64), bunch.target.astype(np.float32)

    def fit_scaling(self, x_train: np.ndarray) -> Scaling:
        """Per-feature mean and (population) standard deviation of the training samples."""
        return Scaling.standardise(x_train)


TASK = DiabetesTask()
name = TASK.name
build_model = TASK.build_model
load_data = TASK.load_data
train = TASK.train
evaluate = TASK.evaluate
