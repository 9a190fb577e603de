"""FedAvg aggregation throughput against the machine's memory bandwidth, and the
aggregator's peak memory, in one run.

Run: ``.venv/bin/python benchmarks/bench_fedavg.py [--params 25000000] [--updates 20]
[--memory-params 100000000] [--memory-updates 10] [--repeat 3]``.

1. Memory bandwidth: ``np.copyto`` of a large float32 array (the size of all the
   updates together, at most 2 GiB), counted as bytes *read* per second, the best
   of ``--repeat``.
2. FedAvg throughput, counted the same way (bytes of updates read per second), for
   ``--updates`` float32 updates of ``--params`` parameters held in memory:
   ``FedAvg.aggregate`` (the whole round, block by block: each update read once) and
   the streaming accumulator (``FedAvg.accumulator``: each update folded into a
   float64 running sum as it arrives, which also reads and writes the sum). The
   issue's target is aggregate >= 50% of the copy bandwidth.
3. Peak memory for a ``--memory-params`` model, in a fresh child process: the
   global model is loaded, then ``--memory-updates`` updates are generated one at a
   time, each folded into the streaming accumulator and dropped, as an aggregator
   receiving them over the network does. Printed: the process's peak RSS
   (``VmHWM``) above its resting state with the global model loaded (the
   aggregation's cost; target <= 3x the model size) and the whole process's peak
   RSS, both relative to the model size.

Both figures are single-threaded numpy; it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from secfl.fl.strategies import FedAvg, Params, Update

GB = 1e9
MIB = 1 << 20


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """The best of ``repeat`` runs in seconds (other load only ever slows a run down)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(nbytes: int, repeat: int, threads: int = 1) -> float:
    """GB/s read by ``np.copyto`` between two arrays of ``nbytes`` (both pre-faulted),
    the arrays split into ``threads`` contiguous halves copied in parallel."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    np.copyto(dst, src)
    step = -(-src.size // threads)
    parts = [slice(lo, lo + step) for lo in range(0, src.size, step)]
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def copy() -> None:
            if len(parts) == 1:
                np.copyto(dst, src)
            else:
                list(pool.map(lambda part: np.copyto(dst[part], src[part]), parts))

        seconds = best_time(copy, repeat)
    return src.nbytes / seconds / GB


def model_shapes(params: int) -> dict[str, tuple[int, ...]]:
    """A model of ``params`` float32 parameters: one large matrix and a few small tensors,
    like an embedding-heavy network."""
    small = {"dense.weight": (256, 256), "dense.bias": (256,), "head.weight": (10, 256)}
    rest = params - sum(int(np.prod(s)) for s in small.values())
    return {"embedding.weight": (rest,), **small}


def make_params(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> Params:
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}


def throughput(args: argparse.Namespace) -> dict[str, float]:
    shapes = model_shapes(args.params)
    rng = np.random.default_rng(0)
    global_params = make_params(shapes, rng)
    updates = [
        Update(f"site-{i}", make_params(shapes, rng), int(rng.integers(100, 1000)))
        for i in range(args.updates)
    ]
    update_bytes = sum(a.nbytes for u in updates for a in u.params.values())
    strategy = FedAvg(threads=args.threads)
    copy_bytes = min(update_bytes, 2 << 30)
    figures = {
        "update_bytes": update_bytes,
        "threads": strategy.threads,
        "bandwidth_1": copy_bandwidth(copy_bytes, args.repeat, 1),
        "bandwidth_n": copy_bandwidth(copy_bytes, args.repeat, strategy.threads),
    }
    for label, threads in (("1", 1), ("n", strategy.threads)):
        strategy = FedAvg(threads=threads)
        seconds = best_time(lambda s=strategy: s.aggregate(1, global_params, updates), args.repeat)

        def streamed(s: FedAvg = strategy) -> None:
            acc = s.accumulator(1, global_params)
            for update in updates:
                acc.add(update)
            acc.finish()

        stream_seconds = best_time(streamed, args.repeat)
        figures[f"aggregate_{label}"] = update_bytes / seconds / GB
        figures[f"aggregate_seconds_{label}"] = seconds
        figures[f"stream_{label}"] = update_bytes / stream_seconds / GB
        figures[f"stream_seconds_{label}"] = stream_seconds
    return figures


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(params: int, count: int) -> None:
    """Runs in a fresh process; prints one JSON line with the figures."""
    shapes = model_shapes(params)
    rng = np.random.default_rng(1)
    global_params = make_params(shapes, rng)
    model_bytes = sum(a.nbytes for a in global_params.values())
    resting = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    acc = FedAvg().accumulator(1, global_params)
    for i in range(count):
        update = Update(f"site-{i}", make_params(shapes, rng), 100 + i)  # arrives...
        acc.add(update)  # ...is folded in...
        del update  # ...and dropped
    result = acc.finish()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") * 1024
    assert result["embedding.weight"].dtype == np.float32
    print(
        json.dumps(
            {
                "model_bytes": model_bytes,
                "resting": resting,
                "peak": peak,
                "seconds": seconds,
            }
        )
    )


def memory(args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-child", str(args.memory_params)]
    command += ["--memory-updates", str(args.memory_updates)]
    child = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=25_000_000)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--memory-params", type=int, default=100_000_000)
    parser.add_argument("--memory-updates", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: the usable CPUs")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory run")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.memory_updates)
        return

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    mem = None if args.no_memory else memory(args)  # first, before this process grows
    t = throughput(args)
    print(
        f"updates: {args.updates} x {args.params / 1e6:.0f}M float32 parameters "
        f"= {t['update_bytes'] / GB:.2f} GB"
    )
    n = t["threads"]
    copy = t["bandwidth_1"]
    print(f"memory bandwidth, np.copyto (1 thread, bytes read): {copy:6.2f} GB/s")
    if n > 1:
        print(
            f"memory bandwidth, np.copyto ({n} threads, for context): {t['bandwidth_n']:6.2f} GB/s"
        )
    rows = [("1", 1)] + ([("n", n)] if n > 1 else [])
    for label, threads in rows:
        for kind, what in (("aggregate", "aggregate (whole round)"), ("stream", "streaming fold")):
            rate = t[f"{kind}_{label}"]
            ms = t[f"{kind}_seconds_{label}"] * 1e3
            print(
                f"FedAvg {what:24s} {threads} thread(s): {rate:6.2f} GB/s ({ms:5.0f} ms)  "
                f"{rate / copy:4.0%} of np.copyto"
                + (f", {rate / t['bandwidth_n']:4.0%} of the {n}-thread copy" if n > 1 else "")
            )
    best = t[f"aggregate_{rows[-1][0]}"]
    print(
        f"=> FedAvg.aggregate as configured by default ({n} thread(s)): {best / copy:.0%} "
        "of the np.copyto bandwidth (target >= 50%)"
    )
    if mem is None:
        return
    model = mem["model_bytes"]
    print(
        f"peak memory, {args.memory_params / 1e6:.0f}M-parameter model "
        f"({model / MIB:.0f} MiB), {args.memory_updates} updates generated, folded and "
        f"dropped one at a time ({mem['seconds']:.1f} s):"
    )
    print(
        f"  aggregation (peak RSS above the resting aggregator): "
        f"{(mem['peak'] - mem['resting']) / model:.3f}x the model size  (target <= 3x; "
        "= the float64 running sum, 2x, + the update being folded, 1x)"
    )
    print(
        f"  whole process (peak RSS, incl. the global model and Python): "
        f"{mem['peak'] / model:.2f}x the model size"
    )


if __name__ == "__main__":
    main()
