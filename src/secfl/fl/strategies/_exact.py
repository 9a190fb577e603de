"""An exact, order-independent weighted sum of models: ``sum_i n_i x_i`` in fixed point.

Floating-point addition is not associative: the float64 sum of the same updates
folded in two orders can differ in its last bit, and so can the model. To have a
reproducible model, the aggregator used to hold a whole round and fold it in sender
order. :class:`ExactSum` removes the reason: every term is rounded once, on its own,
to a per-tensor grid of ``2**-F``, and the terms are added as 64-bit integers.
Integer addition is associative and commutative (and two's-complement wrap-around
is too, so even intermediate overflow could not matter), hence **the sum, and the
model made from it, are bit-identical whatever order the updates arrive in, however
many threads fold them, and whether they come one by one or all at once**. An
update can also be taken out again exactly (:meth:`ExactSum.fold` with ``sign=-1``),
which is how a stream that fails half-way is undone.

The grid. For tensor ``t`` let ``E_t`` be the smallest integer with
``max|global_t| <= 2**E_t`` (at least 0) and ``L_t = 2**(E_t + HEADROOM_BITS)`` the
largest magnitude an update may hold there (65536 times the global model's largest
value, or 65536; a round aggregated whole, whose updates are all at hand, widens
``L_t`` to its largest value instead: robust rules and the clone audit must see an
attacker's huge update, not a refusal; up to :data:`MAX_EXTENT`). With ``W`` a
bound on the round's total sample count (the sum of what the sampled collaborators
reported when they joined, else of the policy's ``max_samples``),
``F_t = 62 - bits(W) - E_t - HEADROOM_BITS``, so that
``sum_i n_i |x_i| 2**F_t <= W L_t 2**F_t <= 2**62``: no term and no partial sum can
overflow. A value beyond ``L_t`` (NaN and Inf included) and a running sample count
beyond ``W`` are refused before anything is added. The error of the mean against
exact arithmetic is at most ``K / (2 N 2**F_t)`` for ``K`` updates of ``N`` samples
in all, i.e. ``(K/N) 2**(bits(W) + HEADROOM_BITS - 63)`` of the tensor's scale
``2**E_t``: about ``2**-44`` when ``W`` is close to ``N`` (honest sites report what
they send), far below float32's resolution. A site that reports far more samples at
Join than the round brings (or none: ``max_samples`` counts) coarsens the grid by
the ratio: with ``max_samples`` at 10**9 and a few thousand samples per round the
typical element is then a few float32 half-ulps off. That is why ``max_samples``
should be near the real shard sizes. Integer and bool tensors (BatchNorm's
``num_batches_tracked``) are summed as integers (``F_t = 0``), exactly.

Memory: one int64 per parameter (two float32 models), as the float64 sum it replaces.
A large tensor's sum lives in its own anonymous map, whose pages are given back to
the system as :meth:`ExactSum.mean_into` reads them: making the new model needs the
sum and a few blocks beside it, not a tensor (a sum of 16M elements is 128 MB).
"""

from __future__ import annotations

import ctypes
import math
import mmap
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from secfl._internal.libc import libc
from secfl.errors import FlError
from secfl.fl.strategies import _blocks
from secfl.fl.strategies._blocks import BLOCK

__all__ = [
    "DEFAULT_WEIGHT_BOUND",
    "HEADROOM_BITS",
    "MAX_EXTENT",
    "ExactSum",
    "fraction_bits",
    "magnitude",
]

#: How far beyond the global model's largest value an update may go (as a power of 2).
HEADROOM_BITS = 16
#: The widest range a round held whole may widen a tensor to (beyond it: refused).
MAX_EXTENT = 2.0**900
#: The weight bound when none is given (2**24 samples in a round; callers that know
#: the round's sample counts pass them, for a finer grid).
DEFAULT_WEIGHT_BOUND = 1 << 24
#: A sum of at least this many bytes gets its own map, given back page by page.
_MAPPED_BYTES = 1 << 20
#: Give back the read pages of a mapped sum every this many bytes.
_RELEASE_BYTES = 4 << 20


