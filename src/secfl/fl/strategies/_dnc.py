"""Divide-and-Conquer, DnC (Shejwalkar and Houmansadr, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021,
Algorithm 2).

Attacks such as ALIE, Min-Max and Min-Sum stay within the honest spread coordinate
by coordinate and in distance, but the colluding updates are shifted the *same*
way: along the direction of largest variance of the round they stand out. With
``f`` the number of attackers tolerated, each of ``iterations`` rounds of
filtering:

1. samples ``min(dims, d)`` of the ``d`` floating-point coordinates without
   replacement (the SVD of the whole update would be too costly, and a random
   subset keeps the attackers' shared shift);
2. centres the sampled deltas on their mean ``mu`` and takes the top right
   singular vector ``v`` of the centred matrix;
3. scores each update by ``((x_i - mu) @ v) ** 2`` and keeps the
   ``floor(n - c*f)`` lowest scores (``c``, the filtering fraction, removes more
   than ``f`` when above 1, as the paper's reference code allows).

The good set is the intersection of the kept sets, and the new model is the global
one plus the plain mean of the good deltas (integer and bool tensors: the rounded
median of the whole round's values). Sample counts are ignored. Ties in scores keep
the earlier update. The coordinates come from ``numpy.random.default_rng([*secret,
seed, round])`` (the aggregator's secret: :mod:`._secret`): the same round always
draws the same subsets, and no site can draw them from the policy's seed. If the intersection is
empty (``iterations * c * f >= n`` makes this possible) the global model is kept and
a warning logged. The rule needs ``floor(n - c*f) >= 1`` and at least one
floating-point coordinate. :meth:`DnC.selected` names the good set in round order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies import _robust, _signals
from secfl.fl.strategies._base import Params, Strategy, Update, positive
from secfl.fl.strategies._registry import register_strategy
from secfl.fl.strategies._secret import SecretDraws

__all__ = ["DnC", "dnc_good"]

log = logging.getLogger("secfl.fl.strategies._dnc")


def dnc_good(scores: np.ndarray, keep: int) -> list[int]:
    """The indices kept by every row of ``scores`` (``(iterations, n)``): the
    intersection of each row's ``keep`` lowest (ties to the earlier index), in order."""
    good = set(range(scores.shape[1]))
    for row in scores:
        good &= {int(i) for i in np.argsort(row, kind="stable")[:keep]}
    return sorted(good)


#: The most updates ``c * f`` may filter out of a round (far beyond any federation).
MAX_FILTERED = 1_000_000


@register_strategy
class DnC(SecretDraws, Strategy):
    """Spectral filtering on random coordinate subsets (module docstring)."""

    name = "dnc"

    def __init__(
        self,
        *,
        f: int = 1,
        iterations: int = 5,
        dims: int = 10000,
        c: float = 1.0,
        seed: int = 0,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(client_config=client_config)
        self.f = _robust.count_setting(f, f"{self.name}: f", 0)
        self.iterations = _robust.count_setting(
            iterations, f"{self.name}: iterations", 1, _robust.MAX_ITERATIONS
        )
        self.dims = _robust.count_setting(dims, f"{self.name}: dims", 1, _robust.MAX_DIMS)
        self.c = positive(c, f"{self.name}: c")
        if self.c * self.f > MAX_FILTERED:
            raise FlError(
                f"{self.name}: c * f is {self.c * self.f:g}; it filters at most {MAX_FILTERED} "
                "updates a round"
            )
        self.seed = _robust.count_setting(seed, f"{self.name}: seed", 0)
        self._selected: list[str] | None = None
        #: The last round's scores, ``(iterations, n)`` (for the audit and the tests).
        self.scores: np.ndarray | None = None

    def fewest_updates(self) -> int:
        # the smallest n with floor(n - c*f) >= 1, computed as aggregate computes it
        # (c*f is bounded, so floating point settles this within a step or two)
        n = max(1, math.floor(self.c * self.f))
        while math.floor(n - self.c * self.f) < 1:
            n += 1
        while n > 1 and math.floor(n - 1 - self.c * self.f) >= 1:
            n -= 1
        return n

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        self._selected = None
        self.scores = None
        _robust.check_inputs(self.name, global_params, updates)
        n = len(updates)
        keep = math.floor(n - self.c * self.f)
        if keep < 1:
            raise FlError(
                f"{self.name}: needs n - c*f >= 1 updates to keep (n={n}, c={self.c}, f={self.f})"
            )
        rng = _signals.round_rng(self.name, self.seed, round, self.key)
        deltas = _signals.delta_matrix(global_params, updates)
        if deltas.shape[1] == 0:
            raise FlError(f"{self.name}: the model has no floating-point tensor to filter on")
        self.scores = _signals.dnc_scores(
            deltas, dims=self.dims, iterations=self.iterations, rng=rng
        )
        good = dnc_good(self.scores, keep)
        kept = [updates[i] for i in good]
        if good:
            delta = deltas[good].mean(axis=0)
        else:
            log.warning("round %d: dnc's filters keep no update in common; model kept", round)
            delta = np.zeros(deltas.shape[1], dtype=np.float64)
        result = _signals.kept_model(self.name, global_params, kept, delta, updates)
        self._selected = [u.sender for u in kept]
        return result

    def selected(self) -> list[str] | None:
        return None if self._selected is None else list(self._selected)

    def settings(self) -> dict[str, Any]:
        return {
            "f": self.f,
            "iterations": self.iterations,
            "dims": self.dims,
            "c": self.c,
            "seed": self.seed,
            **super().settings(),
        }
