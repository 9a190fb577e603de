"""Attacks on the delta: sign flip, scaling, Gaussian noise, ALIE, IPM, Min-Max, Min-Sum.

The colluding ones (ALIE, IPM, Min-Max, Min-Sum) build the malicious delta from the
benign deltas of all colluders, so every colluder may send the same one. All work on
the floating-point tensors flattened into one float64 vector and cast back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
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
from secfl.tasks._base import TaskError

__all__ = [
    "DIRECTIONS",
    "Alie",
    "Gaussian",
    "Ipm",
    "MinMax",
    "MinSum",
    "ScalingAttack",
    "SignFlip",
    "alie_z",
    "search_gamma",
]


@register_attack
class SignFlip(Attack):
    """Send ``-scale * delta``: the honest step reversed (and amplified)."""

    name = "sign-flip"

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = number(scale, "sign-flip: scale")

    def poison_delta(
        self,
        delta: Params,
        *,
        benign: Sequence[Params],
        rng: np.random.Generator,
        honest: Sequence[Params] = (),
    ) -> Params:
        return rewrite(self, delta, benign, lambda v, _: -self.scale * v)

    def settings(self) -> dict[str, Any]:
        return {"scale": self.scale}


@register_attack
class ScalingAttack(Attack):
    """Model replacement (Bagdasaryan et al. 2020): send ``factor * delta``.

    With ``factor`` equal to the number of participants, plain averaging moves the
    global model by the attacker's whole delta. Give ``factor`` or ``participants``
    (default 10), not both.
    """

    name = "scaling"

    def __init__(self, *, factor: float | None = None, participants: int | None = None) -> None:
        if factor is not None and participants is not None:
            raise TaskError("scaling: give factor or participants, not both")
        if factor is not None:
            self.factor = number(factor, "scaling: factor")
        else:
            chosen = 10 if participants is None else participants
            self.factor = float(integer(chosen, "scaling: participants", 1))

    def poison_delta(
        self,
        delta: Params,
        *,
        benign: Sequence[Params],
        rng: np.random.Generator,
        honest: Sequence[Params] = (),
    ) -> Params:
        return rewrite(self, delta, benign, lambda v, _: self.factor * v)

    def settings(self) -> dict[str, Any]:
        return {"factor": self.factor}


@register_attack
class Gaussian(Attack):
    """Send ``N(0, sigma²)`` noise in place of the delta (the honest one is ignored)."""

    name = "gaussian"

    def __init__(self, *, sigma: float = 1.0) -> None:
        self.sigma = number(sigma, "gaussian: sigma")

    def poison_delta(
        self,
        delta: Params,
        *,
        benign: Sequence[Params],
        rng: np.random.Generator,
        honest: Sequence[Params] = (),
    ) -> Params:
        return rewrite(self, delta, benign, lambda v, _: rng.normal(0.0, self.sigma, v.size))

    def settings(self) -> dict[str, Any]:
        return {"sigma": self.sigma}


def alie_z(n: int, m: int) -> float:
    """ALIE's ``z`` for ``n`` participants of which ``m`` are malicious (Baruch et al.
    2019): ``s = floor(n/2 + 1) - m`` benign ones must be swayed, ``z = Φ⁻¹((n - s)/n)``."""
    n = integer(n, "alie: n", 2)
    m = integer(m, "alie: m", 1)
    if m >= n:
        raise TaskError(f"alie: m={m} malicious of n={n} participants leaves none benign")
    p = (n - (n // 2 + 1 - m)) / n
    if not 0 < p < 1:
        raise TaskError(f"alie: n={n}, m={m} give no finite z; give z explicitly")
    return NormalDist().inv_cdf(p)


def _std(rows: np.ndarray) -> np.ndarray:
    """Per-coordinate sample standard deviation (zeros for a single row)."""
    if rows.shape[0] < 2:
        return np.zeros(rows.shape[1])
    return np.asarray(rows.std(axis=0, ddof=1))


@register_attack
class Alie(Attack):
    """ALIE, "a little is enough" (Baruch et al. 2019): ``mean - z * std`` per coordinate
    over the benign deltas (sample std), small enough to pass for benign.

    ``z`` is given, or derived from ``n`` participants and ``m`` malicious
    (defaults 10 and 2) by :func:`alie_z`.
    """

    name = "alie"
    colluding = True

    def __init__(
        self, *, n: int | None = None, m: int | None = None, z: float | None = None
    ) -> None:
        if z is not None:
            if n is not None or m is not None:
                raise TaskError("alie: give z or n and m, not both")
            self.z = number(z, "alie: z", allow_zero=True)
        else:
            self.z = alie_z(10 if n is None else n, 2 if m is None else m)

    def poison_delta(
        self,
        delta: Params,
        *,
        benign: Sequence[Params],
        rng: np.random.Generator,
        honest: Sequence[Params] = (),
    ) -> Params:
        return rewrite(self, delta, benign, lambda _, rows: rows.mean(0) - self.z * _std(rows))

    def settings(self) -> dict[str, Any]:
        return {"z": self.z}


@register_attack
class Ipm(Attack):
    """Inner-product manipulation (Xie et al. 2020): ``-epsilon * mean(benign)``."""

    name = "ipm"
    colluding = True

    def __init__(self, *, epsilon: float = 0.1) -> None:
        self.epsilon = number(epsilon, "ipm: epsilon")

    def poison_delta(
        self,
        delta: Params,
        *,
        benign: Sequence[Params],
        rng: np.random.Generator,
        honest: Sequence[Params] = (),
    ) -> Params:
        return rewrite(self, delta, benign, lambda _, rows: -self.epsilon * rows.mean(0))

    def settings(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}


def _unit(mean: np.ndarray, rows: np.ndarray) -> np.ndarray:
    del rows
    norm = float(np.linalg.norm(mean))
    return -mean / norm if norm > 0 else np.zeros_like(mean)


#: Perturbation directions of Min-Max / Min-Sum, from the benign deltas' mean and rows.
DIRECTIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "unit": _unit,
    "std": lambda _, rows: -_std(rows),
    "sign": lambda mean, _: -np.sign(mean),
}


def search_gamma(
    distance: Callable[[float], float], bound: float, gamma_init: float, tolerance: float
) -> float:
    """The largest ``gamma >= 0`` with ``distance(gamma) <= bound``, to ``tolerance``.

    The binary search of Shejwalkar & Houmansadr (2021) from ``gamma_init``; the
    bracket is first doubled while its top still qualifies, so a ``gamma`` above
    ``2 * gamma_init`` is not cut off. ``distance`` is convex with
    ``distance(0) <= bound``, so the qualifying gammas are an interval from 0.
    """
    low, high = 0.0, gamma_init
    while distance(high) <= bound:
        low, high = high, 2 * high
        if not math.isfinite(high):
            raise TaskError("min-max/min-sum: no finite bound on gamma (zero direction?)")
    while high - low > tolerance:
        middle = (low + high) / 2
        if not low < middle < high:
            break
        if distance(middle) <= bound:
            low = middle
        else:
            high = middle
    return low


class _AgrAgnostic(CraftedFromRows):
    """Min-Max and Min-Sum (Shejwalkar & Houmansadr, NDSS 2021, AGR-agnostic):
    ``mean + gamma * p`` for the largest ``gamma`` that keeps the malicious delta as
    close to the benign ones as they are to each other.

    ``direction`` gives ``p``: ``unit`` (``-mean / |mean|``, default), ``std``
    (``-std``) or ``sign`` (``-sign(mean)``).
    """

    colluding = True

    def __init__(
        self, *, direction: str = "unit", gamma_init: float = 10.0, tolerance: float = 1e-5
    ) -> None:
        if direction not in DIRECTIONS:
            raise TaskError(
                f"{self.name}: unknown direction {direction!r} (known: {', '.join(DIRECTIONS)})"
            )
        self.direction = direction
        self.gamma_init = number(gamma_init, f"{self.name}: gamma_init")
        self.tolerance = number(tolerance, f"{self.name}: tolerance")

    def _reduce(self, distances: np.ndarray) -> float:
        """One number from the squared distances of a delta to every benign one."""
        raise NotImplementedError

    def _poison(self, rows: np.ndarray) -> np.ndarray:
        mean = rows.mean(0)
        p = DIRECTIONS[self.direction](mean, rows)
        if not np.any(p):
            return mean
        pairwise = np.stack([((rows - row) ** 2).sum(1) for row in rows])
        bound = max(self._reduce(line) for line in pairwise)
        # |mean + g p - b_i|² = a_i + 2 g b_i + g² c: cheap to evaluate for any g.
        diff = mean - rows
        a, b, c = (diff**2).sum(1), diff @ p, float(p @ p)
        gamma = search_gamma(
            lambda g: self._reduce(a + 2 * g * b + g * g * c),
            bound,
            self.gamma_init,
            self.tolerance,
        )
        return mean + gamma * p

    def settings(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "gamma_init": self.gamma_init,
            "tolerance": self.tolerance,
        }


@register_attack
class MinMax(_AgrAgnostic):
    """Min-Max: the largest squared distance to a benign delta stays within the
    largest benign pairwise one."""

    name = "min-max"

    def _reduce(self, distances: np.ndarray) -> float:
        return float(distances.max())


@register_attack
class MinSum(_AgrAgnostic):
    """Min-Sum: the sum of squared distances to the benign deltas stays within the
    largest such sum of a benign delta."""

    name = "min-sum"

    def _reduce(self, distances: np.ndarray) -> float:
        return float(distances.sum())
