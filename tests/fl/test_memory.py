"""FedAvg's memory stays bounded by a few models, whatever the number of updates.

numpy reports its buffers to tracemalloc, so the traced peak during aggregation
minus what was allocated before it is the aggregation's extra memory.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from secfl.fl.strategies import FedAdam, FedAvg, Params, Update
from secfl.fl.strategies._blocks import BLOCK

PARAMETERS = 10_000_000
UPDATES = 20


def global_model() -> Params:
    # a large tensor (most of the model) and a few small ones, like a real network
    big = PARAMETERS - 4096 - 64
    return {
        "embedding": np.zeros(big, dtype=np.float32),
        "dense": np.zeros((64, 64), dtype=np.float32),
        "bias": np.zeros(64, dtype=np.float32),
    }


def make_update(index: int, global_params: Params) -> Update:
    params = {}
    for name, ref in global_params.items():
        array = np.empty(ref.shape, dtype=np.float32)
        array.fill(float(index))
        params[name] = array
    return Update(sender=f"site-{index}", params=params, num_samples=index + 1)


def extra_peak(run: Callable[[], object]) -> int:
    """Peak traced bytes during ``run`` above what was allocated when it started."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak - before


def expected_mean(index_weights: Iterator[tuple[int, int]]) -> float:
    pairs = list(index_weights)
    return sum(i * w for i, w in pairs) / sum(w for _, w in pairs)


@pytest.fixture(scope="module")
def updates() -> tuple[Params, list[Update]]:
    global_params = global_model()
    return global_params, [make_update(i, global_params) for i in range(UPDATES)]


def test_aggregate_of_all_updates_needs_about_one_model(
    updates: tuple[Params, list[Update]],
) -> None:
    global_params, round_updates = updates
    model_bytes = PARAMETERS * 4
    out: dict[str, Params] = {}

    strategy = FedAvg()

    def run() -> None:
        out["r"] = strategy.aggregate(1, global_params, round_updates)

    peak = extra_peak(run)
    assert peak <= 3 * model_bytes, f"extra peak {peak / model_bytes:.2f}x the model"
    # the exact int64 sum is two models (the result is made inside it); the rest is
    # each thread's two scratch blocks
    bound = 2 * model_bytes + strategy.threads * 16 * BLOCK + (2 << 20)
    assert peak <= bound, f"extra peak {peak / model_bytes:.2f}x the model"
    mean = expected_mean((i, i + 1) for i in range(UPDATES))
    assert out["r"]["embedding"][-1] == np.float32(mean)


@pytest.mark.parametrize("strategy", [FedAvg, FedAdam])
def test_streaming_accumulator_needs_two_models(
    updates: tuple[Params, list[Update]], strategy: type[FedAvg]
) -> None:
    global_params, round_updates = updates
    model_bytes = PARAMETERS * 4
    out: dict[str, Params] = {}

    def run() -> None:
        acc = strategy().accumulator(1, global_params)
        for update in round_updates:
            acc.add(update)
        out["r"] = acc.finish()

    peak = extra_peak(run)
    # the int64 running sum is 2 models (the result is made in its memory); FedAdam
    # keeps its two float32 moments as well (its state: 2 more models)
    limit = (2.1 if strategy is FedAvg else 3.2) * model_bytes
    assert peak <= limit, f"extra peak {peak / model_bytes:.2f}x the model"
    assert out["r"]["embedding"].dtype == np.float32
