"""FedAvg, FedProx, FedAdam and the strategy interface, against hand-computed cases
and numpy (Flower's reference implementation: test_flower_reference.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl.errors import FlError
from secfl.fl._checkpoint import load_checkpoint, write_checkpoint
from secfl.fl._tensors import to_bytes
from secfl.fl.strategies import (
    BufferingAccumulator,
    FedAdam,
    FedAvg,
    FedProx,
    Params,
    Strategy,
    Update,
    _blocks,
    available_strategies,
    get_strategy,
    register_strategy,
)
from secfl.fl.strategies._exact import fraction_bits


def upd(sender: str, n: int, **params: Any) -> Update:
    return Update(
        sender=sender, params={k: np.asarray(v) for k, v in params.items()}, num_samples=n
    )


def random_round(
    seed: int, clients: int, dtype: type = np.float32, sizes: Sequence[int] = (7, 3)
) -> tuple[Params, list[Update]]:
    rng = np.random.default_rng(seed)
    shapes = {f"t{i}": (size, 2) for i, size in enumerate(sizes)}
    global_params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    updates = [
        Update(
            sender=f"site-{i}",
            params={k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()},
            num_samples=int(rng.integers(1, 1000)),
        )
        for i in range(clients)
    ]
    return global_params, updates


def streamed(
    strategy: Strategy, round: int, global_params: Params, updates: list[Update]
) -> Params:
    bound = sum(u.num_samples for u in updates)  # aggregate()'s bound: the same grid
    acc = strategy.accumulator(round, global_params, weight_bound=bound)
    for update in updates:
        acc.add(update)
    return acc.finish()


# --- FedAvg -------------------------------------------------------------------------------


def test_fedavg_hand_computed() -> None:
    global_params = {
        "w": np.zeros((2, 2), dtype=np.float32),
        "b": np.zeros(2, dtype=np.float64),
        "count": np.array(0, dtype=np.int64),
    }
    updates = [
        upd("a", 1, w=np.float32([[1, 2], [3, 4]]), b=[0.5, -1.0], count=np.int64(10)),
        upd("b", 3, w=np.float32([[3, 4], [5, 6]]), b=[1.5, 1.0], count=np.int64(20)),
    ]
    for result in (
        FedAvg().aggregate(1, global_params, updates),
        streamed(FedAvg(), 1, global_params, updates),
    ):
        np.testing.assert_array_equal(result["w"], np.float32([[2.5, 3.5], [4.5, 5.5]]))
        assert result["w"].dtype == np.float32
        np.testing.assert_array_equal(result["b"], [1.25, 0.5])
        assert result["b"].dtype == np.float64
        assert result["count"] == 18 and result["count"].dtype == np.int64  # (10 + 60) / 4 = 17.5


def test_fedavg_weights_one_update_exactly() -> None:
    global_params, updates = random_round(3, 1)
    result = FedAvg().aggregate(1, global_params, updates)
    for name, value in updates[0].params.items():
        np.testing.assert_array_equal(result[name], value)


@given(
    seed=st.integers(0, 2**32 - 1),
    clients=st.integers(1, 12),
    dtype=st.sampled_from([np.float32, np.float64, np.float16]),
)
@settings(max_examples=40, deadline=None)
def test_fedavg_equals_numpy_weighted_mean(seed: int, clients: int, dtype: type) -> None:
    global_params, updates = random_round(seed, clients, dtype)
    weights = np.array([u.num_samples for u in updates], dtype=np.float64)
    result = FedAvg().aggregate(1, global_params, updates)
    for name in global_params:
        stack = np.stack([u.params[name].astype(np.float64) for u in updates])
        expected = np.average(stack, axis=0, weights=weights).astype(dtype)
        assert result[name].dtype == np.dtype(dtype)
        if dtype is np.float64:
            # within the exact sum's grid 2**-F (far coarser than float64's last bit)
            f, _ = fraction_bits(global_params[name], sum(u.num_samples for u in updates))
            np.testing.assert_allclose(result[name], expected, rtol=0, atol=2.0**-f)
        else:
            # rounded once to a grid far finer than float32's: within a last bit
            np.testing.assert_array_max_ulp(result[name], expected, maxulp=1)


@given(seed=st.integers(0, 2**32 - 1), clients=st.integers(1, 6))
@settings(max_examples=20, deadline=None)
def test_fedavg_streaming_is_bit_identical_to_aggregate(seed: int, clients: int) -> None:
    # tensors larger than a block, so that block boundaries are exercised
    sizes = (_blocks.BLOCK + 3, 5)
    global_params, updates = random_round(seed, clients, np.float32, sizes=sizes)
    whole = FedAvg().aggregate(2, global_params, updates)
    folded = streamed(FedAvg(), 2, global_params, updates)
    for name in global_params:
        assert whole[name].tobytes() == folded[name].tobytes()


def test_signed_zeros_and_special_dtypes_agree_on_both_paths() -> None:
    global_params = {
        "z": np.zeros(4, dtype=np.float32),
        "i": np.zeros(3, dtype=np.int32),
        "flag": np.zeros(2, dtype=bool),
        "empty": np.zeros((0, 2), dtype=np.float32),
    }
    updates = [
        upd("a", 2, z=np.float32([-0.0, -0.0, 1, -1]), i=np.int32([1, 2, -7]),
            flag=[True, False], empty=np.zeros((0, 2), np.float32)),
        upd("b", 1, z=np.float32([-0.0, 0.0, -1, 1]), i=np.int32([4, 2, 7]),
            flag=[False, False], empty=np.zeros((0, 2), np.float32)),
    ]  # fmt: skip
    whole = FedAvg().aggregate(1, global_params, updates)
    folded = streamed(FedAvg(), 1, global_params, updates)
    for name in global_params:
        assert whole[name].dtype == global_params[name].dtype
        assert whole[name].tobytes() == folded[name].tobytes(), name
    assert not np.signbit(whole["z"][0])  # the sum starts from +0.0
    np.testing.assert_array_equal(whole["i"], [2, 2, -2])  # (2 + 4) / 3, 2, -7/3
    np.testing.assert_array_equal(whole["flag"], [True, False])


@pytest.mark.parametrize("name", ["fedavg", "fedadam"])
def test_results_do_not_depend_on_the_thread_count(name: str) -> None:
    # a tensor large enough to be split across threads, with a ragged last block
    sizes = (_blocks.PARALLEL_MIN // 2 + 17, 3)
    global_params, updates = random_round(99, 3, np.float32, sizes=sizes)
    assert len(_blocks.ranges(global_params["t0"].size, 3)) == 3
    results = []
    for threads in (1, 2, 3):
        results.append(get_strategy(name, threads=threads).aggregate(1, global_params, updates))
        results.append(streamed(get_strategy(name, threads=threads), 1, global_params, updates))
    for result in results[1:]:
        for key in global_params:
            assert result[key].tobytes() == results[0][key].tobytes()
    with pytest.raises(FlError, match="threads must be a positive integer"):
        get_strategy(name, threads=0)


def test_nan_found_by_a_worker_thread_names_the_sender() -> None:
    sizes = (_blocks.PARALLEL_MIN + 5,)
    global_params, updates = random_round(5, 3, np.float32, sizes=sizes)
    updates[2].params["t0"].reshape(-1)[-1] = np.inf  # in the last thread's range
    with pytest.raises(FlError, match="the update from 'site-2': tensor 't0' holds NaN or Inf"):
        FedAvg(threads=2).aggregate(1, global_params, updates)


# --- preconditions ------------------------------------------------------------------------


def base_round() -> tuple[Params, list[Update]]:
    global_params = {"w": np.zeros(3, dtype=np.float32)}
    return global_params, [
        upd("a", 2, w=np.float32([1, 2, 3])),
        upd("b", 1, w=np.float32([3, 2, 1])),
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda us: us.clear(), "no updates to aggregate"),
        (
            lambda us: us.append(upd("c", 0, w=np.float32([1, 1, 1]))),
            "the update from 'c' reports 0 samples",
        ),
        (
            lambda us: us.append(upd("c", -4, w=np.float32([1, 1, 1]))),
            "reports -4 samples",
        ),
        (
            lambda us: us.append(upd("c", 1.5, w=np.float32([1, 1, 1]))),
            "non-integer count",
        ),
        (
            lambda us: us.append(upd("c", 1, w=np.float32([1, 1]))),
            r"the update from 'c': tensor 'w' has shape \(2,\)",
        ),
        (
            lambda us: us.append(upd("c", 1, w=np.float64([1, 1, 1]))),
            "tensor 'w' has dtype float64",
        ),
        (
            lambda us: us.append(upd("c", 1, v=np.float32([1, 1, 1]))),
            "tensor 'w' is missing",
        ),
        (
            lambda us: us.append(upd("c", 1, w=np.float32([1, np.nan, 1]))),
            "the update from 'c': tensor 'w' holds NaN or Inf",
        ),
        (
            lambda us: us.append(upd("c", 1, w=np.float32([1, 1, -np.inf]))),
            "the update from 'c': tensor 'w' holds NaN or Inf",
        ),
        (lambda us: us.append(upd("a", 1, w=np.float32([1, 1, 1]))), "two updates from 'a'"),
        (lambda us: us.append(upd("", 1, w=np.float32([1, 1, 1]))), "has no sender"),
    ],
)
@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam"])
def test_preconditions_are_clear_errors(mutate, message: str, name: str) -> None:  # type: ignore[no-untyped-def]
    global_params, updates = base_round()
    mutate(updates)
    with pytest.raises(FlError, match=message):
        get_strategy(name).aggregate(1, global_params, updates)
    acc = get_strategy(name).accumulator(1, global_params)
    with pytest.raises(FlError, match=message):
        for update in updates:
            acc.add(update)
        acc.finish()


def test_a_refused_update_leaves_the_streamed_round_intact() -> None:
    global_params, updates = base_round()
    acc = FedAvg().accumulator(1, global_params)
    acc.add(updates[0])
    with pytest.raises(FlError, match="holds NaN"):
        acc.add(upd("evil", 1000, w=np.float32([np.nan, 0, 0])))
    with pytest.raises(FlError, match="has shape"):
        acc.add(upd("odd", 1000, w=np.float32([0, 0])))
    acc.add(updates[1])
    assert acc.senders == ["a", "b"]
    np.testing.assert_array_equal(
        acc.finish()["w"], FedAvg().aggregate(1, global_params, updates)["w"]
    )
    with pytest.raises(FlError, match="already aggregated"):
        acc.finish()


def test_overflowing_mean_is_refused() -> None:
    global_params = {"w": np.zeros(1, dtype=np.float16)}
    updates = [upd("a", 1, w=np.float16([60000])), upd("b", 1, w=np.float16([65504]))]
    result = FedAvg().aggregate(1, global_params, updates)  # 62752 fits in float16
    assert np.isfinite(result["w"]).all()
    global_params64 = {"w": np.zeros(1, dtype=np.float64)}
    huge = [upd("a", 10, w=[1.5e308]), upd("b", 10, w=[1.5e308])]
    with pytest.raises(FlError, match=r"'a': tensor 'w' holds 1\.5e\+308, beyond the exact sum"):
        FedAvg().aggregate(1, global_params64, huge)


def test_empty_global_model_is_refused() -> None:
    with pytest.raises(FlError, match="no tensors"):
        FedAvg().aggregate(1, {}, [upd("a", 1)])


# --- FedProx ------------------------------------------------------------------------------


def test_fedprox_configure_sends_mu_and_aggregates_like_fedavg() -> None:
    strategy = get_strategy("fedprox", mu=0.25, client_config={"local_epochs": 2})
    assert isinstance(strategy, FedProx)
    assert strategy.configure(1) == {"local_epochs": 2, "proximal_mu": 0.25}
    assert strategy.configure(7)["proximal_mu"] == 0.25
    assert FedAvg().configure(1) == {}
    global_params, updates = random_round(11, 5)
    prox = strategy.aggregate(1, global_params, updates)
    avg = FedAvg().aggregate(1, global_params, updates)
    for name in avg:
        np.testing.assert_array_equal(prox[name], avg[name])
    with pytest.raises(FlError, match="mu must be a finite number >= 0"):
        FedProx(mu=-1)
    assert FedProx(mu=0).configure(1)["proximal_mu"] == 0.0


# --- FedAdam ------------------------------------------------------------------------------


def test_fedadam_hand_computed_two_rounds() -> None:
    # beta1 = beta2 = 0.5, tau = 0.5 (v starts at tau^2 = 0.25), server_lr = 1
    strategy = FedAdam(server_lr=1.0, beta1=0.5, beta2=0.5, tau=0.5)
    x0 = {"w": np.array([1.0, 0.0]), "steps": np.array(3, dtype=np.int64)}
    # round 1: mean = [0.5, 1.0] -> g = [0.5, -1.0]
    #   m = 0.5*0 + 0.5*g = [0.25, -0.5]; v = 0.5*0.25 + 0.5*g^2 = [0.25, 0.625]
    #   x = x0 - m / (sqrt(v) + 0.5)
    r1 = [
        upd("a", 1, w=[0.0, 1.0], steps=np.int64(4)),
        upd("b", 1, w=[1.0, 1.0], steps=np.int64(6)),
    ]
    x1 = strategy.aggregate(1, x0, r1)
    expected1 = np.array([1.0 - 0.25 / (0.5 + 0.5), 0.0 + 0.5 / (np.sqrt(0.625) + 0.5)])
    np.testing.assert_allclose(x1["w"], expected1, rtol=0, atol=1e-15)
    assert x1["w"][0] == 0.75
    assert x1["steps"] == 5  # integers take FedAvg's value
    # round 2: mean of [0.25] -> g = x1 - mean
    mean2 = np.array([0.25, 0.5])
    r2 = [upd("a", 3, w=mean2, steps=np.int64(5)), upd("c", 1, w=mean2, steps=np.int64(5))]
    x2 = strategy.aggregate(2, x1, r2)
    g2 = x1["w"] - mean2
    m2 = 0.5 * np.array([0.25, -0.5]) + 0.5 * g2
    v2 = 0.5 * np.array([0.25, 0.625]) + 0.5 * g2**2
    expected2 = x1["w"] - m2 / (np.sqrt(v2) + 0.5)
    np.testing.assert_allclose(x2["w"], expected2, rtol=0, atol=1e-15)
    assert x2["w"][0] == 0.375  # 0.75 - (0.5*0.25 + 0.5*0.5) / (sqrt(0.25) + 0.5)
    assert strategy.step == 2


def test_fedadam_state_survives_a_restart_through_a_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rounds = [random_round(seed, 4)[1] for seed in (21, 22, 23)]
    x0 = random_round(20, 1)[0]

    # uninterrupted: three rounds
    straight = FedAdam(server_lr=0.05)
    models = [x0]
    for r, updates in enumerate(rounds, start=1):
        models.append(straight.aggregate(r, models[-1], updates))

    # interrupted after round 1: the state goes through a sealed checkpoint to a new process
    first = FedAdam(server_lr=0.05)
    y = first.aggregate(1, x0, rounds[0])
    key = bytes(range(32))
    path = write_checkpoint(
        tmp_path, key=key, policy_digest="p", round=1, counter=1,
        params_bytes=to_bytes(y), state=first.state(),
    )  # fmt: skip
    restored = load_checkpoint(path, key=key, policy_digest="p", expected_counter=1)
    resumed = FedAdam(server_lr=0.05)
    resumed.load_state(restored.state)
    assert resumed.step == 1
    for r, updates in enumerate(rounds[1:], start=2):
        y = streamed(resumed, r, y, updates)  # the streaming path, for good measure
    for name in x0:
        assert models[3][name].tobytes() == y[name].tobytes(), name

    # a FedAdam that lost its moments does not continue the same trajectory
    forgetful = FedAdam(server_lr=0.05)
    z = forgetful.aggregate(2, models[1], rounds[1])
    assert any(not np.array_equal(z[n], models[2][n]) for n in x0)


def test_fedadam_moments_in_float32_for_a_float32_model() -> None:
    global_params, updates = random_round(5, 3, np.float32)
    strategy = FedAdam()
    strategy.aggregate(1, global_params, updates)
    state = strategy.state()
    assert state["strategy"] == "fedadam" and state["step"] == 1
    assert {state[k].dtype for k in state if k.startswith(("m/", "v/"))} == {np.dtype(np.float32)}


def test_fedadam_load_state_refusals() -> None:
    strategy = FedAdam()
    with pytest.raises(FlError, match="of strategy 'fedavg'"):
        strategy.load_state({"strategy": "fedavg", "step": 1})
    with pytest.raises(FlError, match="step -1"):
        strategy.load_state({"strategy": "fedadam", "step": -1})
    with pytest.raises(FlError, match="one moment of tensor 'w'"):
        strategy.load_state({"strategy": "fedadam", "step": 1, "m/w": np.zeros(2)})
    with pytest.raises(FlError, match="invalid values"):
        strategy.load_state(
            {"strategy": "fedadam", "step": 1, "m/w": np.zeros(2), "v/w": -np.ones(2)}
        )
    with pytest.raises(FlError, match="unexpected key"):
        strategy.load_state({"strategy": "fedadam", "step": 1, "x": 3})
    # moments of another model are refused at the next round, before anything changes
    strategy.load_state({"strategy": "fedadam", "step": 1, "m/w": np.zeros(5), "v/w": np.ones(5)})
    global_params, updates = base_round()
    with pytest.raises(FlError, match="saved moments of tensor 'w' have shape"):
        strategy.aggregate(2, global_params, updates)
    assert strategy.step == 1
    strategy.load_state({"strategy": "fedadam", "step": 1, "m/w": np.zeros(3), "v/w": np.ones(3)})
    bigger = {"w": global_params["w"].astype(np.float64), "b": np.zeros(2)}
    grown = [upd(u.sender, u.num_samples, w=u.params["w"].astype(np.float64), b=[1.0, 2.0])
             for u in updates]  # fmt: skip
    with pytest.raises(FlError, match="saved moments lack tensor 'b'"):
        strategy.aggregate(2, bigger, grown)
    with pytest.raises(FlError, match="name 'w', not in the model"):
        strategy.aggregate(2, {"b": np.zeros(2)}, [upd("a", 1, b=[1.0, 1.0])])


def test_fedadam_settings_are_checked() -> None:
    for bad in ({"beta1": 1.0}, {"beta2": 1.5}, {"tau": 0}, {"server_lr": -1}, {"tau": "x"}):
        with pytest.raises(FlError, match="fedadam"):
            get_strategy("fedadam", **bad)


# --- registry and the interface for robust rules ------------------------------------------


def test_registry() -> None:
    assert {"fedavg", "fedprox", "fedadam"} <= set(available_strategies())
    assert isinstance(get_strategy("FedAvg"), FedAvg)
    assert isinstance(get_strategy("fed-adam", server_lr=0.1), FedAdam)
    with pytest.raises(FlError, match="unknown strategy 'no-such-rule'"):
        get_strategy("no-such-rule")
    with pytest.raises(FlError, match="strategy 'fedavg':.*'mu'"):
        get_strategy("fedavg", mu=1)
    with pytest.raises(FlError, match="not a JSON value"):
        get_strategy("fedavg", client_config={"f": object()})


class _Median(Strategy):
    """A coordinate-wise median: a rule that needs the whole round, as the robust ones do."""

    name = "test-median"
    seen: list[list[str]] = []  # noqa: RUF012 - test record

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        type(self).seen.append([u.sender for u in updates])
        return {
            k: np.median(np.stack([u.params[k] for u in updates]), axis=0).astype(v.dtype)
            for k, v in global_params.items()
        }


def test_a_whole_round_rule_gets_a_buffering_accumulator_with_senders() -> None:
    register_strategy(_Median)
    strategy = get_strategy("test-median")
    assert not strategy.streaming and FedAvg.streaming
    global_params = {"w": np.zeros(2, dtype=np.float32)}
    acc = strategy.accumulator(4, global_params)
    assert isinstance(acc, BufferingAccumulator)
    acc.add(upd("a", 1, w=np.float32([1, 10])))
    acc.add(upd("b", 5, w=np.float32([2, 20])))
    acc.add(upd("c", 9, w=np.float32([900, 30])))
    with pytest.raises(FlError, match="holds NaN"):
        acc.add(upd("d", 1, w=np.float32([np.nan, 0])))
    np.testing.assert_array_equal(acc.finish()["w"], np.float32([2, 20]))
    assert _Median.seen[-1] == ["a", "b", "c"]
    assert strategy.state() == {}
    strategy.load_state({})
    with pytest.raises(FlError, match="has no state"):
        strategy.load_state({"x": 1})
