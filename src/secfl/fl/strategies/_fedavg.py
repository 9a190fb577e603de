"""FedAvg (McMahan et al., 2017) and FedProx (Li et al., 2020).

FedAvg's new global model is the sample-weighted mean of the collaborators' models,
``sum_i n_i x_i / sum_i n_i``. The sum is :class:`~._exact.ExactSum`'s: each term
rounded on its own to a fixed-point grid and added as 64-bit integers, so the model
is **bit-identical whatever order the updates come in**, whether they are folded one
by one as they arrive (:meth:`FedAvg.accumulator`) or all at once
(:meth:`FedAvg.aggregate`), and whatever the thread count — for the same grid
(the accumulator's ``weight_bound``; ``aggregate`` uses the round's own total, and
widens a tensor's range to the round's largest value where an update goes beyond
what an accumulator accepts: it sees an attacker's huge update, the accumulator
refuses it).
Reproducible aggregation therefore needs no buffered round: the aggregator folds
every update on arrival in either ``aggregation_order``.

The accumulator checks an update fully (shapes, dtypes, NaN/Inf, the exact sum's
range, the round's sample bound) before it touches the sum, so a refused update
leaves the round intact; a receiver that folds a streamed update piece by piece
(:meth:`FedAvgAccumulator.incoming`) takes the folded pieces out again, exactly, if
the stream fails half-way. Memory: one int64 sum per parameter (two float32
models) plus what is being folded (a stretch, for a streamed update: its take-back
copy waits on disk, sealed, not in memory: :mod:`secfl.fl._spill`); the mean is made
inside the sum's memory, or (:meth:`FedAvgAccumulator.finish_into`) written into the
new model's bytes while the sum is given back as it is read, a few blocks beside it.

Integer and bool tensors (BatchNorm's ``num_batches_tracked``) are averaged the
same way and rounded to the nearest value.

FedProx is FedAvg on the server; its proximal term ``mu/2 ||w - w_global||^2`` is
added to the collaborators' local loss, so :meth:`FedProx.configure` sends
``proximal_mu`` with every round's configuration.
"""

from __future__ import annotations

import math
import mmap
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl._tensors import all_finite, header_layout
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
from secfl.fl.strategies._exact import DEFAULT_WEIGHT_BOUND, ExactSum, magnitude
from secfl.fl.strategies._registry import register_strategy

__all__ = ["FedAvg", "FedAvgAccumulator", "FedProx", "Incoming"]


class Incoming:
    """One update being folded piece by piece as it streams in (see
    :meth:`FedAvgAccumulator.incoming`). Every folded piece is remembered by place, so
    :meth:`abort` can take them out again from the same bytes."""

    def __init__(self, acc: FedAvgAccumulator, sender: str, samples: int) -> None:
        self._acc = acc
        self.sender = sender
        self.samples = samples
        self._pieces: list[tuple[str, int, int]] = []
        self._open = True

    def fold(self, name: str, begin: int, values: np.ndarray) -> None:
        """Check and add elements ``begin...`` of tensor ``name``; a refused piece adds
        nothing (the caller then calls :meth:`abort`)."""
        if not self._open:
            raise FlError("aggregate: the update was already finished")
        self._acc.exact.check(name, values, self.sender)
        self._pieces.append((name, begin, values.size))
        try:
            self._acc.exact.fold(name, begin, values, self.samples)
        except BaseException:
            self._acc.broken = True  # half a piece: nothing can say which elements
            raise

    def abort(self, values: Callable[[str, int, int], np.ndarray]) -> None:
        """Take every folded piece out again; ``values(name, begin, size)`` gives the
        same values that were folded there."""
        if not self._open:
            return
        self._open = False
        try:
            for name, begin, size in reversed(self._pieces):
                self._acc.exact.fold(name, begin, values(name, begin, size), self.samples, -1)
        except BaseException:
            self._acc.broken = True
            raise
        finally:
            self._acc.exact.release(self.samples)
            self._acc.busy = False

    def done(self, folded_elements: int) -> None:
        """The whole update is in: it counts as the sender's (``folded_elements`` must
        be the model's size)."""
        if folded_elements != self._acc.elements:
            raise FlError(
                f"aggregate: the update from '{self.sender}' folded {folded_elements} of "
                f"{self._acc.elements} values"
            )
        self._open = False
        self._acc.busy = False
        self._acc._count(self.sender)


