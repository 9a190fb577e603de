"""The built-in tasks' building blocks: datasets, feature scaling, and their base class.

A *task* is anything with a ``name`` and the four functions of
:class:`~secfl.tasks._contract.Task` (a plain Python module delivered in a shielded
code volume qualifies as well as an object). The built-in tasks are supervised
models over arrays and share :class:`ArrayTask`, which owns the generic parts:
deterministic model initialisation, shard loading and the data checks;
:class:`ClassificationTask` and :class:`~secfl.tasks._regression.RegressionTask`
add the loss and metrics. A concrete task only says where its raw data comes from,
how features are scaled, and which network it trains.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import torch
from torch import nn

from secfl.errors import DivergedError, TaskError
from secfl.tasks._contract import Task

__all__ = [
    "DEFAULT_MODEL_SEED",
    "ArrayTask",
    "ClassificationTask",
    "Dataset",
    "DivergedError",
    "Scaling",
    "ShardSource",
    "Task",
    "TaskError",
]

#: What :meth:`ArrayTask.load_data` reads: a shard file's path (or the path of a
#: folder holding exactly one shard), its bytes, or an open
#: binary file (e.g. a :class:`secfl.shield.VolumeFile`) or a ``Traversable``
#: with ``read_bytes()`` (e.g. a :class:`secfl.shield.VolumePath`).
ShardSource = str | Path | bytes | bytearray | memoryview | IO[bytes] | Any

#: The default seed of :meth:`ArrayTask.build_model`: models are always
#: initialised deterministically, so two parties that build one agree bit for bit.
DEFAULT_MODEL_SEED = 0


@dataclass(frozen=True)
class Scaling:
    """Affine feature scaling ``(x - offset) / scale``, applied when a shard is loaded.

    Shards store raw features; the scaling travels in every shard's metadata, so all
    collaborators, the validation and the test shard use exactly the same statistics
    (for breast-cancer: the mean and standard deviation of the training set only).
    ``offset`` and ``scale`` hold one value (for every feature) or one per feature.
    """

    offset: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def standardise(cls, values: np.ndarray) -> Scaling:
        """Per-feature (per-column) mean and population standard deviation of
        ``values``; a constant feature is left unscaled (scale 1)."""
        mean = np.atleast_1d(values.mean(axis=0, dtype=np.float64))
        std = np.atleast_1d(values.std(axis=0, dtype=np.float64))
        std = np.where(std > 0, std, 1.0)
        return cls(offset=tuple(float(v) for v in mean), scale=tuple(float(v) for v in std))

    def to_json(self) -> dict[str, list[float]]:
        return {"offset": list(self.offset), "scale": list(self.scale)}

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Scaled float32 features, elementwise in float32 (so bit-reproducible)."""
        offset = np.asarray(self.offset, dtype=np.float32)
        scale = np.asarray(self.scale, dtype=np.float32)
        return ((x.astype(np.float32) - offset) / scale).astype(np.float32, copy=False)


