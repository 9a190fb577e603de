"""FedAvg (McMahan et al., 2017) and FedProx (Li et al., 2020).

FedAvg's new global model is the sample-weighted mean of the collaborators' models,
``sum_i n_i x_i / sum_i n_i``, accumulated in float64 and cast back to each tensor's
dtype (integer and bool tensors, such as BatchNorm's ``num_batches_tracked``, are
rounded to the nearest value). Both entry points give bit-identical results, as
they add the same float64 terms in the same order:

- :meth:`FedAvg.aggregate` takes the whole round and walks the model in chunks:
  each update's chunk is copied into one row of a small scratch matrix (a long
  sequential read per update, which the hardware prefetches well), then
  ``einsum("k,kn->n", dtype=float64)`` casts the rows to float64 in L1-sized
  pieces and sums them weighted by sample count, in update order, without BLAS
  (whose own threads would fight ours) and without FMA: exactly the fold order of
  the accumulator below. The updates are read once and nothing round-sized is
  stacked: extra memory is the result (one model) plus at most
  :data:`SCRATCH_BYTES` per thread. NaN/Inf is looked for in the result chunks
  (where any non-finite input would show), so the check costs no second pass over
  the updates; only when one is found are the updates scanned to name the culprit.
- :meth:`FedAvg.accumulator` folds updates one at a time as they arrive (checking
  each fully, NaN/Inf included, before it touches the sum, so a refused update
  leaves the round intact): memory is one float64 model (two float32 models) plus
  the update being folded, whatever the number of collaborators; the result is
  made inside the sum's memory, so finishing the round needs no more.

Large tensors are split across ``threads`` threads (:mod:`._blocks`); every element
is summed by one thread, from +0.0, in update order, so the result does not depend
on the thread count or on the entry point. Per element and update the kernels cast
to float64, multiply by the sample count (exact for float32 models: a float32
times an integer below 2**29 fits float64's 53-bit mantissa) and add.

FedProx is FedAvg on the server; its proximal term ``mu/2 ||w - w_global||^2`` is
added to the collaborators' local loss, so :meth:`FedProx.configure` sends
``proximal_mu`` with every round's configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl._tensors import all_finite
from secfl.fl.strategies import _blocks
from secfl.fl.strategies._base import (
    Accumulator,
    Params,
    Strategy,
    Update,
    check_global,
    check_round,
    check_update,
    positive,
)
from secfl.fl.strategies._blocks import BLOCK
from secfl.fl.strategies._registry import register_strategy

__all__ = ["SCRATCH_BYTES", "FedAvg", "FedAvgAccumulator", "FedProx"]

#: Scratch per thread of the whole-round kernel (its rows, one per update).
SCRATCH_BYTES = 16 << 20


def _chunk(updates: int, itemsize: int) -> int:
    """Elements per chunk of the whole-round kernel: as many as fit ``SCRATCH_BYTES``
    for ``updates`` rows, a multiple of 4096 within [4096, 131072]. It depends on the
    round and the dtype only, so chunk boundaries never depend on the thread count."""
    fit = SCRATCH_BYTES // (itemsize * updates) // 4096 * 4096
    return max(4096, min(1 << 17, fit))


def _store(total: np.ndarray, out: np.ndarray) -> None:
    """Write a float64 block into ``out``'s dtype (rounded for integers and bools)."""
    if out.dtype.kind not in "fc":
        np.rint(total, out=total)
    np.copyto(out, total, casting="unsafe")


def _fold_block(
    total: np.ndarray, source: np.ndarray, weight: np.float64, scratch: np.ndarray
) -> None:
    """``total += weight * source`` in float64 (``source`` of any dtype)."""
    np.copyto(scratch, source, casting="unsafe")
    np.multiply(scratch, weight, out=scratch)
    np.add(total, scratch, out=total)


def _first_block(total: np.ndarray, source: np.ndarray, weight: np.float64) -> None:
    """``total = 0.0 + weight * source`` in float64 (the sum starts from +0.0, as
    ``einsum`` does, so an all -0.0 element gives +0.0 on both paths)."""
    np.copyto(total, source, casting="unsafe")
    np.multiply(total, weight, out=total)
    np.add(total, 0.0, out=total)