def magnitude(tensor: np.ndarray) -> float:
    """``max|tensor|`` (0 for an empty one; NaN if it holds NaN), without a copy."""
    if tensor.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        return max(abs(float(np.max(tensor))), abs(float(np.min(tensor))))


def _exponent(top: float) -> int:
    """The smallest ``E >= 0`` with ``top <= 2**E``."""
    if top <= 1.0:
        return 0
    mantissa, exponent = math.frexp(top)  # top = mantissa * 2**exponent, 0.5 <= mantissa < 1
    return exponent - 1 if mantissa == 0.5 else exponent


def fraction_bits(
    global_tensor: np.ndarray, weight_bound: int, extent: float = 0.0
) -> tuple[int, float]:
    """``(F, L)``: the tensor's grid ``2**-F`` and the largest magnitude ``L`` allowed;
    ``extent`` (the largest magnitude of a round held whole) widens ``L`` to cover it."""
    if global_tensor.dtype.kind in "biu":  # integers are summed as integers, exactly
        return 0, math.ldexp(1.0, 62 - weight_bound.bit_length())
    top = magnitude(global_tensor)
    if not math.isfinite(top):
        raise FlError("aggregate: the global model holds NaN or Inf")
    e = max(_exponent(top), _exponent(min(extent, MAX_EXTENT)) - HEADROOM_BITS)
    if e + HEADROOM_BITS > 1000:
        raise FlError(f"aggregate: a tensor of magnitude {top:.3g} is too large for the exact sum")
    return 62 - weight_bound.bit_length() - e - HEADROOM_BITS, math.ldexp(1.0, e + HEADROOM_BITS)


