"""Update-space detection signals: what the clone audit adds to its clone utility to
find the attackers built to stay inside the honest spread (ALIE, IPM, Min-Max,
Min-Sum).

A clone holding one of those attackers scores on the validation set like a clone
holding an honest site with unusual data, so the clone utility alone does not see
them. Their *updates* still differ from honest ones, in ways the literature uses:

- ``norm``: the size of the delta against the round's (two-sided, in log units:
  scaling and noise are too large, IPM too small);
- ``direction``: the cosine of the delta to the coordinate-wise median of the
  trusted sites' deltas (two-sided: sign flip, IPM, Min-Max and Min-Sum point away
  from the honest consensus; ALIE, built from the colluders' mean, can sit closer to
  it than any honest site does: on digits its z is 7-10 on that side, while honest
  sites' cosines, bounded by 1, reach at most 2.2-3.0 there on Fashion-MNIST), the
  geometry of FLTrust and FLAME;
- ``sign``: the balance of positive and negative coordinates (two-sided), the
  sign statistics of SignGuard (Xu et al., ICDCS 2022): ALIE shifts every
  coordinate by ``-z * std``;
- ``collusion``: the cosine to the second-nearest other site (Fisher-transformed,
  ``atanh``; one-sided: high is
  suspicious), after FoolsGold (Fung et al., RAID 2020): three or more colluders
  that send one crafted delta, or copy one, are closer to each other than honest
  sites are. The second-nearest, not the nearest, because two honest sites with
  alike data are often close (measured: the nearest flagged 2% of honest
  site-rounds without attackers); and only near-copies (cosine >= 0.99), as a group
  of honest sites with alike label mixes can stand out on closeness without being
  copies. A *pair* of colluders, or colluders that add their own noise (the
  ``adaptive`` attacker), are not seen by it;
- ``history``: each site against its own past (the "consistency over time" of
  FLDetector, Zhang et al., KDD 2022, here with per-site drift statistics rather
  than an L-BFGS Hessian): how far this round's features (log norm ratio, cosine,
  sign balance) move from the site's own running mean, against how far the other
  sites' move. An honest site with unusual data is unusual every round and keeps
  a low score; a site that changes behaviour (a sleeper, or an attacker alternating
  to stay unseen) stands out;
- ``dnc`` and ``flame`` (opt-in): DnC's spectral outlier score (log, robust z) and
  FLAME's HDBSCAN admission (outside the majority cluster: evidence ``margin + 1``).
  Measured on Fashion-MNIST with Dirichlet 0.5 label skew and 20 sites, both are
  too noisy to be default signals: FLAME leaves 24-46% of honest sites out of its
  majority cluster each round and DnC's scores have honest outliers of 10-130
  robust standard deviations; they stay available for data that is closer to IID.

Every signal is a robust z-score among the round's sites, ``(x - median) /
max(1.4826 MAD, floor)``, with the median and MAD taken over the *trusted* sites
(those the audit did not leave out in the previous round), so attackers already
found do not widen the spread that hides the others. A site's evidence for the
round is ``max(z - margin, 0)`` of its largest signal: honest sites' z stay mostly
below ``margin`` (about 2: measured p95 of honest z 0.9-3.0 per signal) and
contribute nothing, an attacker's persist round after round and add up in the
audit's suspicion.

Large models: the features are computed on at most ``dims`` coordinates (2**18)
drawn at random each round (norms, cosines and sign fractions of a random 2**18 of
10**8 coordinates are accurate to about a percent), so the cost and memory stay
those of a ``(n, dims)`` float64 matrix (100 MiB for 50 sites).

Known limit (the hostile review's): the reference spread is a MAD, which colluders
can shrink by sending updates at the trusted median (honest-looking, harmless
ones): 6 of 20 doing so made up to 4 honest sites cross the margin in a synthetic
test. The floors bound how far the spread can shrink; a spread estimate that a
central coalition cannot deflate is future work.

The state is a handful of floats per site (the running means of ``history``):
checkpointed with the audit's, bounded by the number of sites.

In the audit (:mod:`._clone_audit`): attacks built to stay inside the honest spread
(ALIE, IPM, Min-Max, Min-Sum) barely move a clone's utility, so the clone effect
alone never found them. Each round the audit also scores every update on these
signals; evidence above ``signal_margin`` (default 2.5), at most ``threshold / decay``
per round (a blatant attacker is out in its first round; one odd round of an honest
site costs it that round only), adds up with the same ``decay`` in a suspicion of its
own (:attr:`~._clone_audit.CloneAudit.signal_suspicion`), kept apart from the clone
utility's so that one cannot cancel the other; either above ``threshold`` leaves the
site out. ``signals: []`` is the audit without them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies import _robust
from secfl.fl.strategies._base import Params, Update
from secfl.fl.strategies._signals import (
    MAD_SCALE,
    cosine_matrix,
    dnc_scores,
    flame_clusters,
    single_threaded,
)

__all__ = [
    "DEFAULT_SIGNALS",
    "SIGNALS",
    "Detector",
    "RoundSignals",
    "cross_section_z",
    "sampled_deltas",
]

#: Every signal the detector knows, in the order reports list them.
SIGNALS = ("norm", "direction", "sign", "collusion", "history", "dnc", "flame")
#: The signals on by default (module docstring: why not DnC and FLAME).
DEFAULT_SIGNALS = ("norm", "direction", "sign", "collusion")
#: The least spread each signal's robust z divides by, in the signal's own units: with
#: IID data honest sites barely differ, and dividing by a near-zero spread would make
#: outliers of them.
FLOORS = {
    "norm": 0.1,  # log units: 10% of the delta's size
    "direction": 0.02,
    "sign": 0.002,
    "collusion": 0.02,
    "history": 0.05,
    "dnc": 0.1,
}
#: The cosine from which two updates count as copies of one another (``collusion``):
#: honest updates of different data, trained with SGD, are not this alike.
NEAR_COPY = 0.99
#: Weight of a site's new features in its running mean (``history``).
HISTORY_RATE = 0.3
#: At most this many features' worth of history state per site.
_FEATURES = 3


@dataclass(frozen=True)
class RoundSignals:
    """One round's signals: per signal, per site, the robust z; and each site's evidence."""

    z: dict[str, dict[str, float]]
    evidence: dict[str, float]

    def strongest(self, name: str) -> tuple[str, float] | None:
        """The signal with the largest z for ``name`` and that z (for reports)."""
        best = max(((s, v[name]) for s, v in self.z.items() if name in v), key=lambda x: x[1],
                   default=None)  # fmt: skip
        return best


def sampled_deltas(
    global_params: Params, updates: Sequence[Update], dims: int, rng: np.random.Generator
) -> np.ndarray:
    """The updates' floating-point deltas, an ``(n, k)`` float64 matrix on at most
    ``dims`` coordinates: all of them when the model has no more, else a uniform
    random sample (the same for every update)."""
    names = _robust.float_names(global_params)
    if not names:
        raise FlError("detection: the model has no floating-point tensor to look at")
    sizes = [global_params[k].size for k in names]
    total = sum(sizes)
    if total <= dims:
        picks: list[np.ndarray | None] = [None] * len(names)
    else:
        flat = np.sort(rng.choice(total, size=dims, replace=False))
        bounds = np.cumsum([0, *sizes])
        picks = [flat[(flat >= lo) & (flat < hi)] - lo for lo, hi in itertools.pairwise(bounds)]
    width = total if total <= dims else dims
    out = np.empty((len(updates), width), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for row, update in zip(out, updates, strict=True):
            at = 0
            for name, pick in zip(names, picks, strict=True):
                ref = global_params[name].reshape(-1)
                mine = update.params[name].reshape(-1)
                if pick is not None:
                    ref, mine = ref[pick], mine[pick]
                row[at : at + ref.size] = mine.astype(np.float64) - ref
                at += ref.size
    if not np.isfinite(out).all():
        raise FlError("detection: an update's delta is not finite in float64")
    return out


class Detector:
    """The update-space signals of one federation (see the module docstring)."""

    def __init__(
        self,
        signals: Sequence[str] = DEFAULT_SIGNALS,
        *,
        margin: float = 2.0,
        cap: float = math.inf,
        dims: int = 1 << 18,
        seed: int = 0,
    ) -> None:
        unknown = [s for s in signals if s not in SIGNALS]
        if unknown or isinstance(signals, str):
            raise FlError(
                f"clone-audit: unknown signal {unknown[0] if unknown else signals!r} "
                f"(known: {', '.join(SIGNALS)})"
            )
        self.signals = tuple(dict.fromkeys(signals))
        if (
            isinstance(margin, bool)
            or not isinstance(margin, int | float)
            or not (math.isfinite(margin) and margin >= 0)
        ):
            raise FlError(f"clone-audit: signal_margin must be a number >= 0, not {margin!r}")
        self.margin = float(margin)
        #: The most evidence one round gives (the audit: ``threshold / decay``, so an
        #: honest site's one odd round leaves it out for that round only, not for the
        #: rounds a large score would take to fade).
        self.cap = float(cap)
        self.dims = _robust.count_setting(dims, "clone-audit: signal_dims", 16, _robust.MAX_DIMS)
        self.seed = int(seed)
        #: Words of a secret only the aggregator holds, drawn into every round's
        #: coordinate sample (:meth:`CloneAudit.keep_secret`): with the policy's seed
        #: alone, every collaborator could draw the coordinates looked at and put its
        #: poison in the others. Empty: the seed alone (simulations, tests).
        self.key: tuple[int, ...] = ()
        #: Each site's running mean of its features, for ``history``.
        self.past: dict[str, list[float]] = {}

    def observe(
        self,
        round: int,
        global_params: Params,
        updates: Sequence[Update],
        trusted: Collection[str],
    ) -> RoundSignals:
        """Score the round's updates; ``trusted`` names the sites whose spread is the
        reference (the others are still scored). Updates the per-site history."""
        names = [u.sender for u in updates]
        if not self.signals or len(names) < 3:
            return RoundSignals({}, {})  # too few to tell an outlier from the rest
        rng = np.random.default_rng([*self.key, self.seed, round, 53])
        deltas = sampled_deltas(global_params, updates, self.dims, rng)
        ref = np.array([n in trusted for n in names])
        if ref.sum() < 3:
            ref[:] = True
        features = _features(deltas, ref)
        z = cross_section_z(
            deltas, ref, self.signals, margin=self.margin, rng=rng, features=features
        )
        if "history" in self.signals:
            z["history"] = self._history(names, features, ref)
        by_signal = {s: {n: float(v) for n, v in zip(names, z[s], strict=True)} for s in z}
        top = np.max(np.stack(list(z.values())), axis=0)
        evidence = {
            n: min(max(float(t) - self.margin, 0.0), self.cap)
            for n, t in zip(names, top, strict=True)
        }
        return RoundSignals(by_signal, evidence)

    def _history(
        self, names: list[str], features: dict[str, np.ndarray], ref: np.ndarray
    ) -> np.ndarray:
        """How far each site's features move from its own running mean, as a robust z
        against the other sites' moves; then the running means move on. A site seen
        for the first time has no past: z 0."""
        now = np.stack([features["lognorm"], features["cosine"], features["balance"]], axis=1)
        moves = np.full(now.shape, np.nan)
        for i, name in enumerate(names):
            past = self.past.get(name)
            if past is not None:
                moves[i] = np.abs(now[i] - np.asarray(past))
        z = np.zeros(len(names))
        seen = ~np.isnan(moves[:, 0])
        if seen.sum() >= 3:
            reference = ref & seen if (ref & seen).sum() >= 3 else seen
            # each feature's moves in units of the reference sites' typical move, then
            # one distance per site: a site is not an outlier for moving on one feature
            # as much as others do on any
            typical = np.median(moves[reference], axis=0) / 0.6745
            scaled = moves / np.maximum(typical, FLOORS["history"])
            distance = np.sqrt(np.nansum(scaled**2, axis=1))
            z = np.where(seen, _z(distance, reference, FLOORS["history"]), 0.0)
        for i, name in enumerate(names):
            past = self.past.get(name)
            new = (
                now[i]
                if past is None
                else (1 - HISTORY_RATE) * np.asarray(past) + HISTORY_RATE * now[i]
            )
            self.past[name] = [float(x) for x in new]
        return z

    # --- state (checkpoints) ------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.past.items()}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        history = state.get("history", {})
        if not isinstance(history, Mapping) or not all(
            isinstance(v, list)
            and len(v) == _FEATURES
            and all(isinstance(x, int | float) and math.isfinite(x) for x in v)
            for v in history.values()
        ):
            raise FlError("clone-audit: the checkpoint's signal history is malformed")
        self.past = {str(k): [float(x) for x in v] for k, v in history.items()}


def cross_section_z(
    deltas: np.ndarray,
    ref: np.ndarray,
    signals: Sequence[str] = DEFAULT_SIGNALS,
    *,
    margin: float = 2.0,
    rng: np.random.Generator | None = None,
    features: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The robust z of every one-round signal in ``signals`` (all but ``history``) for
    the rows of ``deltas``, against the rows ``ref`` marks as trusted. What the audit
    computes each round; an adaptive attacker that knows the audit computes it too."""
    features = _features(deltas, ref) if features is None else features
    z: dict[str, np.ndarray] = {}
    if "norm" in signals:
        z["norm"] = np.abs(_z(features["lognorm"], ref, FLOORS["norm"]))
    if "direction" in signals:
        z["direction"] = np.abs(_z(features["cosine"], ref, FLOORS["direction"]))
    if "sign" in signals:
        z["sign"] = np.abs(_z(features["balance"], ref, FLOORS["sign"]))
    if "collusion" in signals:
        # only near-copies count: a group of honest sites with alike label mixes can
        # stand out on closeness (measured: 5 honest Fashion-MNIST sites at 5-8 robust
        # spreads in late rounds) without being anywhere near one another's copy
        near = features["closest"] >= math.atanh(NEAR_COPY)
        z["collusion"] = np.where(near, _z(features["closest"], ref, FLOORS["collusion"]), 0.0)
    if "dnc" in signals:
        with single_threaded():
            raw = dnc_scores(
                deltas, dims=10_000, iterations=5, rng=rng or np.random.default_rng(0)
            ).mean(axis=0)
        z["dnc"] = _z(np.log(raw + 1e-300), ref, FLOORS["dnc"])
    if "flame" in signals:
        labels = flame_clusters(deltas)
        kept = labels[labels >= 0]
        major = np.bincount(kept).argmax() if kept.size else -2
        z["flame"] = np.where(labels == major, 0.0, margin + 1.0)
    return z


