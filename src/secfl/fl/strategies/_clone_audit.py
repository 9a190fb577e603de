"""The clone-and-sample audit: a rule that leaves out the participants whose updates harm
the model, judged on the aggregator's validation data.

Attestation proves that every participant runs the agreed code on its own
(attested) data volume; it cannot prove that the data is honest, nor stop a
hostile operator from feeding chosen inputs to genuine code. The audit looks at
what updates *do*: each round the aggregator builds ``clones`` copies of the
global computation, each aggregating a random sample (``fraction``) of the
round's updates with the underlying rule, and scores each clone's model on its
validation data. A participant's round effect is how much its presence lowers
the clones' utility::

    d_i = mean(utility of clones without i) - mean(utility of clones with i)

and its round score is that effect as a robust z-score among the round's
participants, ``(d_i - median(d)) / (1.4826 * MAD(d))``, the scale never below
``tolerance`` in the utility's units. An attacker is suspect when its effect
stands out from the spread of honest effects (which non-IID data widens), however
many clones run; the floor keeps honest sites' small, persistent differences from
growing into large scores when clones barely differ. The aggregator's utility is
minus the log of the validation loss (:mod:`secfl.fl._strategy_wiring`), so ``tolerance``
is a relative change in loss and a wrecked clone weighs a few units, not thousands.
Round scores add up over rounds, each fading by ``decay`` per round: evidence
against a consistent attacker grows, honest noise stays bounded, and one round of
model replacement (a score far above ``threshold``) is enough to be left out.
A participant whose suspicion exceeds ``threshold`` is left out of the real
aggregate for that round, reported, and written to the audit log. Everything runs
inside the aggregator's TEE, on updates it already holds: no participant learns
the others' updates.

The commit guard (``guard``, default 0.1) covers the rounds before suspicion has
built up: when the real aggregate scores below the round's best clone by more than
``guard`` (a relative increase in validation loss), something in it still harms
the model, typically a model-replacement update not yet excluded, and the best
clone's model is committed instead (``AuditRound.fell_back``). An honest
aggregate of every update scores at least as well as a clone of a quarter of
them, so honest rounds rarely fall back. ``guard: null`` turns it off.

Small clone samples (``fraction``, default 0.25) are what make the effect
visible when several attackers collude: with 20% attackers among 20 sites a
clone of half of them almost always holds one (96%), so presence and absence of
any one barely differ; a clone of a quarter is attacker-free 28% of the time.

:class:`CloneAudit` is a strategy wrapping any other (``base``): the policy
selects it like any rule (``strategy: clone-audit``, ``strategy_settings: {base:
trimmed-mean, base_settings: {beta: 0.1}, clones: 20, fraction: 0.25, ...}``). The
aggregator supplies the scorer (:attr:`CloneAudit.score`, the validation utility
of a model); without one the audit refuses to run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies._base import Params, Strategy, Update, check_round, positive
from secfl.fl.strategies._registry import get_strategy, register_strategy

__all__ = ["AuditRound", "CloneAudit", "round_half"]

log = logging.getLogger("secfl.fl.strategies._clone_audit")


@dataclass
class AuditRound:
    """What one round's audit found."""

    round: int
    scores: dict[str, float]
    suspicion: dict[str, float]
    excluded: list[str]
    clone_utilities: list[float]
    seconds: float
    base_seconds: float = 0.0
    #: The real aggregate scored below the best clone by more than ``guard``: the
    #: round committed the best clone's model instead.
    fell_back: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "excluded": self.excluded,
            "suspicion": {k: round(v, 4) for k, v in sorted(self.suspicion.items())},
            "scores": {k: round(v, 4) for k, v in sorted(self.scores.items())},
            "clones": len(self.clone_utilities),
            "fell_back": self.fell_back,
            "audit_seconds": round(self.seconds, 4),
            "aggregate_seconds": round(self.base_seconds, 4),
        }