class ExactSum:
    """``sum_i n_i x_i`` per tensor, exact and order-independent (module docstring).

    ``global_params`` fixes the tensors (names, sizes) and each one's grid; the
    updates' tensors must already be checked to be like them (names, shapes, dtypes).
    """

    def __init__(
        self,
        global_params: Mapping[str, np.ndarray],
        *,
        weight_bound: int = DEFAULT_WEIGHT_BOUND,
        threads: int = 1,
        extents: Mapping[str, float] | None = None,
    ) -> None:
        if type(weight_bound) is not int or not 1 <= weight_bound <= 1 << 53:
            raise FlError(f"aggregate: invalid weight bound {weight_bound!r}")
        self.weight_bound = weight_bound
        self.threads = threads
        self.grid: dict[str, tuple[int, float]] = {
            name: fraction_bits(ref, weight_bound, (extents or {}).get(name, 0.0))
            for name, ref in global_params.items()
        }
        self.sizes = {name: int(ref.size) for name, ref in global_params.items()}
        self.sums: dict[str, np.ndarray] = {}
        self._maps: dict[str, mmap.mmap] = {}  # the sums that have a map of their own
        self.total = 0

    def reserve(self, samples: int, sender: str) -> None:
        """Count ``samples`` towards the bound before any of them is folded."""
        if self.total + samples > self.weight_bound:
            raise FlError(
                f"aggregate: the update from '{sender}' brings the round to "
                f"{self.total + samples} samples, beyond its bound of {self.weight_bound} "
                "(what the sampled collaborators reported when they joined)"
            )
        self.total += samples

    def release(self, samples: int) -> None:
        """Undo :meth:`reserve` (the update was taken out again)."""
        self.total -= samples

    def _sum(self, name: str) -> np.ndarray:
        total = self.sums.get(name)
        if total is None:
            size = self.sizes[name]
            if size * 8 >= _MAPPED_BYTES and hasattr(mmap, "MADV_DONTNEED"):
                # anonymous memory reads as zeros; populated for writing at once
                flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                memory = self._maps[name] = mmap.mmap(-1, size * 8, flags=flags)
                _populate(memory)
                total = np.frombuffer(memory, dtype=np.int64, count=size)
            else:
                total = np.zeros(size, dtype=np.int64)
            self.sums[name] = total
        return total

    def check(self, name: str, values: np.ndarray, sender: str) -> None:
        """Refuse ``values`` (a flat piece of tensor ``name``) if any is NaN, Inf or
        beyond the tensor's range; reads the values once, adds nothing."""
        _, limit = self.grid[name]
        if values.size == 0:
            return
        if values.dtype.kind in "fc":
            with np.errstate(invalid="ignore"):
                low, high = float(np.min(values)), float(np.max(values))
        else:
            low, high = float(values.min()), float(values.max())
        if not (-limit <= low and high <= limit):  # NaN fails both comparisons
            bad = low if not -limit <= low else high
            what = "NaN or Inf" if not math.isfinite(bad) else f"{bad:.6g}"
            raise FlError(
                f"aggregate: the update from '{sender}': tensor '{name}' holds {what}, "
                f"beyond the exact sum's range of ±{limit:.6g}"
            )

    def fold(self, name: str, begin: int, values: np.ndarray, samples: int, sign: int = 1) -> None:
        """Add (``sign=1``) or take out (``-1``) ``samples * values`` at elements
        ``begin...`` of tensor ``name``. ``values`` must have passed :meth:`check`."""
        f, _ = self.grid[name]
        scale = np.float64(math.ldexp(float(samples), f))
        total = self._sum(name)[begin : begin + values.size]
        source = values.reshape(-1)
        op = np.add if sign > 0 else np.subtract
        if source.dtype.kind in "biu":  # n * x in int64: exact (|n x| <= 2**62, checked)
            count = np.int64(samples)
            for at in range(0, source.size, BLOCK):
                end = min(at + BLOCK, source.size)
                op(total[at:end], np.multiply(source[at:end], count, dtype=np.int64),
                   out=total[at:end])  # fmt: skip
            return

        def work(lo: int, hi: int) -> None:
            width = min(BLOCK, hi - lo)
            scratch = np.empty(width, dtype=np.float64)
            ints = np.empty(width, dtype=np.int64)
            for at in range(lo, hi, BLOCK):
                end = min(at + BLOCK, hi)
                n = end - at
                part, whole = scratch[:n], ints[:n]
                # cast, scale, round and convert in three passes over cached blocks
                np.multiply(source[at:end], scale, out=part, dtype=np.float64, casting="unsafe")
                np.rint(part, out=whole, casting="unsafe")
                op(total[at:end], whole, out=total[at:end])

        _blocks.run(total.size, self.threads, work)

    def mean(self, name: str, dtype: np.dtype[Any]) -> np.ndarray:
        """``sum / (total * 2**F)`` for tensor ``name`` as a flat ``dtype`` array
        (integer and bool dtypes rounded), made inside the sum's own memory: each
        block is read into a scratch block before its narrower result is written at
        or before the bytes it came from, so nothing unread is overwritten; the
        buffer is then shrunk. Finishing a round never holds a sum and its result
        side by side. The sum is gone afterwards."""
        if self.total <= 0:
            raise FlError("aggregate: no samples were folded")
        f, _ = self.grid[name]
        divisor = np.float64(math.ldexp(float(self.total), f))
        size = self.sizes[name]
        total = self.sums.pop(name, None)
        memory = self._maps.pop(name, None)
        if total is None or size == 0:  # nothing folded into it (an empty tensor)
            return np.zeros(size, dtype=dtype)
        itemsize = np.dtype(dtype).itemsize
        if itemsize > 8:  # wider than the sum (complex128): no room in place
            return self._mean_copy(total, divisor, dtype)
        scratch = np.empty(min(BLOCK, size), dtype=np.float64)
        narrow = total.view(np.uint8)[: size * itemsize].view(dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # the caller checks the result
            for at in range(0, size, BLOCK):
                end = min(at + BLOCK, size)
                part = scratch[: end - at]
                np.copyto(part, total[at:end], casting="unsafe")
                np.divide(part, divisor, out=part)
                if narrow.dtype.kind not in "fc":
                    np.rint(part, out=part)
                np.copyto(narrow[at:end], part, casting="unsafe")
        del narrow
        if memory is not None:  # give back the pages past the result
            _release(memory, size * itemsize, size * 8)
            return np.frombuffer(memory, dtype=dtype, count=size)
        # no other view of ``total`` is alive (it never left this object), so the
        # reference check numpy cannot do reliably from inside a call is safe to skip
        total.resize((size * itemsize + 7) // 8, refcheck=False)
        return total.view(np.uint8)[: size * itemsize].view(dtype)

    def mean_into(self, name: str, out: np.ndarray) -> None:
        """:meth:`mean` written into ``out`` (flat, the tensor's dtype: a place in the
        next model's serialized bytes); the sum is freed as soon as it is read."""
        if self.total <= 0:
            raise FlError("aggregate: no samples were folded")
        f, _ = self.grid[name]
        divisor = np.float64(math.ldexp(float(self.total), f))
        total = self.sums.pop(name, None)
        memory = self._maps.pop(name, None)
        if total is None or out.size == 0:
            out[...] = 0
            return
        scratch = np.empty(min(BLOCK, out.size), dtype=np.float64)
        released = 0
        with np.errstate(over="ignore", invalid="ignore"):  # the caller checks the result
            for at in range(0, out.size, BLOCK):
                end = min(at + BLOCK, out.size)
                part = scratch[: end - at]
                np.divide(total[at:end], divisor, out=part, dtype=np.float64, casting="unsafe")
                if out.dtype.kind not in "fc":
                    np.rint(part, out=part)
                np.copyto(out[at:end], part, casting="unsafe")
                if memory is not None and (end * 8 - released >= _RELEASE_BYTES or end == out.size):
                    released = _release(memory, released, end * 8)

    @staticmethod
    def _mean_copy(total: np.ndarray, divisor: np.float64, dtype: np.dtype[Any]) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return (total.astype(np.float64) / divisor).astype(dtype)


#: madvise(MADV_POPULATE_WRITE), Linux 5.14 and later (not in Python 3.11's mmap).
_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
#: Populated per call: ``mmap.madvise`` holds the GIL, so the sum is populated through
#: libc (which lets it go), a slice at a time.
_POPULATE_SLICE = 64 << 20


def _madvise() -> Callable[[int, int, int], int] | None:
    c = libc()
    if c is None:
        return None
    call = c.madvise
    call.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    call.restype = ctypes.c_int
    return call


def _populate(memory: mmap.mmap) -> None:
    """Map every page of a fresh sum writable now. Folding adds into the sum, so each
    page is first read (the shared zero page) and then written: a copy-on-write
    fault whose TLB flush interrupts every CPU the process runs on (a sixth of the
    aggregator's CPU on a 100M model, with the transport's threads on both cores).
    The first update writes every page anyway, so the peak does not change; where
    the kernel cannot (before 5.14), the pages are mapped as before. Other threads
    run meanwhile (the transport's, heartbeats)."""
    call = _madvise()
    if call is None or not len(memory):
        return
    view = np.frombuffer(memory, dtype=np.uint8)
    try:
        base = view.ctypes.data
        for at in range(0, len(memory), _POPULATE_SLICE):
            if call(base + at, min(_POPULATE_SLICE, len(memory) - at), _POPULATE_WRITE):
                return  # EINVAL (an older kernel), ENOMEM: faulted in as it is written
    finally:
        del view  # no export left: the map can be closed


def _release(memory: mmap.mmap, begin: int, end: int) -> int:
    """Give the whole pages of ``memory[begin:end]`` back to the system (they read as
    zeros after); returns where the next release starts (a page boundary)."""
    first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE
    last = end // mmap.PAGESIZE * mmap.PAGESIZE if end < len(memory) else len(memory)
    if last > first:
        memory.madvise(mmap.MADV_DONTNEED, first, last - first)
    return max(first, last)
