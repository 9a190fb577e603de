"""Who gets which sample: held-out sets, IID and Dirichlet label-skew partitions.

Every function draws from the ``numpy.random.Generator`` it is given, in a fixed
order, so one seed gives one partition (for a given numpy version). Index arrays
come back sorted: a shard keeps the dataset's order, training shuffles it anyway.

Dirichlet(alpha) label skew (Hsu et al., 2019, the usual non-IID benchmark): for
each class in ascending order, its samples are shuffled and cut among the clients
in proportions drawn from Dir(alpha, …, alpha). Small alpha (0.1) gives each client
a few dominant classes; large alpha (100) approaches IID. Minimum size rule: a
partition in which some client has fewer than ``min_samples`` samples is drawn
again, up to :data:`MAX_DRAWS` times; if the last draw still falls short, the short
clients are topped up deterministically, lowest client number first, each taking
the highest-numbered samples of the client that currently holds the most (lowest
number on ties) until it has ``min_samples``. The caller ensures there are at least
``clients × min_samples`` samples, so this always ends.
"""

from __future__ import annotations

import numpy as np

from secfl.errors import TaskError

__all__ = [
    "MAX_DRAWS",
    "dirichlet_partition",
    "holdout",
    "iid_partition",
    "subsample",
]

#: How many times a Dirichlet partition is redrawn before short clients are topped up.
MAX_DRAWS = 100


def subsample(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform random subset of ``samples`` of the indices ``0 .. n - 1``, sorted."""
    if not 1 <= samples <= n:
        raise TaskError(f"samples: {samples} is not from 1 to the dataset's {n}")
    return np.sort(rng.permutation(n)[:samples])


def holdout(
    y: np.ndarray,
    pool: np.ndarray,
    *,
    validation_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified ``(train, validation, test)`` indices out of ``pool``.

    Per class, ``round(count × fraction)`` samples go to the test set and to the
    validation set, the rest to training; so each held-out set has the pool's class
    balance whatever the partition of the training samples.
    """
    train, validation, test = [], [], []
    for label in np.unique(y[pool]):
        members = rng.permutation(pool[y[pool] == label])
        n_test = int(np.floor(len(members) * test_fraction + 0.5))
        n_val = int(np.floor(len(members) * validation_fraction + 0.5))
        test.append(members[:n_test])
        validation.append(members[n_test : n_test + n_val])
        train.append(members[n_test + n_val :])
    parts = (_sorted_indices(train), _sorted_indices(validation), _sorted_indices(test))
    for what, part in zip(("training", "validation", "test"), parts, strict=True):
        if part.size == 0:
            raise TaskError(f"split: too few samples ({pool.size}) for a {what} set")
    return parts


def _sorted_indices(pieces: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(pieces)).astype(np.int64)


def iid_partition(indices: np.ndarray, clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A uniform shuffle cut into ``clients`` parts whose sizes differ by at most one."""
    shuffled = rng.permutation(indices)
    return [np.sort(part) for part in np.array_split(shuffled, clients)]


def dirichlet_partition(
    indices: np.ndarray,
    y: np.ndarray,
    clients: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_samples: int,
) -> list[np.ndarray]:
    """Per-class Dirichlet(alpha) proportions; every client ends with ``min_samples``."""
    if indices.size < clients * min_samples:
        raise TaskError(
            f"split: {indices.size} training samples cannot give {clients} clients "
            f"{min_samples} each"
        )
    labels = np.unique(y[indices])
    parts: list[list[int]] = []
    for _ in range(MAX_DRAWS):
        parts = [[] for _ in range(clients)]
        for label in labels:
            members = rng.permutation(indices[y[indices] == label])
            proportions = rng.dirichlet(np.full(clients, alpha))
            cuts = np.floor(np.cumsum(proportions) * len(members)).astype(np.int64)[:-1]
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_samples:
            break
    else:
        _top_up(parts, min_samples)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _top_up(parts: list[list[int]], min_samples: int) -> None:
    """Move samples from the largest client to each short one (module docstring's rule)."""
    for part in parts:
        part.sort()
    for client, part in enumerate(parts):
        while len(part) < min_samples:
            sizes = [len(p) for p in parts]
            donor = int(np.argmax(sizes))
            movable = min(min_samples - len(part), sizes[donor] - min_samples)
            if donor == client or movable <= 0:  # impossible when enough samples exist
                raise TaskError("split: not enough samples to give every client its minimum")
            moved = parts[donor][-movable:]
            del parts[donor][-movable:]
            part.extend(moved)
        part.sort()
