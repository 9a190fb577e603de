"""Update-space primitives shared by the filtering defences (DnC, SignGuard, FLAME)
and by the clone audit's detection signals.

Everything here is a pure function of one round's deltas: an ``(n, d)`` float64
matrix, one row per update, the update's floating-point tensors minus the global
model's, flattened in the global model's key order (:func:`delta_matrix`). Integer
and bool tensors (counters) carry no direction and are left out, as in
:mod:`._robust`.

- :func:`robust_z`: the robust z-score ``(x - median) / (1.4826 * MAD)`` used to put
  the signals of different units on one scale;
- :func:`cosine_matrix`: pairwise cosines, the geometry of FLAME (Nguyen et al.,
  "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022);
- :func:`sign_statistics`: the fractions of positive, zero and negative entries,
  SignGuard's features (Xu et al., "SignGuard: Byzantine-robust Federated Learning
  through Collaborative Malicious Gradient Filtering", ICDCS 2022,
  arXiv:2109.05872);
- :func:`dnc_scores`: the outlier scores of Divide-and-Conquer (Shejwalkar and
  Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and
  Defenses for Federated Learning", NDSS 2021, Algorithm 2): squared projections
  on the top singular vector of centred random coordinate subsets;
- :func:`flame_clusters`: FLAME's HDBSCAN admission on cosine distances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies import _robust
from secfl.fl.strategies._base import Params, Update

__all__ = [
    "MAD_SCALE",
    "clip_to",
    "cosine_matrix",
    "delta_matrix",
    "dnc_scores",
    "flame_clusters",
    "kept_model",
    "robust_z",
    "round_rng",
    "row_norms",
    "sign_statistics",
    "single_threaded",
]

#: ``1 / Phi^-1(3/4)``: makes the median absolute deviation a consistent estimate of a
#: normal distribution's standard deviation.
MAD_SCALE = 1.4826
#: The most memory :func:`delta_matrix` may take: a rule that holds the whole round in
#: float64 (DnC, SignGuard, FLAME) refuses, in one line, a round that needs more.
MAX_MATRIX_BYTES = 8 << 30


def single_threaded() -> AbstractContextManager[Any]:
    """BLAS and OpenMP limited to one thread for the block: scikit-learn's clustering
    of a round's ``n`` (tens of) updates gains nothing from threads, and on a loaded
    machine their contention slows it (MeanShift on 20 updates: 1.1 s threaded, 0.28 s
    in one thread, at a load of 15 on 2 cores). scikit-learn (and its dependency
    threadpoolctl) are imported here, not when secfl is."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # no stubs

    return threadpool_limits(limits=1)


