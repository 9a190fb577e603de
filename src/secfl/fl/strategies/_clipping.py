"""Centered clipping (Karimireddy, He and Jaggi, "Learning from History for
Byzantine Robust Optimization", ICML 2021).

Starting from a center ``v`` (the previous round's aggregated delta; zero in the
first round), the server runs ``iterations`` (the paper's ``L``) steps of::

    v <- v + mean_i clip(x_i - v, tau),   clip(z, tau) = z * min(1, tau / ||z||)

where ``x_i`` is update ``i``'s delta (``params - global``) and ``||.||`` the
Euclidean norm over all floating-point tensors of the model together. The new
model is ``global + v``, and ``v`` becomes the next round's center: it is the
strategy's :meth:`~CenteredClipping.state` (``center/<tensor>`` arrays, in the
tensor's dtype widened to at least float32, as FedAdam's moments), so it survives
a restart through a sealed checkpoint. An update can move the center by at most
``tau / n`` per step, however far away it is. Sample counts are ignored (a plain
mean). Integer and bool tensors have no direction to clip: they take the
(rounded) coordinate-wise median of their values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl._tensors import all_finite
from secfl.fl.strategies import _robust
from secfl.fl.strategies._base import Params, Strategy, Update, positive
from secfl.fl.strategies._registry import register_strategy

__all__ = ["CenteredClipping"]


def _center_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return np.result_type(dtype, np.float32)


@register_strategy
class CenteredClipping(Strategy):
    """Iterative clipping around the previous round's aggregate (module docstring)."""

    name = "centered-clipping"

    def __init__(
        self,
        *,
        tau: float,
        iterations: int = 1,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(client_config=client_config)
        self.tau = positive(tau, f"{self.name}: tau")
        self.iterations = _robust.count_setting(
            iterations, f"{self.name}: iterations", 1, _robust.MAX_ITERATIONS
        )
        self._center: dict[str, np.ndarray] = {}

    def _check_center(self, names: Sequence[str], global_params: Params) -> None:
        """The kept center must belong to this model: checked before anything changes."""
        if not self._center:
            return
        unknown = sorted(set(self._center) - set(names))
        if unknown:
            raise FlError(f"{self.name}: the saved center names '{unknown[0]}', not in the model")
        missing = sorted(set(names) - set(self._center))
        if missing:
            raise FlError(f"{self.name}: the saved center lacks tensor '{missing[0]}' of the model")
        for name in names:
            ref, center = global_params[name], self._center[name]
            want = _center_dtype(ref.dtype)
            if center.shape != ref.shape or center.dtype != want:
                raise FlError(
                    f"{self.name}: the saved center of tensor '{name}' has shape {center.shape} "
                    f"and dtype {center.dtype}; the model needs {ref.shape} and {want}"
                )

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        _robust.check_inputs(self.name, global_params, updates)
        names = _robust.float_names(global_params)
        self._check_center(names, global_params)
        deltas = {name: _robust.stack(name, global_params, updates, delta=True) for name in names}
        center = {
            name: (
                self._center[name].reshape(-1).astype(np.float64)
                if self._center
                else np.zeros(global_params[name].size, dtype=np.float64)
            )
            for name in names
        }
        n = len(updates)
        for _ in range(self.iterations):
            norms_sq = np.zeros(n, dtype=np.float64)
            for name in names:
                gap = deltas[name] - center[name]
                norms_sq += np.einsum("ij,ij->i", gap, gap)
            norms = np.sqrt(norms_sq)
            if not np.isfinite(norms).all():
                raise FlError(f"{self.name}: the distances to the center overflow float64")
            scale = np.ones(n, dtype=np.float64)
            far = norms > self.tau
            scale[far] = self.tau / norms[far]
            for name in names:
                gap = deltas[name] - center[name]
                center[name] = center[name] + (scale @ gap) / n
        others = [name for name in global_params if name not in center]
        result = _robust.combine(self.name, global_params, updates, _robust.median, others)
        result.update(_robust.apply_delta(self.name, global_params, center))
        self._center = {}
        for name in names:
            ref = global_params[name]
            self._center[name] = center[name].astype(_center_dtype(ref.dtype)).reshape(ref.shape)
        return {name: result[name] for name in global_params}

    # --- state ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """``{"strategy", "center/<tensor>": array}``; the arrays are the live center."""
        out: dict[str, Any] = {"strategy": self.name}
        for name, value in self._center.items():
            out[f"center/{name}"] = value
        return out

    def load_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("strategy") != self.name:
            got = state.get("strategy") if isinstance(state, Mapping) else None
            raise FlError(f"{self.name}: the saved state is of strategy {got!r}")
        center: dict[str, np.ndarray] = {}
        for key, value in state.items():
            if key == "strategy":
                continue
            kind, _, name = key.partition("/")
            if kind != "center" or not name:
                raise FlError(f"{self.name}: unexpected key {key!r} in the saved state")
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                raise FlError(f"{self.name}: the saved center {key!r} is not a float array")
            if not all_finite(value):
                raise FlError(f"{self.name}: the saved center {key!r} holds NaN or Inf")
            center[name] = np.array(value, copy=True)
        self._center = center

    def settings(self) -> dict[str, Any]:
        return {"tau": self.tau, "iterations": self.iterations, **super().settings()}