def _features(deltas: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """Per site: log norm against the trusted median, cosine to the trusted sites'
    coordinate-wise median delta, sign balance, largest cosine to another site."""
    norms = np.linalg.norm(deltas, axis=1)
    lognorm = np.log(np.maximum(norms, 1e-300))
    lognorm = lognorm - np.median(lognorm[ref])
    centre = np.median(deltas[ref], axis=0)
    c_norm = float(np.linalg.norm(centre))
    cosine = (
        deltas @ centre / np.maximum(norms * c_norm, 1e-300) if c_norm > 0 else np.zeros(len(norms))
    )
    balance = ((deltas > 0).sum(axis=1) - (deltas < 0).sum(axis=1)) / deltas.shape[1]
    pairs = cosine_matrix(deltas)
    np.fill_diagonal(pairs, -np.inf)
    # the second-nearest: two honest sites with alike data are often close to each
    # other, a group of three or more colluders is close to at least two others
    closest = np.sort(pairs, axis=1)[:, -2] if len(norms) >= 3 else pairs.max(axis=1)
    # Fisher's transform: near 1 cosines spread out (honest digits updates are 0.95
    # alike, copies 1.0 to rounding; on the cosine scale those are 2-3 spreads apart)
    closest = np.arctanh(np.clip(closest, -1 + 1e-12, 1 - 1e-12))
    return {"lognorm": lognorm, "cosine": cosine, "balance": balance, "closest": closest}


def _z(values: np.ndarray, ref: np.ndarray, floor: float) -> np.ndarray:
    """Robust z of ``values`` against the median and MAD of its ``ref`` entries."""
    base = values[ref & np.isfinite(values)]
    if base.size == 0:
        return np.zeros(len(values))
    centre = float(np.median(base))
    scale = max(MAD_SCALE * float(np.median(np.abs(base - centre))), floor)
    return (values - centre) / scale
