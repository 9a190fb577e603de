"""``secfl data split``: one shard per collaborator, a validation and a test shard.

Files written into ``out``:

- ``client-000.safetensors`` … one per collaborator (its training data);
- ``validation.safetensors``: what the policy gives the aggregator for the
  clone-and-sample audit;
- ``test.safetensors``: held out for the final evaluation;
- ``split.json``: the parameters, the scaling and every shard's size, label counts
  and SHA-256 (no timestamps: same inputs, same bytes).

The order of random draws is fixed (optional subsample, stratified hold-out, then
the partition of the training samples), all from ``numpy.random.default_rng(seed)``,
so the same task, seed and options give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secfl._internal import files
from secfl.errors import TaskError
from secfl.tasks import _partition as part
from secfl.tasks._base import _check_seed
from secfl.tasks._pool import Pool, fitted_scaling, pool_of
from secfl.tasks._registry import get_task
from secfl.tasks._shards import FORMAT, canonical_json, encode_shard
from secfl.tasks._split_folder import (
    MANIFEST,
    SHARD_MODE,
    check_folder,
    only_ours,
    prepare,
    remove_staged_leftovers,
    stage,
)

__all__ = [
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MAX_CLIENTS",
    "ShardSummary",
    "SplitReport",
    "shard_name",
    "split",
]

MANIFEST_FORMAT = "secfl-split/1"
#: More shards than this is surely a mistake on the command line.
MAX_CLIENTS = 10_000


def shard_name(index: int) -> str:
    """The file name of collaborator ``index``'s shard."""
    return f"client-{index:03d}.safetensors"


@dataclass(frozen=True)
class ShardSummary:
    """One written shard: file name, role, collaborator number, size and labels."""

    file: str
    role: str
    index: int | None
    samples: int
    label_counts: tuple[int, ...]
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "role": self.role,
            "index": self.index,
            "samples": self.samples,
            "label_counts": list(self.label_counts),
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class SplitReport:
    """What :func:`split` wrote (also saved as ``split.json``)."""

    task: str
    out: Path
    seed: int
    clients: int
    partition: Mapping[str, Any]
    validation_fraction: float
    test_fraction: float
    samples: int | None
    min_samples: int
    scaling: Mapping[str, list[float]]
    split_id: str
    shards: tuple[ShardSummary, ...] = field(default_factory=tuple)
    #: A regression's target scaling (``None``: a classification, whose shards count labels).
    target_scaling: Mapping[str, list[float]] | None = None

    @property
    def client_shards(self) -> list[ShardSummary]:
        return [s for s in self.shards if s.role == "client"]

    def path(self, shard: ShardSummary | str) -> Path:
        """The path of a shard (by summary or file name)."""
        return self.out / (shard.file if isinstance(shard, ShardSummary) else shard)

    def to_json(self) -> dict[str, Any]:
        extra = {} if self.target_scaling is None else {"target_scaling": self.target_scaling}
        return {
            **extra,
            "format": MANIFEST_FORMAT,
            "task": self.task,
            "seed": self.seed,
            "clients": self.clients,
            "partition": dict(self.partition),
            "validation_fraction": self.validation_fraction,
            "test_fraction": self.test_fraction,
            "samples": self.samples,
            "min_samples": self.min_samples,
            "scaling": dict(self.scaling),
            "split": self.split_id,
            "shards": [s.to_json() for s in self.shards],
        }


