"""What the robust rules (median, trimmed mean, Krum, Bulyan, centered clipping,
FLTrust) share: input checks, float64 stacks of deltas, casting back to the model's
dtypes, and Krum's distances and scores.

Conventions, the same in every robust rule:

- they work on deltas (``update.params - global``), in float64, and return
  ``global + aggregated delta`` cast back to each tensor's dtype (integers and
  bools rounded to the nearest value), refusing a result that is not finite;
- they ignore sample counts: a robust rule must not let one participant buy
  weight by claiming a large data set;
- the geometry (distances, norms, cosines) is that of the floating-point tensors
  only. Integer and bool tensors (counters such as BatchNorm's
  ``num_batches_tracked``) carry no direction; each rule says what they take.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl.strategies._base import Params, Update, check_global, check_round, check_update

#: A coordinate-wise combination: an ``(n, size)`` float64 stack to a ``(size,)`` result.
Combine = Callable[[np.ndarray], np.ndarray]


def check_inputs(rule: str, global_params: Params, updates: Sequence[Update]) -> None:
    """The interface's preconditions, and real (not complex) numeric tensors."""
    check_global(global_params)
    for name, ref in global_params.items():
        if ref.dtype.kind not in "biuf":
            raise FlError(f"{rule}: tensor '{name}' has dtype {ref.dtype}; a real dtype is needed")
    check_round(updates)
    for update in updates:
        check_update(update, global_params)


#: The largest count a strategy setting may have unless it says otherwise (a seed:
#: numpy's generators take up to 2**63-1; a count of sites or updates is far smaller).
MAX_COUNT = 2**63 - 1
#: Repetitions of a rule's inner loop (each a pass over every update).
MAX_ITERATIONS = 1000
#: Coordinates a rule samples per update (an ``(n, dims)`` float64 matrix: 1.6 GiB at 50).
MAX_DIMS = 1 << 22


def count_setting(value: Any, what: str, minimum: int, maximum: int = MAX_COUNT) -> int:
    """``value`` as an ``int`` from ``minimum`` to ``maximum``, else :class:`FlError`
    (a policy's settings are its board's, but an iteration count of 2**53 hung the
    aggregator at round 1, after every site had trained)."""
    bound = f">= {minimum}" if maximum == MAX_COUNT else f"from {minimum} to {maximum}"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not minimum <= value <= maximum
    ):
        raise FlError(f"{what} must be an integer {bound}, not {value!r}")
    return int(value)


def float_names(global_params: Params) -> list[str]:
    """The floating-point tensors: the ones with a geometry."""
    return [name for name, ref in global_params.items() if ref.dtype.kind == "f"]


def stack(name: str, global_params: Params, updates: Sequence[Update], delta: bool) -> np.ndarray:
    """Tensor ``name`` of every update as an ``(n, size)`` float64 array, minus the
    global model's if ``delta``."""
    ref = global_params[name]
    rows = np.empty((len(updates), ref.size), dtype=np.float64)
    for row, update in zip(rows, updates, strict=True):
        np.copyto(row, update.params[name].reshape(-1), casting="unsafe")
    if delta:
        rows -= ref.reshape(-1).astype(np.float64)
    return rows


def to_dtype(rule: str, name: str, values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """A float64 result as ``ref``'s dtype and shape (rounded for integers and bools);
    :class:`FlError` if it is not finite in that dtype."""
    if ref.dtype.kind != "f":
        values = np.rint(values)
    if not np.isfinite(values).all():
        raise FlError(f"{rule}: the result of tensor '{name}' is not finite")
    with np.errstate(over="ignore"):  # checked below
        out = values.astype(ref.dtype).reshape(ref.shape)
    if ref.dtype.kind == "f" and not np.isfinite(out).all():
        raise FlError(f"{rule}: the result of tensor '{name}' overflows {ref.dtype}")
    return out


def apply_delta(rule: str, global_params: Params, deltas: Mapping[str, np.ndarray]) -> Params:
    """``global + delta`` for every tensor of ``deltas`` (flat float64), in the model's dtypes."""
    out: Params = {}
    for name, delta in deltas.items():
        ref = global_params[name]
        out[name] = to_dtype(rule, name, ref.reshape(-1).astype(np.float64) + delta, ref)
    return out


def combine(
    rule: str,
    global_params: Params,
    updates: Sequence[Update],
    how: Combine,
    names: Sequence[str] | None = None,
) -> Params:
    """A translation-equivariant coordinate-wise rule applied to every tensor (or to
    ``names``): ``global + how(deltas)`` for floating-point tensors, ``how(values)``
    (rounded) for integer and bool ones, which is the same thing without the
    subtraction."""
    deltas: dict[str, np.ndarray] = {}
    out: Params = {}
    for name in global_params if names is None else names:
        ref = global_params[name]
        if ref.dtype.kind == "f":
            deltas[name] = how(stack(name, global_params, updates, delta=True))
        else:
            out[name] = to_dtype(rule, name, how(stack(name, global_params, updates, False)), ref)
    out.update(apply_delta(rule, global_params, deltas))
    return {name: out[name] for name in global_params if name in out}


def median(rows: np.ndarray) -> np.ndarray:
    """The coordinate-wise median (the mean of the two middle values for an even n)."""
    return np.median(rows, axis=0)


def sq_distances(rule: str, global_params: Params, updates: Sequence[Update]) -> np.ndarray:
    """The ``(n, n)`` matrix of squared Euclidean distances between the updates'
    floating-point tensors (those of the models and of the deltas are the same)."""
    n = len(updates)
    dist = np.zeros((n, n), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # checked below
        for name in float_names(global_params):
            rows = stack(name, global_params, updates, delta=True)
            for i in range(n):
                diff = rows - rows[i]
                dist[i] += np.einsum("ij,ij->i", diff, diff)
    if not np.isfinite(dist).all():
        raise FlError(f"{rule}: the distances between the updates overflow float64")
    return dist


def krum_scores(dist: np.ndarray, f: int) -> np.ndarray:
    """Krum's score of each row of ``dist``: the sum of its squared distances to its
    ``n - f - 2`` nearest other updates (at least 1 and at most ``n - 1``, so that
    Bulyan's last selections, on fewer than ``2f + 3`` updates, still score)."""
    n = dist.shape[0]
    k = min(max(1, n - f - 2), n - 1)
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(dist[i], i)
        scores[i] = np.sort(others)[:k].sum()
    return scores
