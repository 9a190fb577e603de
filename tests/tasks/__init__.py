"""Tests of secfl.tasks: shared helpers (real sklearn data, Debian's Fashion-MNIST)."""

from __future__ import annotations

import os

import numpy as np
import pytest


def require_fashion_mnist() -> None:
    """Skip, saying why, when Debian's dataset is absent; under CI its absence fails."""
    from secfl.tasks import _fashion_mnist as fashion_mnist

    if fashion_mnist.available():
        return
    where = fashion_mnist.dataset_dir()
    if os.environ.get("CI"):
        pytest.fail(f"CI must have Fashion-MNIST in {where}: apt-get install dataset-fashion-mnist")
    pytest.skip(f"Fashion-MNIST not installed in {where} (apt-get install dataset-fashion-mnist)")


def dominant_classes(counts: list[int] | tuple[int, ...], share: float = 0.8) -> int:
    """The fewest classes that together hold ``share`` of a shard's samples."""
    ordered = np.sort(np.asarray(counts))[::-1]
    cumulative = np.cumsum(ordered) / ordered.sum()
    return int(np.searchsorted(cumulative, share - 1e-12) + 1)
