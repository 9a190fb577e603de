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

The commit guard (``guard``, default 0.1; :mod:`._audit_commit`) covers the rounds
before suspicion has built up: an aggregate that scores below the round's best clone
by more than ``guard`` is replaced by that clone (``AuditRound.fell_back``).

Detection signals (``signals``, :mod:`._detection`) find the attacks built to stay
inside the honest spread, which barely move a clone's utility; their evidence adds
up in a suspicion of its own (:attr:`CloneAudit.signal_suspicion`), and either
suspicion above ``threshold`` leaves the site out. ``signals: []`` turns them off.

Small clone samples (``fraction``, default 0.25) are what make the effect
visible when several attackers collude: with 20% attackers among 20 sites a
clone of half of them almost always holds one (96%), so presence and absence of
any one barely differ; a clone of a quarter is attacker-free 28% of the time.

A clone holds at least as many updates as the base rule needs (Krum: ``2f + 3``),
however small ``fraction`` makes it, and leaves at least one out, so a round needs one
more than the base rule (:meth:`CloneAudit.fewest_updates`, checked against the
policy's ``min_clients`` before it is signed). When the exclusions leave fewer than
the base rule needs, the round takes the kept updates' median (:mod:`._audit_commit`).

:class:`CloneAudit` is a strategy wrapping any other (``base``): the policy
selects it like any rule (``strategy: clone-audit``, ``strategy_settings: {base:
trimmed-mean, base_settings: {beta: 0.1}, clones: 20, fraction: 0.25, ...}``). The
aggregator supplies the scorer (:attr:`CloneAudit.score`, the validation utility
of a model); without one the audit refuses to run.

Cost: over a FedAvg base every clone comes from one matrix product, and clones are
scored on a sample of the validation set (``validation_sample``, ``validation_cap``):
:mod:`._clone_scoring`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies._audit_commit import guarded, kept_rule
from secfl.fl.strategies._audit_round import AuditRound
from secfl.fl.strategies._audit_state import audit_state, load_audit_state
from secfl.fl.strategies._base import (
    Params,
    Strategy,
    Update,
    check_global,
    check_round,
    check_update,
    positive,
)
from secfl.fl.strategies._clone_scoring import (
    ScoreBook,
    clone_models,
    commit,
    draw_members,
    effect_scores,
    round_half,
    settle,
)
from secfl.fl.strategies._detection import DEFAULT_SIGNALS, Detector
from secfl.fl.strategies._registry import get_strategy, register_strategy
from secfl.fl.strategies._robust import count_setting
from secfl.fl.strategies._secret import secret_words

__all__ = ["AuditRound", "CloneAudit"]

log = logging.getLogger("secfl.fl.strategies._clone_audit")

#: Clones per round at most: each is a whole aggregation of the round's updates.
MAX_CLONES = 1000


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
        validation_sample: int | None = 128,
        validation_cap: int | None = 384,
        signals: Sequence[str] = DEFAULT_SIGNALS,
        signal_margin: float = 2.5,
        signal_dims: int = 1 << 18,
        seed: int = 0,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(client_config=client_config)
        if base == self.name:
            raise FlError("clone-audit: the base rule cannot be the audit itself")
        self.base_name = base
        if base_settings is not None and not isinstance(base_settings, Mapping):
            raise FlError(f"clone-audit: base_settings must be a mapping, not {base_settings!r}")
        self.base_settings = dict(base_settings or {})
        self.base = get_strategy(base, client_config=client_config, **self.base_settings)
        if type(clones) is not int or not 2 <= clones <= MAX_CLONES:
            raise FlError(
                f"clone-audit: clones must be an integer from 2 to {MAX_CLONES}, not {clones!r}"
            )
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
        if validation_sample is not None and (
            type(validation_sample) is not int or validation_sample < 1
        ):
            raise FlError(
                "clone-audit: validation_sample must be a positive integer or null, "
                f"not {validation_sample!r}"
            )
        self.validation_sample = validation_sample
        if validation_cap is not None and (type(validation_cap) is not int or validation_cap < 1):
            raise FlError(
                "clone-audit: validation_cap must be a positive integer or null, "
                f"not {validation_cap!r}"
            )
        self.validation_cap = validation_cap
        self.seed = count_setting(seed, "clone-audit: seed", 0)
        if isinstance(signals, str) or not isinstance(signals, Sequence):
            raise FlError(f"clone-audit: signals must be a list of names, not {signals!r}")
        self.detector = Detector(
            signals,
            margin=signal_margin,
            # one round's evidence leaves a site out for that round, and fades below the
            # threshold by the next: one odd round of an honest site costs one round
            cap=self.threshold / self.decay if self.decay > 0 else self.threshold,
            dims=signal_dims,
            seed=self.seed,
        )
        self.suspicion: dict[str, float] = {}
        #: The update-space signals' suspicion (:mod:`._detection`), kept apart from the
        #: clone utility's: one does not cancel the other's evidence.
        self.signal_suspicion: dict[str, float] = {}
        self.history: list[AuditRound] = []
        #: The validation utility of a model (higher is better); set by the aggregator.
        self.score: Callable[[Params], float] | None = None
        self._excluded: list[str] = []
        self._round: tuple[ScoreBook, np.ndarray] | None = None  # the clones, for the guard
        #: A secret of the aggregator's (:meth:`keep_secret`) mixed into every draw.
        self.secret: bytes | None = None

    def keep_secret(self, secret: bytes) -> None:
        """Mix ``secret`` (32 bytes, drawn inside the aggregator's TEE and kept in its
        sealed checkpoints) into the round's draws: the clones' members, the validation
        rows' order and the detector's coordinates. From the policy's seed alone, which
        every collaborator reads, a collaborator could draw the detector's coordinates
        and poison only the others (a hostile review's finding), or know in advance
        which clones hold which site (:mod:`._secret`). A base rule that draws at
        random (DnC, FLAME, SignGuard) keeps it too."""
        self.detector.key = secret_words(secret, self.name)
        self.secret = secret
        keep = getattr(self.base, "keep_secret", None)
        if callable(keep):
            keep(secret)

    def _rng(self, *tail: int) -> np.random.Generator:
        return np.random.default_rng([*self.detector.key, self.seed, *tail])

    # --- the rule ------------------------------------------------------------------------

    def configure(self, round: int) -> dict[str, Any]:
        return self.base.configure(round)

    def fewest_updates(self) -> int:
        """One more than the base rule needs: every clone leaves someone out."""
        return self.base.fewest_updates() + 1

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        # every update checked before the detector reads it: a tensor of another shape
        # gave a broadcasting traceback (the Flower strategy checks keys, not shapes)
        check_global(global_params)
        check_round(updates)
        for update in updates:
            check_update(update, global_params)
        began = time.perf_counter()
        result = self.audit(round, global_params, updates)
        kept = [u for u in updates if u.sender not in result.excluded]
        if not kept:  # everyone suspicious: keep the model rather than trust anyone
            log.warning("round %d: the audit excluded every participant", round)
            result.seconds = time.perf_counter() - began
            return {k: v.copy() for k, v in global_params.items()}
        base_began = time.perf_counter()
        base = kept_rule(self.base, round, kept, result)
        if base is None:
            result.seconds = time.perf_counter() - began
            return {k: v.copy() for k, v in global_params.items()}
        # the round's state, for a fallback: it takes one step from there, not a second
        before = copy.deepcopy(self.base) if base is self.base and self.base.state() else None
        new = commit(base, round, global_params, kept)
        result.base_seconds = time.perf_counter() - base_began
        new = self._guarded(round, global_params, updates, new, result, before)
        result.seconds = time.perf_counter() - began - result.base_seconds
        return new

    def _guarded(
        self,
        round: int,
        global_params: Params,
        updates: Sequence[Update],
        new: Params,
        result: AuditRound,
        before: Strategy | None = None,
    ) -> Params:
        """The commit guard (:func:`._audit_commit.guarded`) on this round's clones;
        ``before``: a copy of a stateful base rule as the round found it, which a
        fallback aggregates with (and keeps) instead of the real aggregate's state."""
        state, self._round = self._round, None
        if self.guard is None or self.score is None or state is None:
            return new
        rule = before if before is not None else self.base
        out = guarded(rule, self.guard, state, round, global_params, updates, new, result)
        if result.fell_back and before is not None:
            self.base = before  # the committed model's step, not the discarded one's
        return out

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
        trusted = [name for name in names if name not in self._excluded]
        signals = self.detector.observe(round, global_params, updates, trusted)
        for name, evidence in signals.evidence.items():
            self.signal_suspicion[name] = (
                self.decay * self.signal_suspicion.get(name, 0.0) + evidence
            )
        fewest = self.base.fewest_updates()
        if n - 1 < fewest:
            raise FlError(
                f"clone-audit: a round of {n} updates is too small: every clone leaves "
                f"someone out, and {self.base.name} needs {fewest} updates; rounds need at "
                f"least {fewest + 1} (raise federation.min_clients, or choose another base)"
            )
        size = min(n - 1, max(fewest, round_half(self.fraction * n)))
        members = draw_members(self._rng(round), self.clones, n, size)
        book = ScoreBook(
            self.score,
            self._rng(round, 31),
            self.validation_sample,
            self.validation_cap,
        )
        for model in clone_models(self.base, round, global_params, updates, members):
            book.add(model)
        clones = range(self.clones)
        utilities = settle(book, clones, lambda u: self._would_exclude(names, members, u))
        self._round = (book, members)
        scores = effect_scores(members, utilities, names, self.tolerance)
        for name, score in scores.items():
            self._accumulate(name, score)
        excluded = sorted(n for n in names if self._suspected(n))
        result = AuditRound(
            round=round,
            scores=scores,
            suspicion={n: self.suspicion.get(n, 0.0) for n in names},
            excluded=excluded,
            clone_utilities=[float(u) for u in utilities],
            seconds=time.perf_counter() - began,
            extra={
                "validation_rows": book.rows(clones),
                "signal_suspicion": {n: self.signal_suspicion.get(n, 0.0) for n in names},
                "signals": signals.z,
            },
        )
        self._excluded = excluded
        self.history.append(result)
        if excluded:
            log.warning("round %d: the audit excludes %s", round, ", ".join(excluded))
        return result

    def _would_exclude(
        self, names: list[str], members: np.ndarray, utilities: np.ndarray
    ) -> tuple[str, ...]:
        """Who ``utilities`` would leave out this round, without changing any state: the
        decision the validation sample is settled on (a signal added to the decision
        in :meth:`audit` belongs here too)."""
        scores = effect_scores(members, utilities, names, self.tolerance)
        return tuple(
            n
            for n in names
            if (self.decay * self.suspicion.get(n, 0.0) + scores[n] if n in scores
                else self.suspicion.get(n, 0.0)) > self.threshold
            or self.signal_suspicion.get(n, 0.0) > self.threshold
        )  # fmt: skip

    def _suspected(self, name: str) -> bool:
        """Left out: either suspicion, the clone utility's or the signals', is above
        ``threshold``."""
        return (
            self.suspicion.get(name, 0.0) > self.threshold
            or self.signal_suspicion.get(name, 0.0) > self.threshold
        )

    def _accumulate(self, name: str, score: float) -> None:
        """Evidence adds up over rounds and fades by ``decay`` per round."""
        self.suspicion[name] = self.decay * self.suspicion.get(name, 0.0) + score

    def selected(self) -> list[str] | None:
        return None

    def kept(self, senders: Sequence[str]) -> list[str]:
        """Those the audit did not exclude (whatever its base rule then chose)."""
        excluded = set(self._excluded)
        return [s for s in senders if s not in excluded]

    @property
    def excluded(self) -> list[str]:
        """Who the last round left out."""
        return list(self._excluded)

    # --- state (checkpoints) ----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return audit_state(self)

    def load_state(self, state: Mapping[str, Any]) -> None:
        load_audit_state(self, state)

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
            "validation_sample": self.validation_sample,
            "validation_cap": self.validation_cap,
            "signals": list(self.detector.signals),
            "signal_margin": self.detector.margin,
            "signal_dims": self.detector.dims,
        }
