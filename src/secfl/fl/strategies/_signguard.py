"""SignGuard (Xu, Huang, Song and Lan, "SignGuard: Byzantine-robust Federated
Learning through Collaborative Malicious Gradient Filtering", ICDCS 2022,
arXiv:2109.05872).

Two filters, each blind to what the other sees, then norm clipping:

1. norm filter: with ``M`` the median of the deltas' Euclidean norms (over all
   floating-point tensors), keep the updates with ``lower * M < ||x_i|| <
   upper * M`` (defaults 0.1 and 3.0, the paper's): scaled-up and vanishing
   updates go;
2. sign filter: on a random subset of a fraction ``coordinates`` (default 0.1) of
   the coordinates, each update's sign statistics (the fractions of positive, zero
   and negative entries) are clustered with mean shift
   (:class:`sklearn.cluster.MeanShift`, bandwidth from
   :func:`sklearn.cluster.estimate_bandwidth` at quantile 0.5, bin seeding,
   orphans left unclustered, as the paper's reference code) and the largest
   cluster kept (ties to the cluster sklearn lists first). Attacks that flip or
   bias signs (sign flipping, ALIE's shift by a multiple of the standard
   deviation, IPM) move these fractions even when norms and distances look
   honest;
3. the kept updates' deltas, each clipped to norm ``M``, are averaged and added to
   the global model (integer and bool tensors: the rounded median of the whole
   round's values).

Where this differs from the reference code (github.com/JianXu95/SignGuard): the
subset is a uniform sample of coordinates, as the paper describes, rather than one
contiguous block; the sign fractions are clustered as they are, without dividing
each column by its maximum (that rescaling turns a single exact zero, among
updates with no other zero, into a full unit of distance); the bandwidth uses
every update rather than 50 of them. A bandwidth of 0 (half the updates with
identical statistics) is raised to 1e-12, so identical statistics form a
cluster. The coordinates come from ``numpy.random.default_rng([*secret, seed,
round])`` (the aggregator's secret: :mod:`._secret`).
Sample counts are ignored. If nothing passes both filters the global model is
kept and a warning logged. :meth:`SignGuard.selected` names the kept senders in
round order.
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

__all__ = ["SignGuard", "largest_sign_cluster", "norm_filter"]

log = logging.getLogger("secfl.fl.strategies._signguard")

#: The smallest mean-shift bandwidth: a round whose sign statistics coincide for
#: half the updates has an estimated bandwidth of 0, which MeanShift refuses.
MIN_BANDWIDTH = 1e-12


def norm_filter(norms: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """The mask of norms strictly between ``lower`` and ``upper`` times their median."""
    med = float(np.median(norms))
    return (norms > lower * med) & (norms < upper * med)


def largest_sign_cluster(features: np.ndarray) -> np.ndarray:
    """The mask of the largest mean-shift cluster of ``features`` (rows), orphans out."""
    from sklearn.cluster import MeanShift, estimate_bandwidth

    n = features.shape[0]
    if n == 1:
        return np.ones(1, dtype=bool)
    with _signals.single_threaded():
        bandwidth = max(float(estimate_bandwidth(features, quantile=0.5)), MIN_BANDWIDTH)
        shift = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False)
        labels = shift.fit_predict(features)
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return np.zeros(n, dtype=bool)
    counts = np.bincount(clustered)
    return np.asarray(labels == int(np.argmax(counts)))


@register_strategy
class SignGuard(SecretDraws, Strategy):
    """Norm and sign-statistics filtering, then clipped averaging (module docstring)."""

    name = "signguard"

    def __init__(
        self,
        *,
        lower: float = 0.1,
        upper: float = 3.0,
        coordinates: float = 0.1,
        seed: int = 0,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(client_config=client_config)
        self.lower = positive(lower, f"{self.name}: lower", allow_zero=True)
        self.upper = positive(upper, f"{self.name}: upper")
        if self.lower >= 1.0 or self.upper <= 1.0:
            raise FlError(
                f"{self.name}: needs lower < 1 < upper so the median norm passes "
                f"(lower={lower!r}, upper={upper!r})"
            )
        self.coordinates = positive(coordinates, f"{self.name}: coordinates")
        if self.coordinates > 1.0:
            raise FlError(f"{self.name}: coordinates is a fraction in (0, 1], not {coordinates!r}")
        self.seed = _robust.count_setting(seed, f"{self.name}: seed", 0)
        self._selected: list[str] | None = None
        #: The last round's masks, by filter (for the audit and the tests).
        self.passed: dict[str, np.ndarray] = {}

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        self._selected = None
        self.passed = {}
        _robust.check_inputs(self.name, global_params, updates)
        rng = _signals.round_rng(self.name, self.seed, round, self.key)
        deltas = _signals.delta_matrix(global_params, updates)
        d = deltas.shape[1]
        if d == 0:
            raise FlError(f"{self.name}: the model has no floating-point tensor to filter on")
        norms = _signals.row_norms(deltas)
        by_norm = norm_filter(norms, self.lower, self.upper)
        cols = np.sort(rng.choice(d, size=max(1, math.floor(self.coordinates * d)), replace=False))
        features = _signals.sign_statistics(deltas, coordinates=cols)
        by_sign = largest_sign_cluster(features)
        self.passed = {"norm": by_norm, "sign": by_sign}
        good = [int(i) for i in np.flatnonzero(by_norm & by_sign)]
        kept = [updates[i] for i in good]
        if good:
            clipped = _signals.clip_to(deltas[good], float(np.median(norms)))
            delta = clipped.mean(axis=0)
        else:
            log.warning("round %d: signguard keeps no update; the global model is kept", round)
            delta = np.zeros(d, dtype=np.float64)
        result = _signals.kept_model(self.name, global_params, kept, delta, updates)
        self._selected = [u.sender for u in kept]
        return result

    def selected(self) -> list[str] | None:
        return None if self._selected is None else list(self._selected)

    def settings(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "coordinates": self.coordinates,
            "seed": self.seed,
            **super().settings(),
        }
