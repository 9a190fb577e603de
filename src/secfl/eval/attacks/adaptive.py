"""An adaptive attacker that knows the clone audit's detection signals and stays under them.

A defence evaluated only against attacks that ignore it proves little: the attacker a
reviewer asks for knows the defence and optimises against it (Tramèr et al., "On
Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020; for federated
learning, Shejwalkar & Houmansadr's AGR-tailored attacks, NDSS 2021). This one is
white-box and omniscient, the strongest position an attacker can be in:

- it knows the audit's update-space signals, their settings and its ``margin``
  (:mod:`secfl.fl.strategies._detection`), and computes them exactly as the audit
  does, on the round's real honest deltas (``omniscient``) and its colluders' crafted
  ones;
- each colluder keeps its own honestly trained delta ``b_j`` (so colluders are no
  closer to each other than honest sites: the ``collusion`` signal has nothing to
  see) and adds ``gamma * |b_j| * p``, ``p`` the unit vector opposite to the honest
  sites' mean delta: the direction that undoes the round's progress most per unit
  of change (the ``unit`` direction of Min-Max / Min-Sum);
- ``gamma`` is the largest in ``[0, gamma_max]`` for which every colluder's every
  signal stays at or below ``margin + (1 - decay) * threshold - slack``: the
  evidence it gives each round (``z - margin``, at most ``(1 - decay) *
  threshold``) adds up, with the audit's decay, to a suspicion that tends to
  ``threshold`` without reaching it, so it is never left out, round after round.
  (``quiet=True`` stays under ``margin``: no evidence at all.)

What is left to catch it is the clone utility: the harm itself, measured on the
aggregator's validation data. The attacker cannot compute that (it does not hold
the validation data), which is the point of the audit's design; it can only keep
its harm per round small, which is what the search does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from secfl.eval.attacks.base import Attack, Params, number, register_attack, rewrite
from secfl.fl.strategies._detection import DEFAULT_SIGNALS, SIGNALS, cross_section_z
from secfl.tasks._base import TaskError

__all__ = ["Adaptive", "largest_unseen_gamma"]


def largest_unseen_gamma(
    honest: np.ndarray,
    benign: np.ndarray,
    *,
    signals: Sequence[str],
    bound: float,
    gamma_max: float,
    tolerance: float = 1e-3,
) -> float:
    """The largest ``gamma`` in ``[0, gamma_max]`` (to ``tolerance``) for which the
    crafted rows ``benign_j + gamma |benign_j| p`` keep every signal's z at or below
    ``bound`` among ``honest`` plus themselves; 0 if even ``gamma = 0`` is seen."""
    mean = honest.mean(axis=0) if len(honest) else benign.mean(axis=0)
    size = float(np.linalg.norm(mean))
    if size == 0:
        return 0.0
    p = -mean / size
    scale = np.linalg.norm(benign, axis=1, keepdims=True)
    ref = np.ones(len(honest) + len(benign), dtype=bool)

    def unseen(gamma: float) -> bool:
        rows = np.concatenate([honest, benign + gamma * scale * p])
        z = cross_section_z(rows, ref, signals)
        return all(float(v[len(honest) :].max()) <= bound for v in z.values())

    if not unseen(0.0):
        return 0.0
    if unseen(gamma_max):
        return gamma_max
    low, high = 0.0, gamma_max
    while high - low > tolerance:
        middle = (low + high) / 2
        if unseen(middle):
            low = middle
        else:
            high = middle
    return low


@register_attack
class Adaptive(Attack):
    """Undo the round's progress as far as the audit's signals cannot see (module
    docstring). Settings: ``gamma_max`` (default 4: at most four times the colluder's
    own delta), ``slack`` (default 0.25: how far under its bound to stay, for the
    rounding of its own estimate), ``margin`` (2.5), ``threshold`` (3.5), ``decay``
    (0.7) and ``signals``: the audit's defaults; ``quiet``."""

    name = "adaptive"
    colluding = True
    omniscient = True

    def __init__(
        self,
        *,
        gamma_max: float = 4.0,
        slack: float = 0.25,
        margin: float = 2.5,
        threshold: float = 3.5,
        decay: float = 0.7,
        quiet: bool = False,
        signals: Sequence[str] = DEFAULT_SIGNALS,
    ) -> None:
        self.gamma_max = number(gamma_max, "adaptive: gamma_max")
        self.slack = number(slack, "adaptive: slack", allow_zero=True)
        self.margin = number(margin, "adaptive: margin")
        self.threshold = number(threshold, "adaptive: threshold")
        self.decay = number(decay, "adaptive: decay", allow_zero=True)
        if self.decay >= 1:
            raise TaskError("adaptive: decay must be below 1")
        self.quiet = bool(quiet)
        #: The largest z any signal may show for a colluder.
        self.bound = (
            self.margin - self.slack + (0.0 if self.quiet else (1 - self.decay) * self.threshold)
        )
        if isinstance(signals, str) or any(s not in SIGNALS for s in signals):
            raise TaskError(f"adaptive: signals must be a list of {', '.join(SIGNALS)}")
        self.signals = tuple(signals)
        #: Each round's gamma, for reports (the last one is the round under way).
        self.gammas: list[float] = []
        self._key = b""

    def poison_delta(
        self,
        delta: Params,
        *,
        benign: Sequence[Params],
        rng: np.random.Generator,
        honest: Sequence[Params] = (),
    ) -> Params:
        count = len(benign)

        def craft(vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
            mine, others = rows[:count], rows[count:]
            key = hashlib.sha256(rows.tobytes()).digest()
            if key != self._key:  # a new round: the colluders share one search
                self._key = key
                self.gammas.append(
                    largest_unseen_gamma(
                        others,
                        mine,
                        signals=self.signals,
                        bound=self.bound,
                        gamma_max=self.gamma_max,
                    )
                )
            mean = others.mean(axis=0) if len(others) else mine.mean(axis=0)
            size = float(np.linalg.norm(mean))
            if size == 0:
                return vector
            return vector + self.gammas[-1] * float(np.linalg.norm(vector)) * (-mean / size)

        return rewrite(self, delta, benign, craft, honest)

    def settings(self) -> dict[str, Any]:
        return {
            "gamma_max": self.gamma_max,
            "slack": self.slack,
            "margin": self.margin,
            "threshold": self.threshold,
            "decay": self.decay,
            "quiet": self.quiet,
            "signals": list(self.signals),
        }