class FedAvgAccumulator(Accumulator):
    """FedAvg folded one update at a time (see the module docstring).

    The sum is one float64 buffer per tensor; :meth:`finish` divides and converts it
    tensor by tensor inside its own memory, then passes the mean to the strategy's
    server step (identity for FedAvg and FedProx).
    """

    def __init__(self, strategy: FedAvg, round: int, global_params: Params) -> None:
        super().__init__()
        self._strategy = strategy
        self._round = round
        self._global = global_params
        self._sums: dict[str, np.ndarray] = {}
        self._total = 0
        self._broken = False

    def _add(self, update: Update) -> None:
        if self._broken:
            raise FlError("aggregate: the round's sum is unusable after an earlier failure")
        check_update(update, self._global)
        first = not self._sums
        sums = (
            {name: np.empty(ref.size, dtype=np.float64) for name, ref in self._global.items()}
            if first
            else self._sums
        )
        try:
            self._fold(update, sums, first)
        except BaseException:
            self._broken = not first  # a half-folded update poisons the sum
            raise
        self._sums = sums
        self._total += int(update.num_samples)

    def _fold(self, update: Update, sums: dict[str, np.ndarray], first: bool) -> None:
        weight = np.float64(int(update.num_samples))
        for name in self._global:
            source = update.params[name].reshape(-1)
            total = sums[name]

            def work(
                lo: int, hi: int, total: np.ndarray = total, source: np.ndarray = source
            ) -> None:
                scratch = None if first else np.empty(min(BLOCK, hi - lo), dtype=np.float64)
                with np.errstate(over="ignore", invalid="ignore"):  # finish() checks
                    for begin in range(lo, hi, BLOCK):
                        end = min(begin + BLOCK, hi)
                        if scratch is None:
                            _first_block(total[begin:end], source[begin:end], weight)
                        else:
                            part = scratch[: end - begin]
                            _fold_block(total[begin:end], source[begin:end], weight, part)

            _blocks.run(total.size, self._strategy.threads, work)

    def _finish(self) -> Params:
        if self._broken:
            raise FlError("aggregate: the round's sum is unusable after an earlier failure")
        divisor = np.float64(self._total)
        out: Params = {}
        for name, ref in self._global.items():
            total = self._sums.pop(name)
            with np.errstate(over="ignore", invalid="ignore"):  # the result is checked
                result = _narrow_in_place(total, divisor, ref.dtype, ref.shape)
            del total
            if not all_finite(result):
                raise FlError(f"aggregate: the mean of tensor '{name}' overflows its dtype")
            out[name] = result
        return self._strategy._server_step(self._round, self._global, out)


