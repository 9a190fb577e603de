"""How the clone audit builds its clones and scores them, at a fraction of the naive cost.

The audit (:mod:`._clone_audit`) needs, each round, ``clones`` models, each its base
rule's aggregate of a random sample of the updates, and each one's validation utility
(minus the log of the mean validation loss). Done naively that is ``clones`` full
aggregations and ``clones`` passes over the whole validation set: about 3x a plain
round on Fashion-MNIST. Two things here make it cheaper without changing what the
audit decides:

- **One matrix product for every clone** (:func:`clone_models`). When the base rule
  is a sample-weighted mean (FedAvg, FedProx: whose server step takes the mean as it
  is), a clone is ``sum_i w_ki x_i`` with ``w_ki = n_i / sum_{j in k} n_j`` for its
  members, so all clones are one ``(clones x n)`` weight matrix times the ``(n x d)``
  stacked updates, computed in float64 by column blocks (memory: ``n`` times a block,
  not ``n`` models). The result equals ``base.aggregate`` of the subset up to float
  rounding (FedAvg's exact fixed-point sum rounds each term to its grid; the product
  does not); a rule that is not a plain weighted mean, an update with NaN/Inf, an
  integer tensor or a mean that overflows its dtype takes the per-clone path, which
  is what the round would commit of those members (:func:`commit`: ``base.aggregate``
  on the rule's :meth:`trial`, so that a rule with state takes no step per clone; a mean in
  float64 for the rules built on FedAvg), errors and all.
- **Validation rows only while a decision can change** (:class:`ScoreBook`,
  :func:`settle`). Each round the validation examples are put in a seeded random
  order; every model is scored on the same first ``validation_sample`` of them (so
  clone differences are paired, and their noise largely cancels), and the sample
  doubles only while the round's decision could still change: the decision on the
  point estimates is compared with the decisions on ``REPLICATES`` Poisson-bootstrap
  replicates of the examples seen so far, and scoring stops when all agree (or when
  every example is in; a set under twice the first sample is scored whole at once;
  when most replicates disagree, every row is scored at once).
  The audit settles two decisions this way: who is left out, and whether the commit
  guard fires. The bootstrap treats the sample as drawn with replacement from an
  infinite set; the validation set is finite and the sample drawn without
  replacement, so its spread over-states the distance to the whole-set value by
  ``1 / sqrt(1 - m/N)``: the rule errs on the side of scoring more. It is a
  statistical rule, not a proof. Where the whole set's own decision hangs on a few
  examples (non-IID rounds with an honest site near the threshold: its replicates
  disagree too), no subsample settles and every row is scored, as before; a
  decision every replicate of a subsample agrees on can still differ on the whole
  set, with a probability of the order of the replicates' disagreement rate that
  was not reached (the tests check real training rounds against the whole set).
  What carries over to later rounds (the suspicion scores) is the estimate on the
  rows used, within about one bootstrap standard error of the whole set's.

The scorer (:mod:`secfl.fl._strategy_wiring`) offers per-example losses
(``score.losses(params, rows)`` and ``score.size``) for classification tasks; a
scorer without them (a plain ``score(params) -> float``, as tests and the Flower
wrapper give) scores every model once on whatever it scores, as before.

The audit's settings: clones are scored on a seeded random sample of
``validation_sample`` validation examples (default 128), doubled only while who is
left out, or whether the guard fires, could still change (the bootstrap stopping rule
above); a validation set under twice the sample, or ``validation_sample: null``, is
scored whole, as the audit first did. ``validation_cap`` (default 384; null: none)
bounds the rows scored, trading agreement with the whole set's decisions for a
bounded cost: without it, non-IID rounds with an honest site near the threshold need
the whole set, and the audit cost 1.8-2.7x the plain round on Fashion-MNIST (12000
samples, 2 epochs); with it, 1.3-1.5x. Its effect on accuracy and detection is in
docs/results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeGuard

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies._base import (
    Params,
    Strategy,
    Update,
    check_global,
    check_round,
    check_update,
)
from secfl.fl.strategies._blocks import BLOCK
from secfl.fl.strategies._fedavg import FedAvg

__all__ = [
    "REPLICATES",
    "ScoreBook",
    "clone_models",
    "commit",
    "draw_members",
    "effect_scores",
    "round_half",
    "settle",
    "utility",
]

#: Bootstrap replicates a settled decision must agree with: a decision that flips on a
#: fraction p of resamples survives all of them with probability (1 - p) ** 64 (4% at 5%).
REPLICATES = 64
#: Columns of the stacked updates held at once by the matrix path (float64, per update).
_BLOCK = 1 << 18
#: The utility of a model whose loss is not finite (as the whole-set scorer gives it).
_WORST = -math.log(1e9)


def utility(loss: float) -> float:
    """Minus the log of a mean loss, clamped as the whole-set scorer does."""
    return -math.log(min(max(loss, 1e-9), 1e9)) if math.isfinite(loss) else _WORST


def draw_members(rng: np.random.Generator, clones: int, n: int, size: int) -> np.ndarray:
    """``(clones x n)`` membership: each clone a uniform sample of ``size`` updates
    (the same draws, in the same order, as the audit has always made)."""
    members = np.zeros((clones, n), dtype=bool)
    for k in range(clones):
        members[k, rng.choice(n, size=size, replace=False)] = True
    return members


def clone_models(
    base: Strategy,
    round: int,
    global_params: Params,
    updates: Sequence[Update],
    members: np.ndarray,
) -> list[Params]:
    """Every clone's model: ``base.aggregate`` of its members (see the module docstring)."""
    if _linear(base, global_params, updates):
        models = _weighted_means(global_params, updates, members)
        if models is not None:
            return models
    # each clone on the rule's trial: a rule with state took a step per clone (FedAdam's
    # moments, centered clipping's center), and the round's real aggregate then started
    # from moments built from clones that held an excluded attacker
    return [
        commit(base.trial(), round, global_params,
               [updates[int(i)] for i in np.flatnonzero(row)])
        for row in members
    ]  # fmt: skip


