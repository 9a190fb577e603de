"""Coordinate-wise trimmed mean (Yin et al., "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates", ICML 2018).

At each coordinate the ``k = floor(beta * n)`` largest and ``k`` smallest deltas
of the round are dropped and the remaining ``n - 2k`` averaged; the new model is
the global one plus that mean. ``beta`` (``0 <= beta < 0.5``; 0 is the plain
mean) is the fraction trimmed at *each* end, as in the paper and in
``scipy.stats.trim_mean``'s ``proportiontocut`` (which Flower's
``aggregate_trimmed_avg`` follows). Sample counts are ignored: a participant cannot
buy weight by claiming a large data set. Integer and bool tensors take the
(rounded) trimmed mean of their values. Float64 arithmetic, the model's dtypes out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies import _robust
from secfl.fl.strategies._base import Params, Strategy, Update, positive
from secfl.fl.strategies._registry import register_strategy

__all__ = ["TrimmedMean", "trimmed_mean"]


def trimmed_mean(rows: np.ndarray, k: int) -> np.ndarray:
    """The mean of each column of ``rows`` without its ``k`` largest and ``k`` smallest."""
    n = rows.shape[0]
    return np.sort(rows, axis=0)[k : n - k].mean(axis=0)


@register_strategy
class TrimmedMean(Strategy):
    """The coordinate-wise ``beta``-trimmed mean of the round's deltas (module docstring)."""

    name = "trimmed-mean"

    def __init__(
        self, *, beta: float = 0.1, client_config: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(client_config=client_config)
        self.beta = positive(beta, "trimmed-mean: beta", allow_zero=True)
        if self.beta >= 0.5:
            raise FlError(
                f"trimmed-mean: beta must be below 0.5 (it is trimmed at each end), not {beta!r}"
            )

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        _robust.check_inputs(self.name, global_params, updates)
        n = len(updates)
        k = math.floor(self.beta * n)
        if n <= 2 * k:  # cannot happen for beta < 0.5; kept as the rule's stated precondition
            raise FlError(
                f"trimmed-mean: needs n > 2*floor(beta*n) updates (n={n}, beta={self.beta})"
            )
        return _robust.combine(self.name, global_params, updates, lambda r: trimmed_mean(r, k))

    def settings(self) -> dict[str, Any]:
        return {"beta": self.beta, **super().settings()}
