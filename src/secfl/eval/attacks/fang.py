"""Fang et al.'s attacks tailored to an aggregation rule, with partial knowledge.

Fang, Cao, Jia and Gong, "Local Model Poisoning Attacks to Byzantine-Robust
Federated Learning" (USENIX Security 2020), section 4, in the *partial knowledge*
setting: the attackers see only the benign deltas their own colluding participants
computed this round (``colluding``), not the honest participants'. Both estimate the
direction the global model would move in, ``s = sign(mean of the colluders' benign
deltas)`` per coordinate, and push against it. Everything is in delta terms (a
local model minus the global model it started from): the paper's
``w_Re - lambda * s`` is the delta ``-lambda * s``, and ``mu_j ± k sigma_j`` of the
local models is the global parameter plus ``mu_j ± k sigma_j`` of the deltas.

- ``fang-krum`` (section 4.2): every attacker sends ``-lambda * s``. ``lambda``
  starts at the paper's upper bound and is halved until Krum, run on the colluders'
  benign deltas and the crafted one, selects the crafted one (or ``lambda`` falls
  below ``threshold``).
- ``fang-trimmed-mean`` (section 4.3, also the attack on the median): each
  attacker samples every coordinate uniformly in ``[mu_j + 3 sigma_j, mu_j + 4
  sigma_j]`` where ``s_j = -1`` and in ``[mu_j - 4 sigma_j, mu_j - 3 sigma_j]``
  elsewhere, ``mu``, ``sigma`` the colluders' benign mean and standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from secfl.eval.attacks.base import (
    Attack,
    CraftedFromRows,
    Params,
    integer,
    number,
    register_attack,
    rewrite,
)
from secfl.eval.attacks.model import _std
from secfl.fl.strategies._robust import krum_scores

__all__ = [
    "FangKrum",
    "FangTrimmedMean",
    "fang_direction",
    "krum_lambda_bound",
    "trimmed_mean_interval",
]


def fang_direction(rows: np.ndarray) -> np.ndarray:
    """``s``: the sign of the mean of the benign delta ``rows`` per coordinate (``0``
    where the mean is exactly 0, e.g. weights of a pixel no sample ever lights)."""
    return np.sign(rows.mean(axis=0))


def _neighbours(n: int, f: int) -> int:
    """How many nearest others a Krum score sums over, as :func:`krum_scores` does."""
    return min(max(1, n - f - 2), n - 1)


def krum_lambda_bound(rows: np.ndarray, f: int) -> float:
    """The paper's upper bound on ``lambda``, read on the set Krum is simulated on
    (the ``c`` benign ``rows`` plus one crafted delta, Krum's ``f``):

    ``1 / (k sqrt(d)) * min_i sum_{l in N_i} |b_l - b_i| + 1 / sqrt(d) * max_i |b_i|``

    where ``k`` is the number of benign deltas in the crafted delta's Krum
    neighbourhood (the paper's ``m - 2c - 1``: here all of its ``k`` neighbours) and
    ``N_i`` the ``min(k, c - 1)`` benign deltas nearest ``b_i`` (the paper's
    ``m - c - 2`` nearest). Distances are Euclidean, not squared, as in the paper;
    ``|b_i|`` is ``D(w_i, w_Re)``, the distance of a local model to the global one.
    """
    c, d = rows.shape
    k = _neighbours(c + 1, f)
    root = math.sqrt(d)
    far = float(np.linalg.norm(rows, axis=1).max()) / root
    if c < 2:
        return far
    gram = rows @ rows.T
    sq = np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2 * gram
    dist = np.sqrt(np.maximum(sq, 0.0))
    nearest = min(k, c - 1)
    sums = [float(np.sort(np.delete(dist[i], i))[:nearest].sum()) for i in range(c)]
    return min(sums) / (k * root) + far


@register_attack
class FangKrum(CraftedFromRows):
    """Fang et al.'s attack on Krum, partial knowledge (module docstring).

    Krum is simulated, as the paper does, on one crafted delta ``-lambda * s`` and
    the colluders' ``c`` benign deltas (the other attackers send copies of the
    crafted one, which only lower its score at the real server): the crafted delta
    must get the smallest Krum score (:func:`krum_scores` on squared distances, with
    ``f``, default ``c``). It comes first, so it wins a tie, as Krum gives ties to
    the earlier update: with ``f >= c - 2`` each score is the distance to the one
    nearest other, and the crafted delta ties with its nearest benign one by
    symmetry, so it is "selected" when it is at least as close to a benign delta
    as any two benign deltas are to each other. (Simulating ``c`` crafted copies
    instead, as the full-knowledge attack does, would be vacuous: identical copies
    score 0 whatever ``lambda``.)

    ``lambda`` starts at :func:`krum_lambda_bound` and is halved until it is
    selected; if ``lambda`` falls below ``threshold`` first, the attackers send
    ``-lambda * s`` with that last, tiny ``lambda``. :attr:`last_lambda` and
    :attr:`last_selected` tell the outcome of the latest search.

    The attack needs room: where the honest deltas share a large common component
    (several local epochs), even the zero delta can be farther from them than they
    are from each other, and then no ``lambda`` is selected by the server's Krum,
    whatever the attackers know.
    """

    name = "fang-krum"
    colluding = True

    def __init__(self, *, f: int | None = None, threshold: float = 1e-5) -> None:
        self.f = None if f is None else integer(f, "fang-krum: f", 0)
        self.threshold = number(threshold, "fang-krum: threshold")
        self.last_lambda: float | None = None
        self.last_selected: bool | None = None

    def _selected(
        self, a: np.ndarray, b: np.ndarray, cc: float, gram: np.ndarray, lam: float, f: int
    ) -> bool:
        """Whether Krum on ``-lam * s`` (first) and the benign rows selects the former;
        ``a = |b_i|²``, ``b = s · b_i``, ``cc = |s|²``, ``gram`` the rows' inner products."""
        c = a.size
        dist = np.zeros((c + 1, c + 1))
        dist[1:, 1:] = np.maximum(a[:, None] + a[None, :] - 2 * gram, 0.0)
        # |-lam s - b_i|² = lam² |s|² + 2 lam s·b_i + |b_i|²
        dist[0, 1:] = dist[1:, 0] = lam * lam * cc + 2 * lam * b + a
        return int(np.argmin(krum_scores(dist, f))) == 0

    def search(self, rows: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """The crafted delta for the benign ``rows``, its ``lambda`` and whether Krum
        selected it."""
        s = fang_direction(rows)
        c = rows.shape[0]
        f = c if self.f is None else self.f
        lam = krum_lambda_bound(rows, f)
        if not np.any(s) or lam == 0:
            return np.zeros(rows.shape[1]), 0.0, False
        gram = rows @ rows.T
        a, b, cc = np.diag(gram).copy(), rows @ s, float(s @ s)
        while lam >= self.threshold:
            if self._selected(a, b, cc, gram, lam, f):
                return -lam * s, lam, True
            lam /= 2
        return -lam * s, lam, False

    def _poison(self, rows: np.ndarray) -> np.ndarray:
        crafted, self.last_lambda, self.last_selected = self.search(rows)
        return crafted

    def settings(self) -> dict[str, Any]:
        return {"f": self.f, "threshold": self.threshold}


@register_attack
class FangTrimmedMean(Attack):
    """Fang et al.'s attack on trimmed mean and median, partial knowledge (module
    docstring): every attacker draws its own delta, coordinate by coordinate,
    uniformly from ``rng`` in the interval 3 to 4 sample standard deviations of the
    colluders' benign deltas beyond their mean, against ``s``.

    With full knowledge the paper instead uses the benign extremes ``w_max,j`` and
    ``w_min,j`` of every benign local model: it samples in ``[w_max,j, b w_max,j]``
    (``[w_max,j, w_max,j / b]`` if ``w_max,j <= 0``) where ``s_j = -1`` and in
    ``[w_min,j / b, w_min,j]`` (``[b w_min,j, w_min,j]`` if ``w_min,j <= 0``)
    elsewhere, ``b = 2``, on the model parameters themselves (so the interval
    depends on the parameter's sign, which has no delta form). A single colluder
    has ``sigma = 0`` and so sends the colluders' mean: the estimate needs two.
    """

    name = "fang-trimmed-mean"
    colluding = True

    def _poison(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        low, high = trimmed_mean_interval(rows)
        return rng.uniform(low, high)

    def poison_delta(
        self,
        delta: Params,
        *,
        benign: Sequence[Params],
        rng: np.random.Generator,
        honest: Sequence[Params] = (),
    ) -> Params:
        return rewrite(self, delta, benign, lambda _, rows: self._poison(rows, rng))


def trimmed_mean_interval(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per coordinate, the interval :class:`FangTrimmedMean` samples in: ``[mu + 3
    sigma, mu + 4 sigma]`` where ``s = -1``, ``[mu - 4 sigma, mu - 3 sigma]`` elsewhere."""
    mu, sigma = rows.mean(axis=0), _std(rows)
    up = fang_direction(rows) < 0
    return np.where(up, mu + 3 * sigma, mu - 4 * sigma), np.where(
        up, mu + 4 * sigma, mu - 3 * sigma
    )