def _linear(base: Strategy, global_params: Params, updates: Sequence[Update]) -> bool:
    """Whether ``base`` aggregates by a plain sample-weighted mean of finite float tensors."""
    if not _plain_mean(base) or type(base)._server_step is not FedAvg._server_step:
        return False
    if not all(np.issubdtype(v.dtype, np.floating) for v in global_params.values()):
        return False
    for update in updates:
        check_update(update, global_params, finite=False)
        if not all(np.isfinite(update.params[k]).all() for k in global_params):
            return False
    return True


def _weighted_means(
    global_params: Params, updates: Sequence[Update], members: np.ndarray
) -> list[Params] | None:
    weights = members * np.array([float(u.num_samples) for u in updates])
    weights /= weights.sum(axis=1, keepdims=True)
    models: list[Params] = [{} for _ in range(len(members))]
    for name, ref in global_params.items():
        flat = np.empty((len(members), ref.size), dtype=ref.dtype)
        for begin in range(0, ref.size, _BLOCK):
            end = min(begin + _BLOCK, ref.size)
            stacked = np.stack([u.params[name].reshape(-1)[begin:end] for u in updates])
            flat[:, begin:end] = weights @ stacked.astype(np.float64)
        if not np.isfinite(flat).all():
            return None  # a mean beyond the dtype: base.aggregate says so, in its words
        for k, model in enumerate(models):
            model[name] = flat[k].reshape(ref.shape)
    return models


class ScoreBook:
    """The round's models and their losses on a growing prefix of the validation rows.

    ``first``: how many rows every model is first scored on (``None``, a validation
    set under twice that, or a scorer without per-example losses: the whole set at
    once, by ``score(params)``). ``cap``: the most rows ever scored (``None``: up to
    the whole set); a capped book settles on at most ``cap`` rows, so its decisions
    are the whole set's only where they are clear on ``cap`` examples.
    """

    def __init__(self, score: Callable[[Params], float], rng: np.random.Generator,
                 first: int | None, cap: int | None = None) -> None:  # fmt: skip
        self._score = score
        self._losses: Any = getattr(score, "losses", None)
        size = getattr(score, "size", None)
        self.size = int(size) if isinstance(size, int) and self._losses is not None else 0
        if cap is not None and first is not None and self.size > cap:
            self.size = cap  # never more rows: decisions may then differ from the whole set's
        # a set under twice the first sample is scored whole: the checks would cost more
        self.whole = first is None or self.size == 0 or 2 * first > self.size
        self.first = self.size if self.whole else int(first or 0)
        self._order = None if self.whole else rng.permutation(self.size)
        self._rng = rng
        self.models: list[Params] = []
        self._seen: list[np.ndarray] = []  # per model: losses on the rows scored so far
        self._value: list[float] = []  # the whole-set path's utility

    def add(self, params: Params, rows: int | None = None) -> int:
        """Take in a model and score it on the first ``rows`` (default ``first``) rows."""
        self.models.append(params)
        self._seen.append(np.empty(0))
        if self.whole:
            self._value.append(float(self._score(params)))
        else:
            self._extend(len(self.models) - 1, rows or self.first)
        return len(self.models) - 1

    def rows(self, index: Sequence[int]) -> int:
        """How many rows every one of ``index`` is scored on."""
        if self.whole:
            return self.size
        return min(len(self._seen[i]) for i in index)

    def complete(self, index: Sequence[int]) -> bool:
        return self.whole or self.rows(index) >= self.size

    def grow(self, index: Sequence[int], whole: bool = False) -> None:
        """Double the rows ``index`` are scored on (at most, or with ``whole``, all)."""
        target = self.size if whole else min(self.size, 2 * max(self.rows(index), 1))
        for i in index:
            self._extend(i, target)

    def _extend(self, i: int, rows: int) -> None:
        have = len(self._seen[i])
        if rows > have:
            more = np.asarray(self._losses(self.models[i], self._order[have:rows]), np.float64)  # type: ignore[index]
            self._seen[i] = np.concatenate([self._seen[i], more.reshape(-1)])

    def utilities(self, index: Sequence[int]) -> np.ndarray:
        """Each model's utility on the rows they all share."""
        if self.whole:
            return np.array([self._value[i] for i in index])
        m = self.rows(index)
        return np.array([utility(float(self._seen[i][:m].mean())) for i in index])

    def replicates(self, index: Sequence[int]) -> np.ndarray:
        """``(REPLICATES x len(index))`` utilities on Poisson-bootstrap resamples of the rows."""
        m = self.rows(index)
        losses = np.stack([self._seen[i][:m] for i in index])  # (models x rows)
        broken = ~np.isfinite(losses).all(axis=1)
        weights = self._rng.poisson(1.0, size=(REPLICATES, m)).astype(np.float64)
        weights[weights.sum(axis=1) == 0, 0] = 1.0
        means = (weights @ np.where(np.isfinite(losses), losses, 0.0).T) / weights.sum(
            axis=1, keepdims=True
        )
        out = -np.log(np.clip(means, 1e-9, 1e9))
        out[:, broken] = _WORST
        return out


