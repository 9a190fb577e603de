"""FedAvg's memory stays bounded by a few models, whatever the number of updates.

The extra memory of a step is its peak above what was in use before it: traced by
tracemalloc (numpy reports its buffers) and, on Linux, the peak RSS (``VmHWM``),
which also sees what tracemalloc does not (the sums' and the receive window's own
anonymous maps).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from secfl.fl import _messages as msg
from secfl.fl._incoming import FOLD_BYTES, SLOTS, Receiver
from secfl.fl._tensors import to_bytes
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


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/self/status")


def extra_peak(run: Callable[[], object]) -> int:
    """Peak memory during ``run`` above what was in use when it started: traced bytes
    (numpy's buffers) or, on Linux, the peak RSS (``VmHWM``, restarted just before),
    which also sees the sums' own anonymous maps, whichever is larger."""
    gc.collect()
    rss = Path("/proc/self/clear_refs").exists()
    if rss:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
        resident = _status_bytes("VmRSS")
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    extra = peak - before
    if rss:
        extra = max(extra, _status_bytes("VmHWM") - resident)
    return extra


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


# --- a streamed update: the sum and a small window, not a second model -----------------------


def _rss_peak_above(run: Callable[[], object]) -> int:
    """Peak RSS (VmHWM, restarted just before) during ``run`` above the RSS before it."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
    before = _status_bytes("VmRSS")
    run()
    return _status_bytes("VmHWM") - before


def _streamed(tensors: int, size: int) -> tuple[Params, Update, list[bytes]]:
    global_params = {f"t{i}": np.zeros(size, np.float32) for i in range(tensors)}
    rng = np.random.default_rng(31)
    update = Update("a", {k: rng.standard_normal(size, np.float32) for k in global_params}, 3)
    head = {"kind": "update", "round": 1, "samples": update.num_samples}
    parts = [bytes(p) for p in msg.stream(head, to_bytes(update.params))]
    return global_params, update, parts


linux_rss = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS (VmHWM)"
)


@linux_rss
@pytest.mark.timeout(120)
def test_receiving_a_streamed_update_needs_the_sum_and_a_small_window(tmp_path: Path) -> None:
    """Receiving used to copy the whole update into a model-sized buffer (3x the model
    with the int64 sum). Now its take-back copy is spilled, sealed, to disk: the sum
    (2x) and the window (12 MiB) and a stretch's ciphertext, here about 2.2x."""
    size = 16_000_000
    model_bytes = size * 4
    global_params, update, parts = _streamed(1, size)  # the sender's memory, not ours
    receiver = Receiver(model_bytes + (1 << 20), spill_dir=tmp_path)
    acc = FedAvg().accumulator(1, global_params, weight_bound=10)

    def run() -> None:
        receiver.receive(
            iter(parts), acc, global_params, "a", lambda h: 3, 5.0, lambda h, commit: commit()
        )

    extra = _rss_peak_above(run)
    window = SLOTS * FOLD_BYTES
    assert extra <= 2 * model_bytes + window + 0.25 * model_bytes, (
        f"receiving took {extra / model_bytes:.2f}x the model"
    )
    again = FedAvg().accumulator(1, global_params, weight_bound=10)
    again.add(update)
    assert all(acc.exact.sums[k].tobytes() == again.exact.sums[k].tobytes() for k in global_params)


@linux_rss
@pytest.mark.timeout(120)
def test_finishing_needs_a_few_blocks_beside_the_sum(tmp_path: Path) -> None:
    """The new model goes to fresh memory while each tensor's sum is given back page
    by page as its mean is written (4 MiB at a time): the peak above the sum is a
    few blocks (here about 0.03x), not a tensor (a quarter of this model), let alone
    the model."""
    tensors, size = 4, 5_000_000
    model_bytes = tensors * size * 4
    global_params, update, parts = _streamed(tensors, size)
    template = to_bytes(global_params)
    receiver = Receiver(len(template) + (1 << 20), spill_dir=tmp_path)
    acc = FedAvg().accumulator(1, global_params, weight_bound=10)
    receiver.receive(
        iter(parts), acc, global_params, "a", lambda h: 3, 5.0, lambda h, commit: commit()
    )
    del parts
    out: list[memoryview | None] = []
    extra = _rss_peak_above(lambda: out.append(acc.finish_into(template)))
    assert extra <= 0.1 * model_bytes, f"finishing took {extra / model_bytes:.2f}x the model"
    again = FedAvg().accumulator(1, global_params, weight_bound=10)
    again.add(update)
    serialized = out[0]
    assert serialized is not None and bytes(serialized) == to_bytes(again.finish())
