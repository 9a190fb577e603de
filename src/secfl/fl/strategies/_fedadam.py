"""FedAdam: Adam as the server optimizer (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Algorithm 2).

Each round the server averages the collaborators' models as FedAvg does (weighted
by sample count), takes the pseudo-gradient ``g = x - mean`` (the opposite of the
paper's ``Delta_t = mean - x``), and steps::

    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g**2
    x <- x - server_lr * m / (sqrt(v) + tau)

with ``m`` starting at 0 and ``v`` at ``tau**2`` (the paper's ``v_{-1} >= tau**2``),
and no bias correction, as in the paper. (Flower's FedAdam starts ``v`` at 0 and, in
recent versions, corrects the bias; results differ from it in the first rounds.)

Only floating-point tensors are stepped; integer and bool tensors (counters such as
BatchNorm's ``num_batches_tracked``) take FedAvg's value. The moments are kept in
the tensor's dtype, widened to at least float32 (as PyTorch's Adam keeps them in the
parameter's dtype); the arithmetic is float64, block by block, so the step needs
only a few cache-sized scratch buffers. The moments are the strategy's
:meth:`~FedAdam.state`, so they survive a restart through a sealed checkpoint.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl._tensors import all_finite
from secfl.fl.strategies import _blocks
from secfl.fl.strategies._base import Params, positive
from secfl.fl.strategies._blocks import BLOCK
from secfl.fl.strategies._fedavg import FedAvg
from secfl.fl.strategies._registry import register_strategy

__all__ = ["FedAdam"]


def _moment_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return np.result_type(dtype, np.float32)


class FedAdam(FedAvg):
    """FedAvg's mean followed by an Adam step on the server (module docstring)."""

    name = "fedadam"

    def __init__(
        self,
        *,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        threads: int | None = None,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(threads=threads, client_config=client_config)
        self.server_lr = positive(server_lr, "fedadam: server_lr")
        self.beta1 = positive(beta1, "fedadam: beta1", allow_zero=True)
        self.beta2 = positive(beta2, "fedadam: beta2", allow_zero=True)
        if self.beta1 >= 1 or self.beta2 >= 1:
            raise FlError("fedadam: beta1 and beta2 must be in [0, 1)")
        self.tau = positive(tau, "fedadam: tau")
        self.step = 0
        self._m: dict[str, np.ndarray] = {}
        self._v: dict[str, np.ndarray] = {}
        self._keeps_moments = True  # False in a trial: the moments are read, not written

    def settings(self) -> dict[str, Any]:
        return {
            "server_lr": self.server_lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
            **super().settings(),
        }

    # --- the server step ------------------------------------------------------------------

    def _check_moments(self, global_params: Params) -> None:
        """The kept moments must belong to this model: checked before anything changes."""
        stepped = {n: a for n, a in global_params.items() if a.dtype.kind == "f"}
        unknown = sorted(set(self._m) - set(stepped))
        if unknown:
            raise FlError(f"fedadam: the saved moments name '{unknown[0]}', not in the model")
        missing = sorted(set(stepped) - set(self._m)) if self._m else []
        if missing:
            raise FlError(f"fedadam: the saved moments lack tensor '{missing[0]}' of the model")
        for name, moment in self._m.items():
            ref = stepped[name]
            want = _moment_dtype(ref.dtype)
            if moment.shape != ref.shape or moment.dtype != want:
                raise FlError(
                    f"fedadam: the saved moments of tensor '{name}' have shape {moment.shape} "
                    f"and dtype {moment.dtype}; the model needs {ref.shape} and {want}"
                )

    def _server_step(self, round: int, global_params: Params, mean: Params) -> Params:
        self._check_moments(global_params)
        self._adam(global_params, mean)
        self.step += 1
        return mean

    def trial(self) -> FedAdam:
        """This rule over the same moments, read and never written: a clone audit's
        clone steps from them without a copy (two of the model's size each, ~31
        clones a round)."""
        view = copy.copy(self)
        view._keeps_moments = False
        return view

    def _adam(self, global_params: Params, mean: Params) -> None:
        """One Adam step, written into ``mean``'s arrays; moments updated in place
        (in a :meth:`trial`, left as they are).

        The inputs are finite (checked), so a non-finite result needs values near
        float64's range; it is refused, but the moments are then already changed:
        resume from the last checkpoint.
        """
        for name, x in global_params.items():
            if x.dtype.kind != "f":
                continue
            dtype = _moment_dtype(x.dtype)
            if name not in self._m and self._keeps_moments:
                self._m[name] = np.zeros(x.shape, dtype=dtype)
                self._v[name] = np.full(x.shape, self.tau**2, dtype=dtype)
            flats = (
                x.reshape(-1),
                mean[name].reshape(-1),  # a fresh array: the step writes into it
                self._m[name].reshape(-1) if name in self._m else None,
                self._v[name].reshape(-1) if name in self._v else None,
            )
            v0 = np.float64(np.asarray(self.tau**2, dtype=dtype))  # as a first step keeps it
            step = functools.partial(self._adam_range, *flats, v0=v0)
            _blocks.run(x.size, self.threads, step)
            if not all_finite(mean[name]):
                raise FlError(f"fedadam: the step made tensor '{name}' non-finite")

    def _adam_range(
        self,
        x_flat: np.ndarray,
        out_flat: np.ndarray,
        m_flat: np.ndarray | None,
        v_flat: np.ndarray | None,
        lo: int,
        hi: int,
        *,
        v0: np.float64,
    ) -> None:
        """The step on ``[lo, hi)``; moments ``None`` (a trial's first step): 0 and
        ``v0`` (``tau**2`` in the moments' dtype), as a first step starts them."""
        b1, b2 = np.float64(self.beta1), np.float64(self.beta2)
        c1, c2 = np.float64(1.0) - b1, np.float64(1.0) - b2
        lr, tau = np.float64(self.server_lr), np.float64(self.tau)
        size = min(BLOCK, hi - lo)
        g, m64, v64, tmp = (np.empty(size, dtype=np.float64) for _ in range(4))
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are refused
            for begin in range(lo, hi, BLOCK):
                end = min(begin + BLOCK, hi)
                n = end - begin
                gb, mb, vb, tb = g[:n], m64[:n], v64[:n], tmp[:n]
                xs = x_flat[begin:end]
                np.subtract(xs, out_flat[begin:end], out=gb, dtype=np.float64)
                if m_flat is None or v_flat is None:
                    mb.fill(0.0)
                    vb.fill(v0)
                else:
                    np.copyto(mb, m_flat[begin:end])
                    np.copyto(vb, v_flat[begin:end])
                np.multiply(mb, b1, out=mb)
                np.multiply(gb, c1, out=tb)
                np.add(mb, tb, out=mb)
                np.multiply(vb, b2, out=vb)
                np.multiply(gb, gb, out=tb)
                np.multiply(tb, c2, out=tb)
                np.add(vb, tb, out=vb)
                if self._keeps_moments and m_flat is not None and v_flat is not None:
                    np.copyto(m_flat[begin:end], mb, casting="unsafe")
                    np.copyto(v_flat[begin:end], vb, casting="unsafe")
                # x - lr * m / (sqrt(v) + tau)
                np.sqrt(vb, out=tb)
                np.add(tb, tau, out=tb)
                np.divide(mb, tb, out=tb)
                np.multiply(tb, lr, out=tb)
                np.subtract(xs, tb, out=tb, dtype=np.float64)
                np.copyto(out_flat[begin:end], tb, casting="unsafe")

    # --- state ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """``{"strategy", "step", "m/<tensor>": array, "v/<tensor>": array}``; the arrays
        are the live moments (serialize them before the next round)."""
        out: dict[str, Any] = {"strategy": self.name, "step": self.step}
        for name in self._m:
            out[f"m/{name}"] = self._m[name]
            out[f"v/{name}"] = self._v[name]
        return out

    def load_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("strategy") != self.name:
            got = state.get("strategy") if isinstance(state, Mapping) else None
            raise FlError(f"fedadam: the saved state is of strategy {got!r}")
        step = state.get("step")
        if type(step) is not int or step < 0:
            raise FlError(f"fedadam: the saved step {step!r} is not a non-negative integer")
        m: dict[str, np.ndarray] = {}
        v: dict[str, np.ndarray] = {}
        for key, value in state.items():
            if key in ("strategy", "step"):
                continue
            kind, _, name = key.partition("/")
            if kind not in ("m", "v") or not name:
                raise FlError(f"fedadam: unexpected key {key!r} in the saved state")
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                raise FlError(f"fedadam: the saved moment {key!r} is not a float array")
            if not all_finite(value) or (kind == "v" and bool((value < 0).any())):
                raise FlError(f"fedadam: the saved moment {key!r} holds invalid values")
            (m if kind == "m" else v)[name] = np.array(value, copy=True)
        if set(m) != set(v):
            odd = sorted(set(m) ^ set(v))[0]
            raise FlError(f"fedadam: the saved state has one moment of tensor '{odd}', not two")
        for name in m:
            if m[name].shape != v[name].shape or m[name].dtype != v[name].dtype:
                raise FlError(f"fedadam: the saved moments of tensor '{name}' differ in shape")
        self.step, self._m, self._v = step, m, v


register_strategy(FedAdam)
