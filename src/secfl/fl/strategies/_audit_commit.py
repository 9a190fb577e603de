"""What an audited round commits when the aggregate of those kept cannot be trusted as is.

The clone audit (:mod:`._clone_audit`) decides who is left out; two fallbacks decide
what the round then commits:

- Too few kept (:func:`kept_rule`): when the exclusions leave fewer updates than the
  base rule needs (Krum: ``2f + 3``), the round takes the kept updates'
  coordinate-wise median (of three or more, which one of three cannot move; with
  fewer, the global model is kept: one of two would be half of their median).
- The commit guard (:func:`guarded`, ``guard``, default 0.1) covers the rounds before
  suspicion has built up: when the real aggregate scores below the round's best clone
  by more than ``guard`` (a relative increase in validation loss), something in it
  still harms the model, typically a model-replacement update not yet excluded, and
  the best clone's model is committed instead (``AuditRound.fell_back``). An honest
  aggregate of every update scores at least as well as a clone of a quarter of them,
  so honest rounds rarely fall back. ``guard: null`` turns it off.

Over a base rule that takes a sample-weighted mean (FedAvg, FedProx, FedAdam), what the
audit commits is that mean taken coordinate by coordinate in float64, in the senders'
order, as the clones are (:func:`._clone_scoring.commit`), not the streaming rules'
exact fixed-point sum: that sum has one grid per tensor, sized by the tensor's largest
value, which a round held whole widens to the round's largest value. One value of
2**64 in one coordinate that no validation score sees (a dead unit's weight) rounded
every other value of its tensor to 0, and, carried into the global model, kept every
later round's grid that coarse (a hostile review's finding).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from secfl.fl.strategies._audit_round import AuditRound
from secfl.fl.strategies._base import Params, Strategy, Update
from secfl.fl.strategies._clone_scoring import ScoreBook, commit, settle
from secfl.fl.strategies._registry import get_strategy

__all__ = ["MEDIAN_FALLBACK", "commit", "guarded", "kept_rule"]

#: The audit's own log: what a round commits is the audit's decision.
log = logging.getLogger("secfl.fl.strategies._clone_audit")

#: The fewest kept updates whose median stands in for a base rule they are too few for.
MEDIAN_FALLBACK = 3


def kept_rule(
    base: Strategy, round: int, kept: Sequence[Update], result: AuditRound
) -> Strategy | None:
    """The rule that aggregates the ``kept`` updates: ``base``, the median when they are
    too few for it, or ``None`` when they are too few for a median too (the model is
    kept). A fallback is recorded in ``result.extra["kept_rule"]``."""
    if len(kept) >= base.fewest_updates():
        return base
    # the exclusions left too few for the base rule (Krum needs 2f + 3): the
    # coordinate-wise median of those kept, which one of three cannot move; with
    # fewer, the model is kept (one of two would be half of their median)
    if len(kept) < MEDIAN_FALLBACK:
        log.warning("round %d: %d kept, too few for %s or a median; the model is "
                    "kept", round, len(kept), base.name)  # fmt: skip
        result.extra["kept_rule"] = "none"
        return None
    log.warning(
        "round %d: %d kept, too few for %s (%d); their median instead",
        round, len(kept), base.name, base.fewest_updates(),
    )  # fmt: skip
    result.extra["kept_rule"] = "median"
    return get_strategy("median")


def guarded(
    base: Strategy,
    guard: float,
    state: tuple[ScoreBook, np.ndarray],
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
    rarely fires. ``state``: the round's clones (their scores and members)."""
    book, members = state
    out = np.array([u.sender in result.excluded for u in updates])
    clean = [k for k in range(len(members)) if not (members[k] & out).any()]
    if not clean:  # every clone holds someone left out: none to fall back on
        return new
    finite = np.isfinite(book.utilities(clean))
    eligible = [k for k, ok in zip(clean, finite, strict=True) if ok]
    if not eligible:
        return new

    def fires(u: np.ndarray) -> bool:  # u: the eligible clones', then the aggregate's
        return not (math.isfinite(u[-1]) and u[-1] >= u[:-1].max() - guard)

    index = [*eligible, book.add(new, rows=book.rows(eligible))]
    values = settle(book, index, fires)
    result.extra["guard_rows"] = book.rows(index)
    if not fires(values):
        return new
    pick = [int(i) for i in np.flatnonzero(members[eligible[int(np.argmax(values[:-1]))]])]
    log.warning("round %d: the aggregate scores below the best clone; committing that clone", round)
    result.fell_back = True
    return commit(base, round, global_params, [updates[i] for i in pick])
