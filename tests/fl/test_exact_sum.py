"""FedAvg's exact sum: bit-identical models whatever the arrival order, exact take-back
of a half-received update, bounded memory while updates stream in."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl.errors import FlError, TransportError
from secfl.fl import _messages as msg
from secfl.fl._incoming import Receiver
from secfl.fl._tensors import to_bytes
from secfl.fl.strategies import FedAdam, FedAvg, FedAvgAccumulator, Params, Update
from secfl.fl.strategies._exact import fraction_bits

CHUNK = 1 << 12


def f32(values: list[Any]) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def spread_round(seed: int, clients: int, size: int = 5000) -> tuple[Params, list[Update]]:
    """Values over nine orders of magnitude, so float sums would depend on order."""
    rng = np.random.default_rng(seed)
    global_params: Params = {
        "w": (rng.standard_normal(size) * 100).astype(np.float32),
        "b": np.zeros(7, dtype=np.float32),
        "steps": np.array(5, dtype=np.int64),
    }
    updates = []
    for i in range(clients):
        scale = 10.0 ** rng.uniform(-6, 3, size)
        updates.append(
            Update(
                sender=f"site-{i}",
                params={
                    "w": (rng.standard_normal(size) * scale).astype(np.float32),
                    "b": rng.standard_normal(7).astype(np.float32),
                    "steps": np.array(int(rng.integers(0, 100)), dtype=np.int64),
                },
                num_samples=int(rng.integers(1, 5000)),
            )
        )
    return global_params, updates


def fold(
    strategy: FedAvg, global_params: Params, updates: list[Update], bound: int = 1 << 20
) -> Params:
    acc = strategy.accumulator(1, global_params, weight_bound=bound)
    for update in updates:
        acc.add(update)
    return acc.finish()


def same(a: Params, b: Params) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


@given(seed=st.integers(0, 2**32 - 1), clients=st.integers(2, 7), data=st.data())
@settings(max_examples=25, deadline=None)
def test_any_arrival_order_and_thread_count_gives_the_same_bits(
    seed: int, clients: int, data: st.DataObject
) -> None:
    global_params, updates = spread_round(seed, clients)
    reference = fold(FedAvg(threads=1), global_params, updates)
    order = data.draw(st.permutations(updates))
    assert same(fold(FedAvg(threads=2), global_params, list(order)), reference)
    # and within the documented error of the exact mean: each of K terms rounded once
    # to the grid 2**-F, then the float32 result rounded once (its half last bit)
    weights = np.array([u.num_samples for u in updates], dtype=np.float64)
    stack = np.stack([u.params["w"].astype(np.float64) for u in updates])
    exact = weights @ stack / weights.sum()
    f, _ = fraction_bits(global_params["w"], 1 << 20)
    grid = clients / (2 * weights.sum() * 2.0**f)
    half_ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64) / 2
    error = np.abs(reference["w"].astype(np.float64) - exact)
    assert (error <= grid + half_ulp * (1 + 1e-9)).all()


def test_a_float_sum_would_depend_on_the_order_this_one_does_not() -> None:
    # 2**24 and -2**24 cancel; 2**-30 is lost if it is added to 2**24 first in float64
    global_params = {"w": f32([256.0])}
    big, small = np.float32(2.0**24), np.float32(2.0**-30)
    updates = [
        Update("a", {"w": f32([big])}, 1),
        Update("b", {"w": f32([small])}, 1),
        Update("c", {"w": f32([-big])}, 1),
    ]
    float_sums = {
        np.float64(0) + big + small - big,  # 0.0
        np.float64(0) + big - big + small,  # 2**-30
    }
    assert len(float_sums) == 2  # the old float64 fold depends on the order
    results = {
        fold(FedAvg(), global_params, [updates[i] for i in order], bound=3)["w"].tobytes()
        for order in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (2, 1, 0)]
    }
    assert results == {f32([2.0**-30 / 3]).tobytes()}


def test_fedadam_is_order_free_too() -> None:
    global_params, updates = spread_round(11, 4)
    a = fold(FedAdam(), global_params, updates)
    b = fold(FedAdam(), global_params, updates[::-1])
    assert same(a, b)


def test_refused_values_and_counts_change_nothing() -> None:
    global_params, updates = spread_round(3, 3)
    acc = FedAvg().accumulator(1, global_params, weight_bound=20_000)
    acc.add(updates[0])
    cases: list[tuple[Params, str]] = [
        ({"w": np.full(5000, np.nan, np.float32)}, r"tensor 'w' holds NaN or Inf"),
        ({"b": f32([1e9] * 7)}, r"tensor 'b' holds 1e\+09, beyond the exact sum's range"),
    ]
    for bad, pattern in cases:
        params = {**updates[1].params, **bad}
        with pytest.raises(FlError, match=pattern):
            acc.add(Update("bad", params, 10))
    with pytest.raises(
        FlError, match=r"beyond its bound of 20000 \(what the sampled collaborators reported"
    ):
        acc.add(Update("many", updates[1].params, 20_000))
    for update in updates[1:]:
        acc.add(update)
    assert same(acc.finish(), fold(FedAvg(), global_params, updates, bound=20_000))


# --- streamed updates -------------------------------------------------------------------


def message(update: Update, round: int = 1) -> list[bytes]:
    head = {"kind": "update", "round": round, "samples": update.num_samples}
    return [bytes(p) for p in msg.stream(head, to_bytes(update.params))]


def pieces_of(parts: list[bytes]) -> list[bytes]:
    """Re-cut a message into CHUNK-sized pieces (boundaries inside values too)."""
    whole = b"".join(parts)
    return [whole[i : i + CHUNK] for i in range(0, len(whole), CHUNK)]


def receive(
    receiver: Receiver, acc: object, global_params: Params, update: Update, pieces: Iterator[bytes]
) -> None:
    receiver.receive(
        pieces,
        acc,  # type: ignore[arg-type]
        global_params,
        update.sender,
        lambda header: int(header["samples"]),
        5.0,
        lambda header: None,
    )


def test_a_streamed_update_folds_to_the_same_bits_as_a_whole_one() -> None:
    global_params, updates = spread_round(5, 3)
    receiver = Receiver(1 << 20)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    for update in updates:
        receive(receiver, acc, global_params, update, iter(pieces_of(message(update))))
    assert same(acc.finish(), fold(FedAvg(), global_params, updates))


def broken_after(parts: list[bytes], count: int) -> Iterator[bytes]:
    yield from parts[:count]
    raise TransportError("rpc: the connection broke")


@pytest.mark.parametrize(
    "cut, error",
    [
        (lambda p: broken_after(p, len(p) // 2), "the connection broke"),
        (lambda p: iter(p[:-1]), r"the stream ended after \d+ of \d+ bytes"),
        (lambda p: iter([*p, b"x"]), r"the stream passes its limit of \d+ bytes"),
    ],
    ids=["broken", "short", "long"],
)
def test_a_stream_that_fails_half_way_is_taken_out_exactly(cut: object, error: str) -> None:
    global_params, updates = spread_round(8, 3)
    receiver = Receiver(1 << 20)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    receive(receiver, acc, global_params, updates[0], iter(pieces_of(message(updates[0]))))
    with pytest.raises((FlError, TransportError), match=error):
        parts = pieces_of(message(updates[1]))
        receive(receiver, acc, global_params, updates[1], cut(parts))  # type: ignore[operator]
    # the sum is as if updates[1] never came; its sender may still send it whole
    for update in updates[1:]:
        receive(receiver, acc, global_params, update, iter(pieces_of(message(update))))
    assert same(acc.finish(), fold(FedAvg(), global_params, updates))


def test_a_bad_value_late_in_the_stream_is_refused_and_taken_out() -> None:
    global_params, updates = spread_round(9, 2)
    receiver = Receiver(1 << 20)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    w = updates[1].params["w"].copy()
    w[-1] = np.inf  # after values already folded
    bad = Update("site-1", {**updates[1].params, "w": w}, updates[1].num_samples)
    with pytest.raises(FlError, match=r"tensor 'w' holds NaN or Inf"):
        receive(receiver, acc, global_params, bad, iter(pieces_of(message(bad))))
    for update in updates:
        receive(receiver, acc, global_params, update, iter(pieces_of(message(update))))
    assert same(acc.finish(), fold(FedAvg(), global_params, updates))


def test_closing_the_round_takes_out_a_stalled_stream_and_frees_the_buffer() -> None:
    global_params, updates = spread_round(10, 2)
    receiver = Receiver(1 << 20)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    parts = pieces_of(message(updates[0]))
    stalled, resume = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow() -> Iterator[bytes]:
        yield from parts[: len(parts) - 2]
        stalled.set()
        resume.wait(10)
        yield from parts[len(parts) - 2 :]

    def sender() -> None:
        try:
            receive(receiver, acc, global_params, updates[0], slow())
        except FlError as exc:
            errors.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    assert stalled.wait(10)
    receiver.cancel()  # the round closes while the sender is quiet
    # the buffer is free at once: another update comes in while the first still waits
    receive(receiver, acc, global_params, updates[1], iter(pieces_of(message(updates[1]))))
    resume.set()
    thread.join(10)
    assert [str(e) for e in errors] == [
        "protocol: the round closed while the update of 'site-0' came in"
    ]
    assert same(acc.finish(), fold(FedAvg(), global_params, updates[1:]))


def test_streaming_an_update_needs_the_sum_and_one_buffer() -> None:
    size = 4_000_000
    model_bytes = size * 4
    global_params = {"w": np.zeros(size, np.float32)}
    update = Update("a", {"w": np.full(size, 0.5, np.float32)}, 3)
    parts = message(update)  # built before measuring: the sender's memory, not ours
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        receiver = Receiver(model_bytes + (1 << 20))
        acc = FedAvg().accumulator(1, global_params, weight_bound=10)
        receive(receiver, acc, global_params, update, iter(parts))
        result = acc.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["w"][0] == np.float32(0.5)
    # the int64 sum (2 models) + the receive buffer (1 model + 1 MiB) + small scratch
    extra = (peak - before) / model_bytes
    assert extra <= 3.35, f"extra peak {extra:.2f}x the model"


def test_the_new_model_is_serialized_in_place_byte_for_byte() -> None:
    global_params, updates = spread_round(12, 3)
    global_params["flag"] = np.zeros(3, dtype=bool)
    global_params["half"] = np.ones((2, 3), dtype=np.float16)
    for update in updates:
        update.params["flag"] = np.array([True, False, True])
        update.params["half"] = np.full((2, 3), 0.25, dtype=np.float16)
    template = to_bytes(global_params)

    def accumulate(strategy: FedAvg) -> FedAvgAccumulator:
        acc = strategy.accumulator(1, global_params, weight_bound=1 << 20)
        for update in updates:
            acc.add(update)
        return acc

    serialized = accumulate(FedAvg()).finish_into(template)
    assert serialized is not None
    assert bytes(serialized) == to_bytes(accumulate(FedAvg()).finish())
    # a rule whose server step changes the mean says so instead
    assert accumulate(FedAdam()).finish_into(template) is None


def test_the_new_model_is_written_into_the_handed_over_receive_buffer() -> None:
    global_params, updates = spread_round(13, 3)
    template = to_bytes(global_params)
    receiver = Receiver(1 << 20)
    assert receiver.hand_over(len(template)) is None  # no update has used it yet
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    for update in updates:
        receive(receiver, acc, global_params, update, iter(pieces_of(message(update))))
    given: list[memoryview] = []

    def room(size: int) -> memoryview | None:
        view = receiver.hand_over(size)
        assert view is not None
        given.append(view)
        return view

    serialized = acc.finish_into(template, room)
    assert serialized is not None and serialized.readonly
    reference = to_bytes(fold(FedAvg(), global_params, updates))
    assert bytes(serialized) == reference
    assert np.shares_memory(np.frombuffer(serialized, np.uint8), np.frombuffer(given[0], np.uint8))
    # the next round's updates land in a fresh buffer: the model is not touched
    nxt = FedAvg().accumulator(2, global_params, weight_bound=1 << 20)
    receive(receiver, nxt, global_params, updates[0], iter(pieces_of(message(updates[0]))))
    assert bytes(serialized) == reference


def test_handing_the_buffer_over_takes_a_stream_in_progress_out_exactly() -> None:
    global_params, updates = spread_round(14, 2)
    receiver = Receiver(1 << 20)
    acc = FedAvg().accumulator(1, global_params, weight_bound=1 << 20)
    receive(receiver, acc, global_params, updates[0], iter(pieces_of(message(updates[0]))))
    parts = pieces_of(message(updates[1]))
    stalled, resume = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow() -> Iterator[bytes]:
        yield from parts[: len(parts) // 2]
        stalled.set()
        resume.wait(10)
        yield from parts[len(parts) // 2 :]

    def sender() -> None:
        try:
            receive(receiver, acc, global_params, updates[1], slow())
        except FlError as exc:
            errors.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    assert stalled.wait(10)
    view = receiver.hand_over(1000)
    assert view is not None
    view[:] = b"\xff" * 1000  # the new owner writes; the stalled stream never does again
    resume.set()
    thread.join(10)
    assert [str(e) for e in errors] == [
        "protocol: the round closed while the update of 'site-1' came in"
    ]
    assert bytes(view) == b"\xff" * 1000
    assert same(acc.finish(), fold(FedAvg(), global_params, updates[:1]))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS")
@pytest.mark.timeout(120)
def test_finishing_into_the_receive_buffer_needs_no_memory_beside_the_sum() -> None:
    """Peak RSS (VmHWM, restarted just before) while the new model is made: written
    into the buffer's resident pages it adds almost nothing; into fresh memory it
    would add a tensor's worth (here the whole 64 MB model: one tensor) before that
    tensor's sum is freed."""
    size = 16_000_000
    model_bytes = size * 4
    global_params = {"w": np.zeros(size, np.float32)}
    template = to_bytes(global_params)
    rng = np.random.default_rng(15)
    update = Update("a", {"w": rng.standard_normal(size, dtype=np.float32)}, 3)
    parts = message(update)
    receiver = Receiver(len(template) + (1 << 20))
    acc = FedAvg().accumulator(1, global_params, weight_bound=10)
    receive(receiver, acc, global_params, update, iter(parts))
    del parts
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
    before = _status_kib("VmRSS") * 1024
    serialized = acc.finish_into(template, receiver.hand_over)
    extra = _status_kib("VmHWM") * 1024 - before
    assert serialized is not None
    again = FedAvg().accumulator(1, global_params, weight_bound=10)
    again.add(update)
    assert bytes(serialized) == to_bytes(again.finish())
    assert extra <= 0.25 * model_bytes, f"finishing took {extra / model_bytes:.2f}x the model"