def _narrow_in_place(
    total: np.ndarray, divisor: np.float64, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> np.ndarray:
    """``total / divisor`` (``total`` a private float64 buffer) as ``dtype``, made in
    ``total``'s own memory.

    Each block is divided, converted into a scratch block and written to the front
    of the buffer (element ``i`` of the result lands at or before the byte where
    element ``i`` of the sum starts, so nothing unread is overwritten; hence one
    thread); the buffer is then shrunk with ``realloc``. The result is a view of
    that buffer: finishing a round never holds the sum and the result together.
    """
    size = total.size
    if size == 0:
        return np.empty(shape, dtype=dtype)
    scratch = np.empty(min(BLOCK, size), dtype=dtype)
    narrow = total.view(dtype)
    for begin in range(0, size, BLOCK):
        end = min(begin + BLOCK, size)
        block = total[begin:end]
        np.divide(block, divisor, out=block)
        part = scratch[: end - begin]
        _store(block, part)
        narrow[begin:end] = part
    del narrow, block
    nbytes = size * dtype.itemsize
    # no view of ``total`` is alive (it was only ever in this accumulator), so the
    # refcount check numpy cannot do reliably from inside a call is safe to skip
    total.resize((nbytes + 7) // 8, refcheck=False)
    return total.view(np.uint8)[:nbytes].view(dtype).reshape(shape)


class FedAvg(Strategy):
    """Sample-weighted averaging of the collaborators' models (McMahan et al., 2017).

    ``threads``: how many threads aggregate a large tensor (default: the CPUs this
    process may use, at most 8); it changes speed only, never the result.
    """

    name = "fedavg"
    streaming = True

    def __init__(
        self, *, threads: int | None = None, client_config: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(client_config=client_config)
        if threads is None:
            threads = _blocks.default_threads()
        if type(threads) is not int or threads < 1:
            raise FlError(f"{self.name}: threads must be a positive integer, not {threads!r}")
        self.threads = threads

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        check_global(global_params)
        check_round(updates)
        for update in updates:
            check_update(update, global_params, finite=False)  # NaN/Inf: seen in the result
        return self._server_step(round, global_params, self._mean(global_params, updates))

    def accumulator(self, round: int, global_params: Params) -> Accumulator:
        check_global(global_params)
        return FedAvgAccumulator(self, round, global_params)

    def _server_step(self, round: int, global_params: Params, mean: Params) -> Params:
        """What the server does with the mean: FedAvg takes it as the new model."""
        return mean

    def _mean(self, global_params: Params, updates: Sequence[Update]) -> Params:
        """The weighted mean, chunk by chunk across all updates (module docstring)."""
        weights = np.array([float(int(u.num_samples)) for u in updates], dtype=np.float64)
        divisor = np.float64(sum(int(u.num_samples) for u in updates))
        out: Params = {}
        for name, ref in global_params.items():
            result = np.empty(ref.shape, dtype=ref.dtype)
            flat = result.reshape(-1)
            sources = [u.params[name].reshape(-1) for u in updates]
            check = ref.dtype.kind in "fc"
            chunk = _chunk(len(updates), ref.dtype.itemsize)

            def work(
                lo: int,
                hi: int,
                name: str = name,
                flat: np.ndarray = flat,
                sources: list[np.ndarray] = sources,
                check: bool = check,
                chunk: int = chunk,
            ) -> None:
                width = min(chunk, hi - lo)
                rows = np.empty((len(sources), width), dtype=flat.dtype)
                total = np.empty(width, dtype=np.float64)
                finite = np.empty(width, dtype=bool)
                with np.errstate(over="ignore", invalid="ignore"):  # checked below
                    for begin in range(lo, hi, chunk):
                        end = min(begin + chunk, hi)
                        n = end - begin
                        block_rows, acc = rows[:, :n], total[:n]
                        for row, source in zip(block_rows, sources, strict=True):
                            np.copyto(row, source[begin:end])
                        # the rows are cast to float64 inside einsum, in L1-sized pieces
                        np.einsum(
                            "k,kn->n", weights, block_rows, out=acc, dtype=np.float64,
                            casting="safe",
                        )  # fmt: skip
                        np.divide(acc, divisor, out=acc)
                        block = flat[begin:end]
                        _store(acc, block)
                        if check:
                            ok = finite[:n]
                            np.isfinite(block, out=ok)
                            if not ok.all():
                                _name_culprit(name, updates, begin, end)

            _blocks.run(flat.size, self.threads, work, align=chunk)
            out[name] = result
        return out

    def settings(self) -> dict[str, Any]:
        return {"threads": self.threads, **super().settings()}


def _name_culprit(name: str, updates: Sequence[Update], begin: int, end: int) -> None:
    """Raise naming the first update whose block of ``name`` is not finite (or, if
    every input is finite, the overflow of the mean)."""
    for update in updates:
        if not all_finite(update.params[name].reshape(-1)[begin:end]):
            raise FlError(
                f"aggregate: the update from '{update.sender}': tensor '{name}' holds NaN or Inf"
            )
    raise FlError(f"aggregate: the mean of tensor '{name}' overflows its dtype")


register_strategy(FedAvg)


class FedProx(FedAvg):
    """FedAvg with a proximal term on the collaborators' side (Li et al., 2020).

    ``mu`` (>= 0; 0 is FedAvg) is sent every round as ``proximal_mu``; the
    collaborator adds ``mu/2 * ||w - w_global||^2`` to its local loss.
    """

    name = "fedprox"

    def __init__(
        self,
        *,
        mu: float = 0.01,
        threads: int | None = None,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(threads=threads, client_config=client_config)
        self.mu = positive(mu, "fedprox: mu", allow_zero=True)

    def configure(self, round: int) -> dict[str, Any]:
        config = super().configure(round)
        config["proximal_mu"] = self.mu
        return config

    def settings(self) -> dict[str, Any]:
        return {"mu": self.mu, **super().settings()}


register_strategy(FedProx)
