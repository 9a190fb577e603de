"""What is trained: the task contract, built-in tasks and data partitioning.

A task has a ``name`` and four functions: ``build_model(seed)``, ``load_data(path)``,
``train(model, data, config) -> metrics`` and ``evaluate(model, data) -> metrics``;
:class:`Task` documents who calls each with what, and what the runtime checks of
the answers (docs/tasks.md has a complete example). Built in, all from data
already on the machine (nothing is ever downloaded):

- ``digits``: scikit-learn's bundled digits, an MLP;
- ``breast-cancer``: scikit-learn's bundled Wisconsin data, logistic regression;
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist``, a small CNN;
- ``diabetes``: scikit-learn's bundled diabetes data, an MLP regression.

:func:`split` writes one safetensors shard per collaborator plus validation and
test shards, for a built-in task or any task with ``load_pool()``
(:class:`SplittableTask`); :func:`load_shard` (and every built-in task's
``load_data``) validates one from a path (a shard, or a folder holding one), bytes
or a file object. Training is bit-for-bit deterministic given the seed; see
:mod:`secfl.tasks._training`.
"""

from __future__ import annotations

from secfl.errors import DivergedError, TaskError
from secfl.tasks._base import ArrayTask, ClassificationTask, Dataset, Scaling, ShardSource
from secfl.tasks._contract import SplittableTask, Task, call_task, check_metrics, sample_count
from secfl.tasks._registry import as_task, builtin_task, get_task, task_names
from secfl.tasks._regression import RegressionTask, evaluate_regressor, train_regressor
from secfl.tasks._shards import FORMAT, encode_shard, load_shard, read_shard, shard_meta
from secfl.tasks._split import ShardSummary, SplitReport, shard_name, split
from secfl.tasks._training import (
    TRAIN_CONFIG_KEYS,
    TrainConfig,
    deterministic,
    evaluate_classifier,
    train_classifier,
)

__all__ = [
    "FORMAT",
    "TRAIN_CONFIG_KEYS",
    "ArrayTask",
    "ClassificationTask",
    "Dataset",
    "DivergedError",
    "RegressionTask",
    "Scaling",
    "ShardSource",
    "ShardSummary",
    "SplitReport",
    "SplittableTask",
    "Task",
    "TaskError",
    "TrainConfig",
    "as_task",
    "builtin_task",
    "call_task",
    "check_metrics",
    "deterministic",
    "encode_shard",
    "evaluate_classifier",
    "evaluate_regressor",
    "get_task",
    "load_shard",
    "read_shard",
    "sample_count",
    "shard_meta",
    "shard_name",
    "split",
    "task_names",
    "train_classifier",
    "train_regressor",
]