def delta_matrix(global_params: Params, updates: Sequence[Update]) -> np.ndarray:
    """The round's deltas as an ``(n, d)`` float64 matrix: each update's floating-point
    tensors minus the global model's, flattened and concatenated in ``global_params``
    key order (integer and bool tensors left out). :class:`FlError` if a delta is not
    finite in float64 (e.g. ``1e308 - (-1e308)``)."""
    names = _robust.float_names(global_params)
    n = len(updates)
    if not names:
        return np.zeros((n, 0), dtype=np.float64)
    need = 2 * 8 * n * sum(global_params[name].size for name in names)  # stacks + result
    if need > MAX_MATRIX_BYTES:
        raise FlError(
            f"delta_matrix: {n} updates of this model need {need / 2**30:.1f} GiB in float64, "
            f"more than {MAX_MATRIX_BYTES / 2**30:.0f} GiB; the filtering rules hold the "
            "whole round: use clone-audit (its signals sample coordinates) for a model "
            "this large"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # checked below
        out = np.concatenate(
            [_robust.stack(name, global_params, updates, delta=True) for name in names], axis=1
        )
    if not np.isfinite(out).all():
        raise FlError("delta_matrix: a delta is not finite in float64")
    return out


def row_norms(deltas: np.ndarray) -> np.ndarray:
    """The Euclidean norm of each row; :class:`FlError` if one overflows float64."""
    with np.errstate(over="ignore"):  # checked below
        norms = np.linalg.norm(deltas, axis=1)
    if not np.isfinite(norms).all():
        raise FlError("row_norms: the norm of a delta overflows float64")
    return norms


def clip_to(deltas: np.ndarray, bound: float) -> np.ndarray:
    """Each row scaled to a norm of at most ``bound`` (rows within it unchanged):
    ``x * min(1, bound / ||x||)``, the clipping of SignGuard and FLAME."""
    norms = row_norms(deltas)
    scale = np.ones(deltas.shape[0], dtype=np.float64)
    far = norms > bound
    scale[far] = bound / norms[far]
    return deltas * scale[:, None]


def robust_z(values: np.ndarray, *, floor: float = 0.0) -> np.ndarray:
    """``(x - median) / max(1.4826 * MAD, floor)`` for every entry of ``values``.

    NaN entries stay NaN and are ignored by the median and the MAD (an absent
    signal, e.g. a site that skipped a round). A zero scale (every value equal and
    ``floor`` 0) gives zeros rather than infinities: no spread, no outlier.
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.full(x.shape, np.nan, dtype=np.float64)
    live = ~np.isnan(x)
    if not live.any():
        return out
    centre = float(np.median(x[live]))
    mad = float(np.median(np.abs(x[live] - centre)))
    scale = max(MAD_SCALE * mad, float(floor))
    out[live] = 0.0 if scale == 0 else (x[live] - centre) / scale
    return out


def cosine_matrix(deltas: np.ndarray) -> np.ndarray:
    """The ``(n, n)`` cosines between rows, in ``[-1, 1]``. A zero row has no
    direction: cosine 0 with every other row and 1 with itself."""
    norms = row_norms(deltas)
    live = norms > 0
    unit = np.zeros_like(deltas)
    unit[live] = deltas[live] / norms[live, None]
    cos = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)
    return cos


def sign_statistics(deltas: np.ndarray, *, coordinates: np.ndarray | None = None) -> np.ndarray:
    """SignGuard's features: per row, the fractions of positive, zero and negative
    entries (an ``(n, 3)`` array whose rows sum to 1), on the columns ``coordinates``
    (indices) if given. :class:`FlError` when there is no coordinate to count."""
    cols = deltas if coordinates is None else deltas[:, np.asarray(coordinates, dtype=np.intp)]
    d = cols.shape[1]
    if d == 0:
        raise FlError("sign_statistics: no coordinate to count signs on")
    return np.stack(
        [(cols > 0).sum(axis=1) / d, (cols == 0).sum(axis=1) / d, (cols < 0).sum(axis=1) / d],
        axis=1,
    )


#: Deltas beyond this are scaled before DnC's Gram matrix (its entries sum up to
#: ``dims`` squares: 2**256 squared, 10**4 times, stays far from float64's 2**1024).
_SCALE_ABOVE = 2.0**256


def dnc_scores(
    deltas: np.ndarray, *, dims: int, iterations: int, rng: np.random.Generator
) -> np.ndarray:
    """DnC's outlier scores, an ``(iterations, n)`` array (NDSS 2021, Algorithm 2).

    Each iteration samples ``min(dims, d)`` coordinates without replacement (in
    increasing order), centres the sub-vectors on their mean ``mu``, takes the top
    right singular vector ``v`` of the centred matrix and scores each update by
    ``((x_i - mu) @ v) ** 2``: the energy of the direction along which the round
    varies most, which a colluding group shifted the same way dominates.

    The projections come from the ``n x n`` Gram matrix rather than an SVD of the
    ``n x b`` one: with ``C = U S V^T``, ``C v_1 = s_1 u_1``, so the scores are
    ``lambda_1 * u_1 ** 2`` for the top eigenpair of ``C C^T``. The same numbers,
    without a multithreaded LAPACK call that a loaded machine slows 10-100x (measured
    here: 0.3-0.8 s against 0.02-0.05 s single-threaded for ``20 x 10000``).
    """
    n, d = deltas.shape
    if d == 0:
        raise FlError("dnc_scores: the deltas have no coordinate")
    if dims < 1 or iterations < 1:
        raise FlError(f"dnc_scores: dims and iterations must be >= 1 ({dims}, {iterations})")
    b = min(dims, d)
    out = np.empty((iterations, n), dtype=np.float64)
    for it in range(iterations):
        idx = np.sort(rng.choice(d, size=b, replace=False))
        sub = deltas[:, idx]
        # deltas so large that their Gram matrix would overflow (a float64 model
        # moved by 1e200: finite, and accepted) are scaled by a power of two first,
        # which changes no ranking; their row of scores stays scaled if scaling back
        # would overflow (LAPACK did not converge on infinities)
        peak = float(np.max(np.abs(sub))) if sub.size else 0.0
        shift = math.frexp(peak)[1] if peak > _SCALE_ABOVE else 0
        if shift:
            sub = np.ldexp(sub, -shift)
        centred = sub - sub.mean(axis=0)
        gram = np.einsum("ik,jk->ij", centred, centred)  # no BLAS threads
        try:
            values, vectors = np.linalg.eigh(gram)
        except np.linalg.LinAlgError as exc:
            raise FlError(f"dnc_scores: no eigenvectors for this round's deltas ({exc})") from None
        row = max(float(values[-1]), 0.0) * vectors[:, -1] ** 2
        if shift:
            with np.errstate(over="ignore"):
                back = np.ldexp(row, 2 * shift)
            row = back if np.isfinite(back).all() else row
        out[it] = row
    return out


def flame_clusters(deltas: np.ndarray) -> np.ndarray:
    """FLAME's admission clustering: HDBSCAN on the cosine distances ``1 - cos``
    (precomputed) with ``min_cluster_size = n // 2 + 1``, ``min_samples = 1`` and
    ``allow_single_cluster=True``, as the paper's reference (which uses the
    ``hdbscan`` package; here scikit-learn's implementation). Returns one label per
    row, ``-1`` for an outlier. A single update is its own cluster (label 0):
    HDBSCAN needs clusters of at least two.

    In single-cluster mode HDBSCAN labels a point of the one cluster as an outlier
    when it falls out of the cluster before the cluster shrinks below
    ``min_cluster_size``: with ``k`` updates in the majority direction, up to
    ``k - (n // 2 + 1)`` of the farthest of them (honest or not) are outliers too.
    The ``hdbscan`` package that FLAME's reference uses does the same."""
    n = deltas.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    dist = 1.0 - cosine_matrix(deltas)
    dist = np.maximum(dist, 0.0)  # rounding can leave -1e-16 between identical rows
    np.fill_diagonal(dist, 0.0)
    from sklearn.cluster import HDBSCAN

    clusterer = HDBSCAN(
        min_cluster_size=n // 2 + 1,
        min_samples=1,
        metric="precomputed",
        allow_single_cluster=True,
        copy=True,
    )
    with single_threaded():
        return np.asarray(clusterer.fit_predict(dist), dtype=np.int64)


def round_rng(rule: str, seed: int, round: int, key: tuple[int, ...] = ()) -> np.random.Generator:
    """The generator of ``rule`` for ``round``: ``default_rng([*key, seed, round])``, the
    same draws whenever the same round is aggregated again (a restart, a clone); ``key``
    the aggregator's secret (:mod:`._secret`), empty for the seed alone."""
    if isinstance(round, bool) or not isinstance(round, int | np.integer) or round < 0:
        raise FlError(f"{rule}: the round must be an integer >= 0 to seed it, not {round!r}")
    return np.random.default_rng([*key, int(seed), int(round)])


def kept_model(
    rule: str,
    global_params: Params,
    kept: Sequence[Update],
    delta: np.ndarray,
    everyone: Sequence[Update],
) -> Params:
    """The new model from a flat float64 ``delta`` over the floating-point tensors (in
    :func:`delta_matrix`'s layout): ``global + delta`` for those, and for integer and
    bool tensors the rounded median of ``everyone``'s values, the whole round's (the
    global model's when nothing is kept), in the model's dtypes. The rules' filters
    look at floating-point deltas only: attackers with central deltas are kept first,
    so the kept set may be theirs; of the whole round they are fewer than half."""
    names = _robust.float_names(global_params)
    pieces: dict[str, np.ndarray] = {}
    start = 0
    for name in names:
        size = global_params[name].size
        pieces[name] = delta[start : start + size]
        start += size
    if start != delta.size:
        raise FlError(f"{rule}: the aggregated delta has {delta.size} values, not {start}")
    others = [name for name in global_params if name not in pieces]
    out: Params = {}
    if kept:
        out = _robust.combine(rule, global_params, everyone, _robust.median, others)
    else:
        out = {name: global_params[name].copy() for name in others}
    out.update(_robust.apply_delta(rule, global_params, pieces))
    return {name: out[name] for name in global_params}