class FedAvgAccumulator(Accumulator):
    """FedAvg folded one update at a time, exactly (see the module docstring).

    ``weight_bound``: the most samples the round may bring in all (the sampled
    collaborators' reported counts); it fixes the fixed-point grid, so two
    accumulators with the same bound give bit-identical models for the same updates.
    """

    order_free = True

    def __init__(
        self,
        strategy: FedAvg,
        round: int,
        global_params: Params,
        weight_bound: int = DEFAULT_WEIGHT_BOUND,
        extents: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self._strategy = strategy
        self._round = round
        self._global = global_params
        self.exact = ExactSum(
            global_params, weight_bound=weight_bound, threads=strategy.threads, extents=extents
        )
        self.elements = sum(int(ref.size) for ref in global_params.values())
        self.broken = False
        self.busy = False
        #: Guards ``busy``: one update is folded at a time, whichever way it comes.
        self._claim = threading.Lock()

    def _take_turn(self) -> None:
        """Become the one update being folded (``FlError`` if another one is)."""
        with self._claim:
            self._usable()
            self.busy = True

    def _usable(self) -> None:
        if self.broken:
            raise FlError("aggregate: the round's sum is unusable after an earlier failure")
        if self.busy:
            raise FlError("aggregate: another update is being folded")

    def incoming(self, sender: str, samples: int) -> Incoming:
        """Start folding ``sender``'s update of ``samples`` samples piece by piece."""
        if self._finished:
            raise FlError("aggregate: the round is already aggregated")
        if sender in self.senders:
            raise FlError(f"aggregate: two updates from '{sender}' in one round")
        if type(samples) is not int or samples <= 0:
            raise FlError(f"aggregate: the update from '{sender}' reports {samples!r} samples")
        self._take_turn()
        try:
            self.exact.reserve(samples, sender)
        except BaseException:
            self.busy = False
            raise
        return Incoming(self, sender, samples)

    def _count(self, sender: str) -> None:
        self.senders.append(sender)

    def add(self, update: Update) -> None:
        """Check ``update`` fully, then fold it (a refused update changes nothing)."""
        if self._finished:
            raise FlError("aggregate: the round is already aggregated")
        if update.sender in self.senders:
            raise FlError(f"aggregate: two updates from '{update.sender}' in one round")
        check_update(update, self._global, finite=False)  # NaN/Inf: the range check below
        self._take_turn()
        try:
            for name in self._global:
                self.exact.check(name, update.params[name].reshape(-1), update.sender)
            samples = int(update.num_samples)
            self.exact.reserve(samples, update.sender)
            try:
                for name in self._global:
                    self.exact.fold(name, 0, update.params[name].reshape(-1), samples)
            except BaseException:
                self.broken = True  # a half-folded update poisons the sum
                raise
            self._count(update.sender)
        finally:
            self.busy = False

    def _add(self, update: Update) -> None:  # add() is overridden whole
        raise NotImplementedError

    def finish_into(self, template: bytes | bytearray | memoryview) -> memoryview | None:
        """The new model already serialized, or ``None`` for a rule whose server step
        changes the mean (FedAdam: call :meth:`finish`).

        ``template`` is the global model's safetensors bytes: the new model has the
        same names, dtypes and shapes, so its header is the same bytes, and each mean
        is written straight to its place after it. The result is byte-identical to
        ``to_bytes(finish())`` without holding the model twice (tensors and bytes): it
        goes to fresh anonymous memory, mapped as it is written, while the sum is
        given back as it is read (:meth:`~._exact.ExactSum.mean_into`), so finishing
        needs the sum and a few blocks beside it."""
        if type(self._strategy)._server_step is not FedAvg._server_step:
            return None
        self._usable()
        if self._finished:
            raise FlError("aggregate: the round is already aggregated")
        if not self.senders:
            raise FlError("aggregate: no updates to aggregate")
        self._finished = True
        start, layout = header_layout(template)
        # the sum is given back as the mean lands, so the sum and the new model never
        # coexist in full
        out = _anonymous(len(template))
        out[:start] = template[:start]
        for name, (dtype, _, begin, end) in layout.items():
            ref = self._global[name]
            if (dtype, ref.size * dtype.itemsize) != (ref.dtype, end - begin):
                raise FlError(f"aggregate: the template does not hold tensor '{name}' as the model")
            target = np.frombuffer(out, dtype=dtype, count=ref.size, offset=start + begin)
            self.exact.mean_into(name, target)
            if not all_finite(target):
                raise FlError(f"aggregate: the mean of tensor '{name}' overflows its dtype")
        if set(layout) != set(self._global):
            raise FlError("aggregate: the template holds other tensors than the model")
        return out.toreadonly()

    def _finish(self) -> Params:
        self._usable()
        out: Params = {}
        for name, ref in self._global.items():
            result = self.exact.mean(name, ref.dtype).reshape(ref.shape)
            if not all_finite(result):
                raise FlError(f"aggregate: the mean of tensor '{name}' overflows its dtype")
            out[name] = result
        return self._strategy._server_step(self._round, self._global, out)


class FedAvg(Strategy):
    """Sample-weighted averaging of the collaborators' models (McMahan et al., 2017).

    ``threads``: how many threads aggregate a large tensor (default: the CPUs this
    process may use, at most 8); it changes speed only, never the result.
    """

    name = "fedavg"
    robust = False
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
            check_update(update, global_params, finite=False)  # NaN/Inf: the range check
        bound = sum(int(u.num_samples) for u in updates)
        bound = max(1, min(bound, 1 << 53))
        extents: dict[str, float] = {}
        for name in global_params:
            for update in updates:
                top = magnitude(update.params[name])
                if not math.isfinite(top):
                    raise FlError(
                        f"aggregate: the update from '{update.sender}': tensor '{name}' "
                        "holds NaN or Inf"
                    )
                extents[name] = max(extents.get(name, 0.0), top)
        acc = FedAvgAccumulator(self, round, global_params, weight_bound=bound, extents=extents)
        for update in updates:
            acc.add(update)
        return acc.finish()

    def accumulator(
        self, round: int, global_params: Params, *, weight_bound: int | None = None
    ) -> FedAvgAccumulator:
        check_global(global_params)
        return FedAvgAccumulator(self, round, global_params, weight_bound or DEFAULT_WEIGHT_BOUND)

    def _server_step(self, round: int, global_params: Params, mean: Params) -> Params:
        """What the server does with the mean: FedAvg takes it as the new model."""
        return mean

    def settings(self) -> dict[str, Any]:
        return {"threads": self.threads, **super().settings()}


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


def _anonymous(size: int) -> memoryview:
    """``size`` bytes of private anonymous memory, mapped as they are first written."""
    memory = mmap.mmap(-1, max(1, size), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return memoryview(memory)[:size]