@dataclass(frozen=True, eq=False)
class Dataset:
    """One loaded shard: scaled float32 features ``x``, targets ``y`` (int64 class labels,
    or float32 values of a regression, scaled as the metadata's ``target_scaling``
    says), and its metadata.

    Not a ``torch.utils.data.Dataset``: the tensors are held whole (shards are small)
    and batched by the task's deterministic training loop.
    """

    x: torch.Tensor
    y: torch.Tensor
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def n(self) -> int:
        """The number of samples (what FedAvg weights an update by)."""
        return len(self)

    @property
    def task(self) -> str:
        return str(self.meta.get("task", ""))

    @classmethod
    def concat(cls, parts: Sequence[Dataset]) -> Dataset:
        """Shards of one split as one dataset (central training, a baseline).

        The metadata is the first part's with the counts redone; parts of
        different tasks or splits are refused.
        """
        if not parts:
            raise TaskError("concat: no datasets")
        first = parts[0].meta
        for other in parts[1:]:
            if (other.meta.get("task"), other.meta.get("split")) != (
                first.get("task"),
                first.get("split"),
            ):
                raise TaskError("concat: the datasets come from different tasks or splits")
        return cls(
            torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), first
        )._recount()

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> Dataset:
        """The samples at ``indices`` (same metadata, counts redone)."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return Dataset(self.x[index], self.y[index], self.meta)._recount()

    def _recount(self) -> Dataset:
        """This data with ``samples`` and ``label_counts`` in its metadata made true."""
        meta = dict(self.meta)
        meta["samples"] = len(self)
        if "num_classes" in meta:
            counts = torch.bincount(self.y, minlength=int(meta["num_classes"]))
            meta["label_counts"] = counts.tolist()
        return Dataset(self.x, self.y, meta)


class ArrayTask(ABC):
    """A supervised model over fixed-shape features, read from secfl shards: the
    built-in tasks' base (:class:`ClassificationTask`, and
    :class:`~secfl.tasks._regression.RegressionTask`).

    It owns the generic parts: deterministic model initialisation, shard loading
    (a shard file, or a folder holding exactly one) and the checks of the data a
    call gets. Subclasses set the class attributes and implement :meth:`_network`,
    :meth:`load_pool`, :meth:`_fit` and :meth:`_score` and, when features need
    data-dependent scaling, :meth:`fit_scaling`.
    """

    #: The registry name (``digits``, ``diabetes``...).
    name: str
    #: What a shard's ``y`` holds: ``class`` labels (int64) or ``value`` targets (float).
    target: ClassVar[str]
    #: The shape of one sample's features, as stored and as the model takes it.
    feature_shape: tuple[int, ...]
    #: How raw features are stored in a shard (``uint8`` for pixels keeps shards small).
    storage_dtype: np.dtype[Any]
    #: Training hyperparameters used where a round's config is silent.
    default_config: ClassVar[Mapping[str, Any]] = {}

    # -- what a concrete task says -------------------------------------------------

    @abstractmethod
    def _network(self) -> nn.Module:
        """The untrained network (random init from torch's generator, seeded by the caller)."""

    @abstractmethod
    def load_pool(self) -> tuple[np.ndarray, np.ndarray]:
        """All raw samples ``(x in storage_dtype, y)`` that a split partitions.

        Read from local files only (sklearn's bundled data, a Debian package): nothing
        is ever downloaded. A missing dataset is a :class:`TaskError` saying how to
        install it.
        """

    def fit_scaling(self, x_train: np.ndarray) -> Scaling:
        """The scaling for every shard, from the training samples only (default: none)."""
        del x_train
        return Scaling(offset=(0.0,), scale=(1.0,))

    @abstractmethod
    def _fit(self, model: nn.Module, data: Dataset, config: Mapping[str, Any]) -> dict[str, float]:
        """Train in place (``config``: the task's defaults under the round's)."""

    @abstractmethod
    def _score(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """The evaluation metrics."""

    # -- the Task contract ----------------------------------------------------------

    def build_model(self, seed: int | None = None) -> nn.Module:
        """A fresh float32 model whose weights depend only on ``seed`` (default 0).

        Uses a forked torch RNG, so the caller's global random state is untouched.
        """
        chosen = DEFAULT_MODEL_SEED if seed is None else _check_seed(seed, "model seed")
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(chosen)  # the CPU's, as fork_rng restores
            model = self._network()
        return model.float()

    def load_data(self, source: ShardSource) -> Dataset:
        """Read and validate a shard of this task: a shard file, a folder holding exactly
        one (a data volume), its bytes or a binary file object."""
        from secfl.tasks._shards import load_shard

        return load_shard(source, task=self.name)

    def train(self, model: nn.Module, data: Dataset, config: Mapping[str, Any]) -> dict[str, float]:
        """Deterministic minibatch SGD (:mod:`secfl.tasks._training`); ``loss``, ``n``..."""
        self._check_data(data)
        return self._fit(model, data, {**self.default_config, **dict(config)})

    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """The task's metrics of ``model`` on ``data`` (``loss`` and ``n`` among them)."""
        self._check_data(data)
        return self._score(model, data)

    def _check_data(self, data: Dataset) -> None:
        if not isinstance(data, Dataset):
            raise TaskError(f"{self.name}: expected a Dataset, got {type(data).__name__}")
        if data.task and data.task != self.name:
            raise TaskError(f"{self.name}: the data belongs to task '{data.task}'")
        if tuple(data.x.shape[1:]) != self.feature_shape:
            raise TaskError(
                f"{self.name}: features of shape {tuple(data.x.shape[1:])}, "
                f"expected {self.feature_shape}"
            )
        if data.y.is_floating_point() != (self.target == "value"):
            kind = "float targets" if data.y.is_floating_point() else "class labels"
            raise TaskError(f"{self.name}: the data holds {kind}, not this task's")

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class ClassificationTask(ArrayTask):
    """A supervised classifier over fixed-shape features (cross-entropy; ``loss``,
    ``accuracy`` and ``n``); subclasses also set ``num_classes``."""

    target = "class"
    #: Labels are ``0 .. num_classes - 1``.
    num_classes: int

    def _fit(self, model: nn.Module, data: Dataset, config: Mapping[str, Any]) -> dict[str, float]:
        """See :func:`secfl.tasks._training.train_classifier`."""
        from secfl.tasks._training import train_classifier

        return train_classifier(model, data, config)

    def _score(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """Mean cross-entropy ``loss``, ``accuracy`` and ``n``."""
        from secfl.tasks._training import evaluate_classifier

        return evaluate_classifier(model, data)


def _check_seed(seed: Any, what: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TaskError(f"{what}: {seed!r} is not an integer")
    if not 0 <= int(seed) < 2**63:
        raise TaskError(f"{what}: {seed} is not from 0 to 2**63 - 1")
    return int(seed)