def split(
    task: str | Any,
    clients: int,
    *,
    iid: bool = True,
    dirichlet_alpha: float | None = None,
    seed: int = 0,
    out: Path | str,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    samples: int | None = None,
    min_samples: int = 10,
    overwrite: bool = False,
) -> SplitReport:
    """Partition ``task``'s dataset into ``clients`` shards plus validation and test.

    ``task`` is a built-in task's name, or a task object with ``load_pool()`` (see
    :mod:`secfl.tasks._pool`). The partition is Dirichlet label skew when
    ``dirichlet_alpha`` is given (classifications only), else IID
    (``iid=False`` without an alpha is refused). ``samples`` first keeps a uniform
    random subset of the dataset (smaller experiments); every client gets at least
    ``min_samples`` training samples. Existing shard files in ``out`` are refused
    unless ``overwrite``, which removes all of them first (so no stale
    ``client-NNN`` of an earlier, larger split remains).
    """
    _check_args(clients, dirichlet_alpha, iid, validation_fraction, test_fraction, min_samples)
    seed = _check_seed(seed, "seed")
    spec = pool_of(get_task(task) if isinstance(task, str) else task)
    if spec.kind == "value" and dirichlet_alpha is not None:
        raise TaskError(
            f"dirichlet: label skew needs class labels, and {spec.name} is a regression; "
            "split it IID (leave out --dirichlet)"
        )
    x, y = spec.x, spec.y
    rng = np.random.default_rng(seed)
    strata = y if spec.kind == "class" else np.zeros(y.shape[0], dtype=np.int64)
    train, validation, test = _draw(strata, samples, validation_fraction, test_fraction, rng)
    if train.size < clients * min_samples:
        raise TaskError(
            f"split: {train.size} training samples cannot give {clients} clients "
            f"at least {min_samples} each"
        )
    scaling = fitted_scaling(spec, x[train])  # checked: a bad one is refused here
    partition, parts = _partition(train, y, clients, dirichlet_alpha, min_samples, rng)
    target: dict[str, Any] = {"num_classes": spec.num_classes}
    if spec.kind == "value":
        target = {"target": "value", "target_scaling": spec.fit_target_scaling(y[train]).to_json()}
    params = {
        "format": FORMAT,
        "task": spec.name,
        "seed": seed,
        "clients": clients,
        "partition": partition,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
        "samples": samples,
        "min_samples": min_samples,
        "scaling": scaling,
    }
    if spec.kind == "value":
        params["target_scaling"] = target["target_scaling"]
    try:
        split_id = hashlib.sha256(canonical_json(params).encode()).hexdigest()
    except ValueError:  # NaN or infinity in the task's scaling
        raise TaskError(
            f"split: {spec.name}'s scaling (fit_scaling) is not finite numbers; fix the "
            "task's fit_scaling"
        ) from None
    folder = Path(out)
    check_folder(folder, overwrite)
    common = {
        "task": spec.name,
        "clients": clients,
        **target,
        "feature_shape": list(spec.feature_shape),
        "storage_dtype": str(x.dtype),
        "scaling": scaling,
        "partition": partition,
        "seed": seed,
        "split": split_id,
    }
    jobs: list[tuple[str, str, int | None, np.ndarray]] = [
        *((shard_name(i), "client", i, indices) for i, indices in enumerate(parts)),
        ("validation.safetensors", "validation", None, validation),
        ("test.safetensors", "test", None, test),
    ]
    # every shard encoded, checked and staged under a temporary name (one in memory at a
    # time) before any earlier file changes: bad input loses nothing
    staged: list[tuple[Path, Path, ShardSummary]] = []
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        only_ours(folder)
        remove_staged_leftovers(folder)  # a split killed while staging left these
        for file, role, index, indices in jobs:
            meta = {**common, "role": role, "index": index}
            _, blob, summary = _encode_one(file, spec, x, y, indices, meta)
            staged.append((stage(folder / file, blob), folder / file, summary))
        prepare(folder, keep={final.name for _, final, _ in staged})
        for temporary, final, _ in staged:
            os.replace(temporary, final)
    except OSError as exc:
        raise TaskError(f"split: cannot write in '{folder}': {exc.strerror or exc}") from None
    finally:
        for temporary, _, _ in staged:
            temporary.unlink(missing_ok=True)
    summaries = tuple(summary for _, _, summary in staged)
    report = SplitReport(
        task=spec.name,
        out=folder,
        seed=seed,
        clients=clients,
        partition=partition,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        samples=samples,
        min_samples=min_samples,
        scaling=scaling,
        split_id=split_id,
        shards=summaries,
        target_scaling=target.get("target_scaling"),
    )
    _write_manifest(report)
    return report


