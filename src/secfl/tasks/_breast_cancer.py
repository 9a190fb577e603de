"""``breast-cancer``: scikit-learn's bundled Wisconsin diagnostic data, logistic regression.

569 samples of 30 real-valued features (malignant 0, benign 1), bundled with
scikit-learn. Features are standardised with the mean and standard deviation of
the split's training samples only (the union of the client shards), computed once
at split time and stored in every shard's metadata, so each collaborator, the
validation and the test set scale identically and no test statistic leaks into
training. The model is ``nn.Linear(30, 2)`` under softmax cross-entropy, which is
multinomial logistic regression.

The module itself is a task, as one delivered in a code volume would be.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from torch import nn

from secfl.tasks._base import ClassificationTask, Scaling

__all__ = [
    "TASK",
    "BreastCancerTask",
    "build_model",
    "evaluate",
    "load_data",
    "name",
    "train",
]


class BreastCancerTask(ClassificationTask):
    """Thirty tumour measurements, classified by logistic regression."""

    name = "breast-cancer"
    num_classes = 2
    feature_shape = (30,)
    storage_dtype = np.dtype(np.float64)
    default_config: ClassVar[Mapping[str, Any]] = {"batch_size": 16, "lr": 0.05, "momentum": 0.9}

    def _network(self) -> nn.Module:
        return nn.Linear(30, 2)

    def load_pool(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        return bunch.data.astype(np.float64), bunch.target.astype(np.int64)

    def fit_scaling(self, x_train: np.ndarray) -> Scaling:
        """Per-feature mean and (population) standard deviation of the training samples."""
        return Scaling.standardise(x_train)


TASK = BreastCancerTask()
name = TASK.name
build_model = TASK.build_model
load_data = TASK.load_data
train = TASK.train
evaluate = TASK.evaluate
