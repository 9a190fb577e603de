"""What is trained: the task contract, built-in tasks and data partitioning.

A task has a ``name`` and four functions: ``build_model(seed)``, ``load_data(shard)``,
``train(model, data, config) -> metrics`` and ``evaluate(model, data) -> metrics``
(:class:`Task`). Built in, all from data already on the machine (nothing is ever
downloaded):

- ``digits``: scikit-learn's bundled digits, an MLP;
- ``breast-cancer``: scikit-learn's bundled Wisconsin data, logistic regression;
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist``, a small CNN.

:func:`split` writes one safetensors shard per collaborator plus validation and
test shards; :func:`load_shard` (and every task's ``load_data``) validates one from a
path, bytes or a file object such as a file inside a shielded volume. Training is
bit-for-bit deterministic given the seed; see :mod:`secfl.tasks._training`.
"""

from __future__ import annotations

from secfl.errors import DivergedError, TaskError
from secfl.tasks._base import ClassificationTask, Dataset, Scaling, ShardSource, Task
from secfl.tasks._registry import as_task, builtin_task, get_task, task_names
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
    "ClassificationTask",
    "Dataset",
    "DivergedError",
    "Scaling",
    "ShardSource",
    "ShardSummary",
    "SplitReport",
    "Task",
    "TaskError",
    "TrainConfig",
    "as_task",
    "builtin_task",
    "deterministic",
    "encode_shard",
    "evaluate_classifier",
    "get_task",
    "load_shard",
    "read_shard",
    "shard_meta",
    "shard_name",
    "split",
    "task_names",
    "train_classifier",
]
