"""Krum and Multi-Krum (Blanchard et al., "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017).

With ``f`` the number of Byzantine participants tolerated, each update's score is
the sum of its squared Euclidean distances to its ``n - f - 2`` nearest other
updates (over the floating-point tensors; distances between models and between
deltas are the same). The rule needs ``n > 2f + 2`` updates.

- ``krum`` keeps the one update with the smallest score: the new model is that
  update's model (the global model plus its delta);
- ``multi-krum`` keeps the ``m`` best-scored updates (``1 <= m <= n``; default
  ``n - f``) and adds the plain mean of their deltas to the global model.

Integer and bool tensors (counters) take the rounded median of the whole round's
values under both: Krum's distances do not look at them, and attackers whose weights
look central are the ones kept, so the kept set may be theirs.

Sample counts are ignored, as in the paper (Flower's ``aggregate_krum`` weights
Multi-Krum's mean by sample count). Ties go to the earlier update of the round.
:meth:`Krum.selected` names the kept senders, best first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies import _robust
from secfl.fl.strategies._base import Params, Strategy, Update
from secfl.fl.strategies._registry import register_strategy

__all__ = ["Krum", "MultiKrum"]


@register_strategy
class Krum(Strategy):
    """The update with the smallest Krum score (module docstring)."""

    name = "krum"

    def __init__(self, *, f: int = 1, client_config: Mapping[str, Any] | None = None) -> None:
        super().__init__(client_config=client_config)
        self.f = _robust.count_setting(f, f"{self.name}: f", 0)
        self._selected: list[str] | None = None

    def fewest_updates(self) -> int:
        return 2 * self.f + 3

    def ranked(self, global_params: Params, updates: Sequence[Update]) -> list[int]:
        """The indices of ``updates`` from the best Krum score to the worst (checked)."""
        _robust.check_inputs(self.name, global_params, updates)
        n = len(updates)
        if n <= 2 * self.f + 2:
            raise FlError(f"{self.name}: needs n > 2f + 2 updates (n={n}, f={self.f})")
        dist = _robust.sq_distances(self.name, global_params, updates)
        scores = _robust.krum_scores(dist, self.f)
        return [int(i) for i in np.argsort(scores, kind="stable")]

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        self._selected = None
        best = updates[self.ranked(global_params, updates)[0]]
        self._selected = [best.sender]
        result = {name: best.params[name].copy() for name in _robust.float_names(global_params)}
        result.update(_integers(self.name, global_params, updates))
        return {name: result[name] for name in global_params}

    def selected(self) -> list[str] | None:
        return None if self._selected is None else list(self._selected)

    def settings(self) -> dict[str, Any]:
        return {"f": self.f, **super().settings()}


@register_strategy
class MultiKrum(Krum):
    """The mean of the ``m`` best-scored updates' deltas (module docstring)."""

    name = "multi-krum"

    def __init__(
        self,
        *,
        f: int = 1,
        m: int | None = None,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f=f, client_config=client_config)
        self.m = None if m is None else _robust.count_setting(m, f"{self.name}: m", 1)

    def fewest_updates(self) -> int:
        return max(super().fewest_updates(), self.m or 1)

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        self._selected = None
        ranked = self.ranked(global_params, updates)
        n = len(updates)
        m = n - self.f if self.m is None else self.m
        if not 1 <= m <= n:
            raise FlError(f"{self.name}: needs 1 <= m <= n (m={m}, n={n})")
        kept = [updates[i] for i in ranked[:m]]
        floats = _robust.float_names(global_params)
        result = _robust.combine(self.name, global_params, kept, lambda r: r.mean(axis=0), floats)
        result.update(_integers(self.name, global_params, updates))
        result = {name: result[name] for name in global_params}
        self._selected = [u.sender for u in kept]
        return result

    def settings(self) -> dict[str, Any]:
        return {"m": self.m, **super().settings()}


def _integers(rule: str, global_params: Params, updates: Sequence[Update]) -> Params:
    """Integer and bool tensors: the rounded median of the whole round's values. Krum's
    distances do not look at them, and attackers with central weights are chosen
    first; of the whole round (``n > 2f + 2``) they are fewer than half."""
    floats = set(_robust.float_names(global_params))
    others = [name for name in global_params if name not in floats]
    return _robust.combine(rule, global_params, updates, _robust.median, others)
