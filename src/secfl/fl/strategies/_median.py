"""Coordinate-wise median (Yin et al., "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018).

Each coordinate of the new model is the global model's plus the median of the
updates' deltas at that coordinate (the mean of the two middle values when the
round has an even number of updates). Sample counts are ignored: a participant
cannot buy weight by claiming a large data set. Integer and bool tensors take the
(rounded) median of their values. The arithmetic is float64; the result has the
global model's dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence

from secfl.fl.strategies import _robust
from secfl.fl.strategies._base import Params, Strategy, Update
from secfl.fl.strategies._registry import register_strategy

__all__ = ["Median"]


@register_strategy
class Median(Strategy):
    """The coordinate-wise median of the round's deltas (module docstring)."""

    name = "median"

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        _robust.check_inputs(self.name, global_params, updates)
        return _robust.combine(self.name, global_params, updates, _robust.median)
