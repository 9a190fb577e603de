"""FLAME (Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX
Security 2022).

Three steps, each covering what the others leave:

1. admission: HDBSCAN on the pairwise cosine distances ``1 - cos(x_i, x_j)`` of the
   deltas, with ``min_cluster_size = n // 2 + 1``, ``min_samples = 1`` and a single
   cluster allowed (:func:`._signals.flame_clusters`); only the largest cluster
   (with that minimum size there is at most one) is admitted. Updates pointing
   elsewhere than the honest majority (backdoors, sign flips) are outliers, and so
   are the majority's stragglers that HDBSCAN peels off before the cluster falls
   below its minimum size (a false positive or a few per round, by design);
2. adaptive clipping: with ``S`` the median of *all* deltas' Euclidean norms, each
   admitted delta is scaled to norm at most ``S``, so a scaled-up update that got
   in weighs as one honest update;
3. adaptive noise: the admitted, clipped deltas are averaged and Gaussian noise
   ``N(0, (lam * S)^2)`` added to every floating-point coordinate (``lam``, the
   paper's lambda, defaults to its 0.001 for image classification; ``lam: 0``
   turns the noise off), to wash out what remains of a backdoor.

The paper clusters the local models; their cosines all sit near 1 since they share
the global model, so here (as in most reimplementations) the deltas are clustered,
which is what the distances are meant to compare. Integer and bool tensors take
the rounded median of the whole round's values, without noise. The noise comes
from ``numpy.random.default_rng([*secret, seed, round])`` (:mod:`._secret`). Sample
counts are ignored. If HDBSCAN admits nobody the global model is kept and a warning
logged.
:meth:`Flame.selected` names the admitted senders in round order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies import _robust, _signals
from secfl.fl.strategies._base import Params, Strategy, Update, positive
from secfl.fl.strategies._registry import register_strategy
from secfl.fl.strategies._secret import SecretDraws

__all__ = ["Flame", "admitted"]

log = logging.getLogger("secfl.fl.strategies._flame")


def admitted(labels: np.ndarray) -> list[int]:
    """The indices of the largest cluster of ``labels`` (-1 = outlier; ties to the
    smaller label), in order; empty if every label is -1."""
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return []
    best = int(np.argmax(np.bincount(clustered)))
    return [int(i) for i in np.flatnonzero(labels == best)]


@register_strategy
class Flame(SecretDraws, Strategy):
    """Cosine clustering, median-norm clipping and Gaussian noise (module docstring)."""

    name = "flame"

    def __init__(
        self,
        *,
        lam: float = 0.001,
        seed: int = 0,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(client_config=client_config)
        self.lam = positive(lam, f"{self.name}: lam", allow_zero=True)
        self.seed = _robust.count_setting(seed, f"{self.name}: seed", 0)
        self._selected: list[str] | None = None
        #: The last round's HDBSCAN labels and clipping bound ``S``.
        self.labels: np.ndarray | None = None
        self.bound: float | None = None

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        self._selected = None
        self.labels = None
        self.bound = None
        _robust.check_inputs(self.name, global_params, updates)
        rng = _signals.round_rng(self.name, self.seed, round, self.key)
        deltas = _signals.delta_matrix(global_params, updates)
        d = deltas.shape[1]
        if d == 0:
            raise FlError(f"{self.name}: the model has no floating-point tensor to cluster")
        self.labels = _signals.flame_clusters(deltas)
        good = admitted(self.labels)
        self.bound = float(np.median(_signals.row_norms(deltas)))
        kept = [updates[i] for i in good]
        if good:
            delta = _signals.clip_to(deltas[good], self.bound).mean(axis=0)
            if self.lam > 0:
                delta = delta + rng.normal(0.0, self.lam * self.bound, size=d)
        else:
            log.warning("round %d: flame admits no update; the global model is kept", round)
            delta = np.zeros(d, dtype=np.float64)
        result = _signals.kept_model(self.name, global_params, kept, delta, updates)
        self._selected = [u.sender for u in kept]
        return result

    def selected(self) -> list[str] | None:
        return None if self._selected is None else list(self._selected)

    def settings(self) -> dict[str, Any]:
        return {"lam": self.lam, "seed": self.seed, **super().settings()}
