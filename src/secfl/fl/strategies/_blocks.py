"""Block-wise, optionally multi-threaded loops over large flat arrays.

The aggregation kernels walk each tensor in blocks of :data:`BLOCK` elements so
that their float64 scratch stays in the CPU cache, and split a large tensor into
one contiguous range of blocks per thread. numpy releases the GIL inside its
loops, so the threads run in parallel. Each element is still computed by one
thread, with the same operations in the same order, so results do not depend on
the number of threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

#: Elements per block: 64 Ki float64 = 512 KiB of scratch per buffer (L2-sized).
BLOCK = 1 << 16
#: Tensors smaller than this are handled by the calling thread alone.
PARALLEL_MIN = 8 * BLOCK

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def default_threads() -> int:
    """The CPUs this process may run on (at most 8: memory bandwidth saturates)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    return max(1, min(count, 8))


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="secfl-agg")
            _pools[workers] = pool
        return pool


def ranges(size: int, threads: int, align: int = BLOCK) -> list[tuple[int, int]]:
    """``[0, size)`` cut into at most ``threads`` contiguous ranges whose bounds are
    multiples of ``align`` (so every element sits at the same offset in the same
    kind of block whatever the thread count)."""
    if threads <= 1 or size < max(PARALLEL_MIN, 2 * align):
        return [(0, size)]
    chunks = -(-size // align)
    per = -(-chunks // threads) * align
    return [(lo, min(lo + per, size)) for lo in range(0, size, per)]


def run(size: int, threads: int, work: Callable[[int, int], None], align: int = BLOCK) -> None:
    """Call ``work(lo, hi)`` on the ranges of ``[0, size)``, in parallel; waits for all
    of them (they may write into shared arrays) and then raises the first error."""
    parts = ranges(size, threads, align)
    if len(parts) == 1:
        work(0, size)
        return
    futures = [_pool(threads - 1).submit(work, lo, hi) for lo, hi in parts[1:]]
    errors: list[BaseException] = []
    try:
        work(*parts[0])
    except BaseException as exc:
        errors.append(exc)
    for future in futures:
        try:
            future.result()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