@register_strategy
class CloneAudit(Strategy):
    """Clone-and-sample audit over a base rule (see the module docstring)."""

    name = "clone-audit"

    def __init__(
        self,
        *,
        base: str = "fedavg",
        base_settings: Mapping[str, Any] | None = None,
        clones: int = 30,
        fraction: float = 0.25,
        threshold: float = 3.5,
        decay: float = 0.7,
        tolerance: float = 0.02,
        guard: float | None = 0.1,
        seed: int = 0,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(client_config=client_config)
        if base == self.name:
            raise FlError("clone-audit: the base rule cannot be the audit itself")
        self.base_name = base
        self.base_settings = dict(base_settings or {})
        self.base = get_strategy(base, client_config=client_config, **self.base_settings)
        if type(clones) is not int or clones < 2:
            raise FlError(f"clone-audit: clones must be an integer >= 2, not {clones!r}")
        self.clones = clones
        self.fraction = positive(fraction, "clone-audit: fraction")
        if self.fraction >= 1:
            raise FlError("clone-audit: fraction must be below 1 (clones must differ)")
        self.threshold = positive(threshold, "clone-audit: threshold")
        self.decay = positive(decay, "clone-audit: decay", allow_zero=True)
        if self.decay >= 1:
            raise FlError("clone-audit: decay must be below 1")
        self.tolerance = positive(tolerance, "clone-audit: tolerance", allow_zero=True)
        self.guard = None if guard is None else positive(guard, "clone-audit: guard")
        self.seed = int(seed)
        self.suspicion: dict[str, float] = {}
        self.history: list[AuditRound] = []
        #: The validation utility of a model (higher is better); set by the aggregator.
        self.score: Callable[[Params], float] | None = None
        self._excluded: list[str] = []
        self._clones: list[tuple[float, list[int]]] = []  # the round's (utility, members)

    # --- the rule ------------------------------------------------------------------------

    def configure(self, round: int) -> dict[str, Any]:
        return self.base.configure(round)

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        check_round(updates)
        began = time.perf_counter()
        result = self.audit(round, global_params, updates)
        kept = [u for u in updates if u.sender not in result.excluded]
        if not kept:  # everyone suspicious: keep the model rather than trust anyone
            log.warning("round %d: the audit excluded every participant", round)
            result.seconds = time.perf_counter() - began
            return {k: v.copy() for k, v in global_params.items()}
        base_began = time.perf_counter()
        new = self.base.aggregate(round, global_params, kept)
        result.base_seconds = time.perf_counter() - base_began
        new = self._guarded(round, global_params, updates, new, result)
        result.seconds = time.perf_counter() - began - result.base_seconds
        return new

    def _guarded(
        self,
        round: int,
        global_params: Params,
        updates: Sequence[Update],
        new: Params,
        result: AuditRound,
    ) -> Params:
        """The commit guard: an aggregate that scores worse than the round's best clone
        by more than ``guard`` (a relative loss increase) still holds something that
        harms it, an attacker not yet excluded (one scaled update is enough to wreck
        a FedAvg round before suspicion builds up). The best clone, made of a quarter
        of the updates, is committed instead; only clones without an excluded
        participant count, so the fallback never lets one back in. In an honest round
        the whole aggregate is at least as good as a quarter of it, so the guard
        rarely fires."""
        clones, self._clones = self._clones, []
        if self.guard is None or self.score is None:
            return new
        out = set(result.excluded)
        eligible = [
            (u, pick)
            for u, pick in clones
            if math.isfinite(u) and not any(updates[i].sender in out for i in pick)
        ]
        if not eligible:
            return new
        best, pick = max(eligible, key=lambda c: c[0])
        utility = float(self.score(new))
        if math.isfinite(utility) and utility >= best - self.guard:
            return new
        log.warning(
            "round %d: the aggregate scores below the best clone; committing that clone", round
        )
        result.fell_back = True
        return self.base.aggregate(round, global_params, [updates[i] for i in pick])

    def audit(self, round: int, global_params: Params, updates: Sequence[Update]) -> AuditRound:
        """Score every participant of the round; decide who is left out."""
        if self.score is None:
            raise FlError(
                "clone-audit: no validation data to score clones on (the policy must give "
                "the aggregator a validation volume)"
            )
        began = time.perf_counter()
        names = [u.sender for u in updates]
        n = len(names)
        size = min(n - 1, max(1, round_half(self.fraction * n)))
        rng = np.random.default_rng([self.seed, round])
        members = np.zeros((self.clones, n), dtype=bool)
        utilities = np.zeros(self.clones)
        self._clones = []
        for k in range(self.clones):
            pick = sorted(int(i) for i in rng.choice(n, size=size, replace=False))
            members[k, pick] = True
            model = self.base.aggregate(round, global_params, [updates[i] for i in pick])
            utilities[k] = float(self.score(model))
            self._clones.append((float(utilities[k]), pick))
        scores = _scores(members, utilities, names, self.tolerance)
        for name, score in scores.items():
            self._accumulate(name, score)
        excluded = sorted(n for n in names if self.suspicion.get(n, 0.0) > self.threshold)
        result = AuditRound(
            round=round,
            scores=scores,
            suspicion={n: self.suspicion.get(n, 0.0) for n in names},
            excluded=excluded,
            clone_utilities=[float(u) for u in utilities],
            seconds=time.perf_counter() - began,
        )
        self._excluded = excluded
        self.history.append(result)
        if excluded:
            log.warning("round %d: the audit excludes %s", round, ", ".join(excluded))
        return result

    def _accumulate(self, name: str, score: float) -> None:
        """Evidence adds up over rounds and fades by ``decay`` per round."""
        self.suspicion[name] = self.decay * self.suspicion.get(name, 0.0) + score

    def selected(self) -> list[str] | None:
        return None

    @property
    def excluded(self) -> list[str]:
        """Who the last round left out."""
        return list(self._excluded)

    # --- state (checkpoints) ----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        base = {f"base.{k}": v for k, v in self.base.state().items()}
        return {"suspicion": dict(self.suspicion), **base}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.suspicion = _finite_map(state.get("suspicion", {}), "suspicion scores")
        self.base.load_state(
            {k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")}
        )

    def settings(self) -> dict[str, Any]:
        return {
            "base": self.base_name,
            "base_settings": self.base_settings,
            "clones": self.clones,
            "fraction": self.fraction,
            "threshold": self.threshold,
            "decay": self.decay,
            "tolerance": self.tolerance,
            "guard": self.guard,
        }


def round_half(x: float) -> int:
    return math.floor(x + 0.5)


def _finite_map(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and math.isfinite(v) for v in value.values()
    ):
        raise FlError(f"clone-audit: the checkpoint's {what} are malformed")
    return {str(k): float(v) for k, v in value.items()}


def _scores(
    members: np.ndarray, utilities: np.ndarray, names: list[str], tolerance: float
) -> dict[str, float]:
    """Per participant with evidence: how much its presence lowers clone utility, as a robust
    z-score among the round's participants.

    The unit is the participants' own spread of effects (1.4826 MAD, the standard
    deviation for normal data), never less than ``tolerance`` in the utility's units:
    when no one attacks and the data is alike, effects barely differ, and dividing
    by a near-zero spread would turn honest sites' small, persistent differences
    into large scores that add up round after round."""
    finite = np.isfinite(utilities)
    if not finite.any():
        return {}
    low, high = float(utilities[finite].min()), float(utilities[finite].max())
    u = np.where(finite, utilities, low - max(high - low, 1.0))  # a NaN model is the worst
    effects = np.full(len(names), np.nan)
    for i in range(len(names)):
        with_i, without_i = u[members[:, i]], u[~members[:, i]]
        if len(with_i) and len(without_i):
            effects[i] = without_i.mean() - with_i.mean()
    known = effects[np.isfinite(effects)]
    if len(known) < 3:
        return {}  # too few to tell an outlier from the rest
    centre = float(np.median(known))
    scale = max(1.4826 * float(np.median(np.abs(known - centre))), tolerance)
    if not math.isfinite(scale) or scale < 1e-12:
        return {}
    return {
        name: float((e - centre) / scale)
        for name, e in zip(names, effects, strict=True)
        if math.isfinite(e)  # in every clone or in none: no evidence this round
    }