def settle(
    book: ScoreBook, index: Sequence[int], decide: Callable[[np.ndarray], Hashable]
) -> np.ndarray:
    """The utilities of ``index`` once ``decide``'s answer no longer depends on the rows
    left out (see the module docstring): more rows while any bootstrap replicate of the
    rows seen decides otherwise; every row at once when most of them do (a decision
    that close is settled only by the whole set, and doubling there costs more)."""
    while True:
        values = book.utilities(index)
        if book.complete(index):
            return values
        decision = decide(values)
        differ = 0
        for rep in book.replicates(index):
            differ += decide(rep) != decision
            if 2 * differ > REPLICATES:
                break
        if not differ:
            return values
        book.grow(index, whole=2 * differ > REPLICATES)


def round_half(x: float) -> int:
    return math.floor(x + 0.5)


def effect_scores(
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
    # per participant: mean utility of the clones without it minus that of those with it
    inside = members.sum(axis=0)
    outside = len(u) - inside
    with_sum = u @ members
    with np.errstate(divide="ignore", invalid="ignore"):
        effects = np.where(
            (inside > 0) & (outside > 0), (u.sum() - with_sum) / outside - with_sum / inside, np.nan
        )
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


def commit(base: Strategy, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
    """``base``'s aggregate of ``updates``, as the audit commits it: a sample-weighted
    mean (FedAvg and the rules built on it) is taken in float64 coordinate by
    coordinate, in the senders' order (whatever order they came in), then given to
    the rule's server step; integer tensors keep the exact integer sum. No value of
    one coordinate changes the rounding of another (:mod:`._audit_commit`)."""
    if not _plain_mean(base):
        return base.aggregate(round, global_params, updates)
    check_global(global_params)
    check_round(updates)
    for update in updates:
        check_update(update, global_params)
    order = sorted(updates, key=lambda u: u.sender)
    total = sum(int(u.num_samples) for u in order)
    weights = [np.float64(int(u.num_samples) / total) for u in order]
    mean: Params = {}
    others = [name for name, ref in global_params.items() if ref.dtype.kind != "f"]
    if others:  # summed exactly as integers: one grid for each, nothing to widen
        mean.update(FedAvg(threads=1).aggregate(
            round, {k: global_params[k] for k in others},
            [Update(u.sender, {k: u.params[k] for k in others}, u.num_samples) for u in order],
        ))  # fmt: skip
    for name, ref in global_params.items():
        if ref.dtype.kind != "f":
            continue
        out = np.zeros(ref.size, dtype=np.float64)
        scratch = np.empty(min(BLOCK, ref.size), dtype=np.float64)
        for update, weight in zip(order, weights, strict=True):
            flat = update.params[name].reshape(-1)
            for at in range(0, ref.size, BLOCK):
                end = min(at + BLOCK, ref.size)
                part = scratch[: end - at]
                np.multiply(flat[at:end], weight, out=part, dtype=np.float64)
                np.add(out[at:end], part, out=out[at:end])
        with np.errstate(over="ignore"):  # checked below
            value = out.astype(ref.dtype).reshape(ref.shape)
        if not np.isfinite(value).all():
            raise FlError(f"aggregate: the mean of tensor '{name}' overflows its dtype")
        mean[name] = value
    return base._server_step(round, global_params, {k: mean[k] for k in global_params})


def _plain_mean(base: Strategy) -> TypeGuard[FedAvg]:
    """Whether ``base`` aggregates as FedAvg does (FedAvg, FedProx, FedAdam): a rule
    built on FedAvg that aggregates its own way (a registered one that clips or adds
    noise first) is left to its ``aggregate`` ."""
    return isinstance(base, FedAvg) and type(base).aggregate is FedAvg.aggregate