def _draw(
    y: np.ndarray,
    samples: int | None,
    validation_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training, validation and test samples: an optional uniform subsample of
    ``samples``, then a stratified hold-out (the first draws from ``rng``)."""
    pool = np.arange(y.shape[0], dtype=np.int64)
    if samples is not None:
        pool = part.subsample(y.shape[0], samples, rng)
    return part.holdout(
        y, pool, validation_fraction=validation_fraction, test_fraction=test_fraction, rng=rng
    )


def _partition(
    train: np.ndarray,
    y: np.ndarray,
    clients: int,
    alpha: float | None,
    min_samples: int,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """How the training samples are shared out (as recorded in every shard), and the
    sample indices of each client."""
    if alpha is None:
        return {"kind": "iid"}, part.iid_partition(train, clients, rng)
    parts = part.dirichlet_partition(train, y, clients, float(alpha), rng, min_samples=min_samples)
    return {"kind": "dirichlet", "alpha": float(alpha)}, parts


def _encode_one(
    file: str,
    spec: Pool,
    x: np.ndarray,
    y: np.ndarray,
    indices: np.ndarray,
    meta: dict[str, Any],
) -> tuple[str, bytes, ShardSummary]:
    """The shard of samples ``indices`` (``meta``: everything but the counts), encoded
    and checked, with its summary."""
    counts: list[int] = []
    meta = {**meta, "samples": int(indices.size)}
    if spec.num_classes is not None:
        counts = np.bincount(y[indices], minlength=spec.num_classes).tolist()
        meta["label_counts"] = counts
    blob = encode_shard(np.ascontiguousarray(x[indices]), y[indices], meta)
    digest = hashlib.sha256(blob).hexdigest()
    summary = ShardSummary(file, meta["role"], meta["index"], int(indices.size), tuple(counts),
                           digest)  # fmt: skip
    return file, blob, summary


def _write_manifest(report: SplitReport) -> None:
    """``split.json``: the report, keys sorted, no timestamps (same inputs, same bytes)."""
    path = report.out / MANIFEST
    text = json.dumps(report.to_json(), sort_keys=True, indent=2, allow_nan=False) + "\n"
    try:
        files.atomic_write(path, text.encode("utf-8"), mode=SHARD_MODE, fsync=False)
    except OSError as exc:
        raise TaskError(f"split: cannot write '{path}': {exc.strerror or exc}") from None


def _check_args(
    clients: Any,
    alpha: Any,
    iid: bool,
    validation_fraction: Any,
    test_fraction: Any,
    min_samples: Any,
) -> None:
    if isinstance(clients, bool) or not isinstance(clients, int) or not 1 <= clients <= MAX_CLIENTS:
        raise TaskError(f"clients: {clients!r} is not from 1 to {MAX_CLIENTS}")
    if alpha is None and not iid:
        raise TaskError("a non-IID split needs a Dirichlet alpha (--dirichlet ALPHA)")
    if alpha is not None and not _positive32(alpha):
        # float32, as the shards record it: 1e-300 and 1e308 were split whole, then
        # refused by the shard encoder with a misleading message (a hostile review)
        raise TaskError(
            f"dirichlet alpha: {alpha!r} is not a number > 0 that float32 holds "
            "(from about 1.2e-38 to 3.4e38)"
        )
    for what, value in (("validation", validation_fraction), ("test", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise TaskError(f"{what} fraction: {value!r} is not between 0 and 1")
    if validation_fraction + test_fraction >= 0.9:
        raise TaskError("validation and test fractions leave under 10% of the data to train on")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise TaskError(f"min_samples: {min_samples!r} is not a positive integer")


def _positive32(value: Any) -> bool:
    """A number whose float32 is finite and > 0 (and not below float32's normal range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        with np.errstate(over="ignore"):
            single = np.float32(value)
    except OverflowError:
        return False
    return bool(np.isfinite(single) and single >= np.finfo(np.float32).tiny)
