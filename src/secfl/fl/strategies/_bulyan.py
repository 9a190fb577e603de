"""Bulyan (El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018), over Krum.

With ``f`` the number of Byzantine participants tolerated (the rule needs
``n >= 4f + 3`` updates):

1. selection: Krum is applied ``theta = n - 2f`` times, each time to the updates
   not yet selected, and its choice moved to the selection set. The later
   applications see fewer than ``2f + 3`` updates; Krum's score then sums the
   distances to ``max(1, n' - f - 2)`` nearest neighbours (as Flower's
   ``aggregate_bulyan`` does);
2. aggregation: at each coordinate, the ``beta = theta - 2f`` selected deltas
   closest to the selection's median are averaged, and added to the global model.

Distances are those of the floating-point tensors; integer and bool tensors go
through step 2 on their values (rounded). Sample counts are ignored. Ties go to
the earlier update (selection) or the earlier selected one (step 2).
:meth:`Bulyan.selected` names the selection set in the order it was chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies import _robust
from secfl.fl.strategies._base import Params, Strategy, Update
from secfl.fl.strategies._registry import register_strategy

__all__ = ["Bulyan", "closest_to_median_mean", "krum_selection"]


def closest_to_median_mean(rows: np.ndarray, beta: int) -> np.ndarray:
    """At each column of ``rows``, the mean of the ``beta`` values closest to the median."""
    gap = np.abs(rows - np.median(rows, axis=0))
    order = np.argsort(gap, axis=0, kind="stable")[:beta]
    return np.take_along_axis(rows, order, axis=0).mean(axis=0)


def krum_selection(dist: np.ndarray, f: int, theta: int) -> list[int]:
    """Indices chosen by ``theta`` successive Krums on the not yet chosen rows of ``dist``."""
    remaining = list(range(dist.shape[0]))
    chosen: list[int] = []
    for _ in range(theta):
        sub = dist[np.ix_(remaining, remaining)]
        best = remaining[int(np.argmin(_robust.krum_scores(sub, f)))]
        chosen.append(best)
        remaining.remove(best)
    return chosen


@register_strategy
class Bulyan(Strategy):
    """Krum selection, then a coordinate-wise trimmed mean around the median."""

    name = "bulyan"

    def __init__(self, *, f: int = 1, client_config: Mapping[str, Any] | None = None) -> None:
        super().__init__(client_config=client_config)
        self.f = _robust.count_setting(f, f"{self.name}: f", 0)
        self._selected: list[str] | None = None

    def fewest_updates(self) -> int:
        return 4 * self.f + 3

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        self._selected = None
        _robust.check_inputs(self.name, global_params, updates)
        n, f = len(updates), self.f
        if n < 4 * f + 3:
            raise FlError(f"{self.name}: needs n >= 4f + 3 updates (n={n}, f={f})")
        theta = n - 2 * f
        beta = theta - 2 * f
        dist = _robust.sq_distances(self.name, global_params, updates)
        kept = [updates[i] for i in krum_selection(dist, f, theta)]
        result = _robust.combine(
            self.name, global_params, kept, lambda r: closest_to_median_mean(r, beta)
        )
        self._selected = [u.sender for u in kept]
        return result

    def selected(self) -> list[str] | None:
        return None if self._selected is None else list(self._selected)

    def settings(self) -> dict[str, Any]:
        return {"f": self.f, **super().settings()}
