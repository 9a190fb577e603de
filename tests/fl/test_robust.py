"""The robust aggregation rules (median, trimmed mean, Krum, Multi-Krum, Bulyan,
centered clipping, FLTrust) against small hand-computed rounds, their preconditions,
dtypes and state. Flower's reference implementations: test_flower_reference.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from secfl.errors import FlError
from secfl.fl.strategies import (
    BufferingAccumulator,
    Bulyan,
    CenteredClipping,
    FedAvg,
    FLTrust,
    Krum,
    Median,
    MultiKrum,
    Params,
    Strategy,
    TrimmedMean,
    Update,
    available_strategies,
    get_strategy,
)

ROBUST = ["median", "trimmed-mean", "krum", "multi-krum", "bulyan", "centered-clipping", "fltrust"]


def upd(sender: str, n: int = 1, **params: Any) -> Update:
    return Update(
        sender=sender, params={k: np.asarray(v) for k, v in params.items()}, num_samples=n
    )


def shifted(global_params: Params, deltas: dict[str, dict[str, Any]], n: int = 1) -> list[Update]:
    """Updates whose params are ``global + delta`` (float64), one per sender."""
    return [
        upd(sender, n, **{k: global_params[k] + np.asarray(v, dtype=np.float64)
                          for k, v in tensors.items()})
        for sender, tensors in deltas.items()
    ]  # fmt: skip


def root_hook(delta: dict[str, Any], calls: list[int] | None = None) -> Callable[..., Params]:
    """An FLTrust root update that moves the global model by ``delta``."""

    def root_update(round: int, params: Params, samples: int) -> Params:
        assert samples >= 1
        if calls is not None:
            calls.append(round)
        return {k: np.array(v + np.asarray(delta[k]), dtype=v.dtype) for k, v in params.items()}

    return root_update


def build(name: str, **extra: Any) -> Strategy:
    """A strategy with settings that fit the 7-update rounds below."""
    settings: dict[str, Any] = {
        "trimmed-mean": {"beta": 0.2},
        "krum": {"f": 1},
        "multi-krum": {"f": 1, "m": 3},
        "bulyan": {"f": 1},
        "centered-clipping": {"tau": 1.0},
        "fltrust": {"root_update": root_hook({"w": [0.1, 0.2], "b": [0.3], "count": 1})},
    }.get(name, {})
    return get_strategy(name, **{**settings, **extra})


def random_round(seed: int, n: int = 7, dtype: type = np.float32) -> tuple[Params, list[Update]]:
    rng = np.random.default_rng(seed)
    global_params = {
        "w": rng.standard_normal(2).astype(dtype),
        "b": rng.standard_normal(1).astype(dtype),
        "count": np.array(5, dtype=np.int64),
    }
    updates = [
        upd(
            f"site-{i}",
            int(rng.integers(1, 100)),
            w=(global_params["w"] + rng.standard_normal(2)).astype(dtype),
            b=(global_params["b"] + rng.standard_normal(1)).astype(dtype),
            count=np.int64(5 + rng.integers(0, 4)),
        )
        for i in range(n)
    ]
    return global_params, updates


# --- median and trimmed mean ---------------------------------------------------------------


def test_median_odd_and_even_rounds() -> None:
    g = {"w": np.array([1.0, 1.0]), "count": np.array(0, dtype=np.int64)}
    # deltas [1, 4], [3, -2], [9, 2] -> median [3, 2] -> model [4, 3]
    odd = [
        upd("a", 1, w=[2.0, 5.0], count=np.int64(10)),
        upd("b", 50, w=[4.0, -1.0], count=np.int64(20)),
        upd("c", 9000, w=[10.0, 3.0], count=np.int64(31)),  # the counts do not weigh
    ]
    result = Median().aggregate(1, g, odd)
    np.testing.assert_array_equal(result["w"], [4.0, 3.0])
    assert result["count"] == 20
    # + delta [-1, 6]: sorted deltas (-1, 1, 3, 9) and (-2, 2, 4, 6) -> medians 2 and 3
    even = [*odd, upd("d", 1, w=[0.0, 7.0], count=np.int64(40))]
    result = Median().aggregate(1, g, even)
    np.testing.assert_array_equal(result["w"], [3.0, 4.0])
    assert result["count"] == 26  # median 25.5, rounded half to even
    assert result["count"].dtype == np.int64


@pytest.mark.parametrize(
    ("beta", "n", "expected"),
    [
        (0.0, 5, [22.0, -8.8]),  # k = 0: the plain mean (110 / 5, -44 / 5)
        (0.2, 5, [3.0, 1.0]),  # k = 1: (2 + 3 + 4) / 3 and (0 + 1 + 2) / 3
        (0.39, 5, [3.0, 1.0]),  # k = floor(1.95) = 1
        (0.4, 5, [3.0, 1.0]),  # k = 2: the median
        (0.2, 6, [3.5, 1.5]),  # k = floor(1.2) = 1: (2 + 3 + 4 + 5) / 4, (0 + 1 + 2 + 3) / 4
        (0.34, 6, [3.5, 1.5]),  # k = 2: (3 + 4) / 2, (1 + 2) / 2
    ],
)
def test_trimmed_mean_cuts_exactly_k_values_at_each_end(
    beta: float, n: int, expected: list[float]
) -> None:
    g = {"w": np.array([10.0, -10.0])}
    columns = [(1, -50), (2, 0), (3, 1), (4, 2), (100, 3), (5, 3)][:n]
    updates = shifted(g, {f"s{i}": {"w": c} for i, c in enumerate(columns)})
    result = TrimmedMean(beta=beta).aggregate(1, g, updates)
    np.testing.assert_allclose(result["w"], np.add(g["w"], expected), rtol=0, atol=1e-12)


# --- Krum and Multi-Krum ------------------------------------------------------------------

#: Five points of R^3 split over two tensors: "a" at the origin has three neighbours at
#: distance 1; "b", "c", "d" are at 1 from "a" and sqrt(2) from each other; "e" is far.
#: With f = 1 each point sums its n - f - 2 = 2 nearest squared distances:
#: a: 1 + 1 = 2, b, c, d: 1 + 2 = 3, e: hundreds.
KRUM_DELTAS = {
    "a": {"w": [0.0, 0.0], "b": [0.0]},
    "b": {"w": [1.0, 0.0], "b": [0.0]},
    "c": {"w": [0.0, 1.0], "b": [0.0]},
    "d": {"w": [0.0, 0.0], "b": [1.0]},
    "e": {"w": [10.0, 10.0], "b": [10.0]},
}
KRUM_GLOBAL = {"w": np.array([1.0, -1.0]), "b": np.array([0.5])}


def test_krum_chooses_the_central_update() -> None:
    updates = shifted(KRUM_GLOBAL, KRUM_DELTAS)
    strategy = get_strategy("krum", f=1)
    assert isinstance(strategy, Krum) and strategy.selected() is None
    result = strategy.aggregate(1, KRUM_GLOBAL, updates)
    for name in KRUM_GLOBAL:
        np.testing.assert_array_equal(result[name], updates[0].params[name])
        assert result[name] is not updates[0].params[name]
    assert strategy.selected() == ["a"]
    # the order of the round does not matter
    assert Krum(f=1).ranked(KRUM_GLOBAL, updates[::-1])[0] == 4


def test_krum_refuses_too_few_updates() -> None:
    updates = shifted(KRUM_GLOBAL, KRUM_DELTAS)
    with pytest.raises(FlError, match=r"^krum: needs n > 2f \+ 2 updates \(n=5, f=2\)$"):
        Krum(f=2).aggregate(1, KRUM_GLOBAL, updates)
    with pytest.raises(FlError, match=r"krum: needs n > 2f \+ 2 updates \(n=4, f=1\)"):
        Krum(f=1).aggregate(1, KRUM_GLOBAL, updates[:4])
    with pytest.raises(FlError, match=r"multi-krum: needs n > 2f \+ 2 updates \(n=4, f=1\)"):
        MultiKrum(f=1, m=1).aggregate(1, KRUM_GLOBAL, updates[:4])
    # f = 0 needs 3 updates: with 2 there is no neighbour to score
    Krum(f=0).aggregate(1, KRUM_GLOBAL, updates[:3])
    with pytest.raises(FlError, match=r"\(n=2, f=0\)"):
        Krum(f=0).aggregate(1, KRUM_GLOBAL, updates[:2])


def test_multi_krum_averages_the_m_best() -> None:
    updates = shifted(KRUM_GLOBAL, KRUM_DELTAS)
    strategy = get_strategy("multi-krum", f=1, m=3)
    result = strategy.aggregate(1, KRUM_GLOBAL, updates)
    # a, then b and c (ties go to the earlier update): mean delta ([1/3, 1/3], [0])
    np.testing.assert_allclose(result["w"], KRUM_GLOBAL["w"] + 1 / 3, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(result["b"], KRUM_GLOBAL["b"])
    assert strategy.selected() == ["a", "b", "c"]
    # default m = n - f = 4: a, b, c, d -> mean delta ([1/4, 1/4], [1/4])
    default = MultiKrum(f=1)
    result = default.aggregate(1, KRUM_GLOBAL, updates)
    np.testing.assert_array_equal(result["w"], KRUM_GLOBAL["w"] + 0.25)
    np.testing.assert_array_equal(result["b"], KRUM_GLOBAL["b"] + 0.25)
    assert default.selected() == ["a", "b", "c", "d"]
    # m = 1 is Krum
    one = MultiKrum(f=1, m=1).aggregate(1, KRUM_GLOBAL, updates)
    np.testing.assert_array_equal(one["w"], updates[0].params["w"])
    with pytest.raises(FlError, match=r"^multi-krum: needs 1 <= m <= n \(m=6, n=5\)$"):
        MultiKrum(f=1, m=6).aggregate(1, KRUM_GLOBAL, updates)
    # a refused round leaves no stale selection behind
    with pytest.raises(FlError, match=r"\(n=4, f=1\)"):
        default.aggregate(2, KRUM_GLOBAL, updates[:4])
    assert default.selected() is None


def test_krum_family_integer_tensors() -> None:
    g = {**KRUM_GLOBAL, "count": np.array(7, dtype=np.int32)}
    counts = [10, 11, 20, 30, 1000]
    updates = [
        Update(u.sender, {**u.params, "count": np.array(c, dtype=np.int32)}, 1)
        for u, c in zip(shifted(KRUM_GLOBAL, KRUM_DELTAS), counts, strict=True)
    ]
    # counters: the median of the whole round's (10, 11, 20, 30, 1000), under both
    assert Krum(f=1).aggregate(1, g, updates)["count"] == 20
    result = MultiKrum(f=1, m=3).aggregate(1, g, updates)
    assert result["count"] == 20 and result["count"].dtype == np.int32


def test_a_kept_attackers_counter_does_not_move_the_result() -> None:
    """Found by a hostile review: Krum's distances look at floating-point tensors only,
    so an attacker whose weights are honest is kept, and its counter of 2^50 moved
    Multi-Krum's mean (and FLAME's, DnC's, SignGuard's) to about 2^48. The median of
    the kept values is an honest site's."""
    g = {**KRUM_GLOBAL, "count": np.array(7, dtype=np.int64)}
    counts = [10, 11, 12, 1 << 50, 13]
    updates = [
        Update(u.sender, {**u.params, "count": np.array(c, dtype=np.int64)}, 1)
        for u, c in zip(shifted(KRUM_GLOBAL, KRUM_DELTAS), counts, strict=True)
    ]
    strategy = MultiKrum(f=1)
    result = strategy.aggregate(1, g, updates)
    kept = strategy.selected()
    assert kept is not None and updates[3].sender in kept  # its weights looked honest
    assert 10 <= result["count"] <= 13


def test_attackers_kept_first_do_not_set_the_counters() -> None:
    """Second review: attackers whose float deltas sit at the centre are the ones
    Multi-Krum and Krum keep, so the kept set's median was theirs (2^50 with 4 of 11
    under f=4). The counters come from the whole round, where they are fewer than half."""
    rng = np.random.default_rng(5)
    g = {"w": np.zeros(8), "count": np.array(100, dtype=np.int64)}
    honest = [
        Update(f"h{i}", {"w": rng.normal(0, 1, 8), "count": np.array(101)}, 1) for i in range(7)
    ]
    hostile = [Update(f"x{i}", {"w": np.zeros(8), "count": np.array(1 << 50)}, 1) for i in range(4)]
    for strategy in (MultiKrum(f=4), Krum(f=4), MultiKrum(f=4, m=2)):
        result = strategy.aggregate(1, g, [*honest, *hostile])
        assert result["count"] == 101, (strategy, result["count"])


# --- Bulyan -------------------------------------------------------------------------------


def test_bulyan_on_4f_plus_3_updates() -> None:
    # n = 7, f = 1: theta = 5 Krum selections, then beta = 3 values closest to the median.
    # One coordinate, global 10, deltas 0, 1.5, 2, 3, 5 (honest) and 40, -40.
    # Krum scores (f = 1, n' - 3 nearest squared distances):
    #   n'=7, 4 nearest: 0: 2.25+4+9+25 = 40.25, 1.5: .25+2.25+2.25+12.25 = 17,
    #        2: .25+1+4+9 = 14.25, 3: 1+2.25+4+9 = 16.25, 5: 4+9+12.25+25 = 50.25 -> 2
    #   n'=6, 3 nearest: 0: 36.25, 1.5: 16.75, 3: 2.25+4+9 = 15.25, 5: 41.25 -> 3
    #   n'=5, 2 nearest: 0: 2.25+25 = 27.25, 1.5: 2.25+12.25 = 14.5, 5: 37.25 -> 1.5
    #   n'=4, 1 nearest: 0: 25, 5: 25 (a tie: the earlier update) -> 0
    #   n'=3, 1 nearest: 5: 35^2, 40: 35^2 (a tie again: the earlier, honest one) -> 5
    # selection {0, 1.5, 2, 3, 5}, median 2; the 3 closest to it: 2, 1.5, 3 -> 6.5 / 3
    g = {"w": np.array([10.0])}
    values = {"a": 0.0, "b": 1.5, "c": 2.0, "d": 3.0, "e": 5.0, "x": 40.0, "y": -40.0}
    updates = shifted(g, {s: {"w": [v]} for s, v in values.items()})
    strategy = get_strategy("bulyan", f=1)
    result = strategy.aggregate(1, g, updates)
    np.testing.assert_allclose(result["w"], [10 + 6.5 / 3], rtol=0, atol=1e-14)
    assert strategy.selected() == ["c", "d", "b", "a", "e"]
    # with f = 0 Bulyan keeps everyone and averages them all
    zero = Bulyan(f=0)
    np.testing.assert_allclose(
        zero.aggregate(1, g, updates)["w"], [10 + 11.5 / 7], rtol=0, atol=1e-14
    )
    assert sorted(zero.selected() or []) == sorted(values)


def test_bulyan_refuses_too_few_updates() -> None:
    g, updates = random_round(1, 10)
    with pytest.raises(FlError, match=r"^bulyan: needs n >= 4f \+ 3 updates \(n=6, f=1\)$"):
        Bulyan(f=1).aggregate(1, g, updates[:6])
    with pytest.raises(FlError, match=r"\(n=10, f=2\)"):
        Bulyan(f=2).aggregate(1, g, updates)
    Bulyan(f=1).aggregate(1, g, updates[:7])


# --- centered clipping --------------------------------------------------------------------


def test_centered_clipping_two_rounds_and_its_state() -> None:
    tau = 1.0
    g0 = {"w": np.array([0.0, 0.0])}
    # round 1, center 0: [3, 4] (norm 5) is clipped to [0.6, 0.8]; the others are inside
    r1 = shifted(g0, {"a": {"w": [3.0, 4.0]}, "b": {"w": [0.5, 0.0]}, "c": {"w": [0.0, -0.3]}})
    strategy = get_strategy("centered-clipping", tau=tau)
    assert isinstance(strategy, CenteredClipping) and strategy.iterations == 1
    g1 = strategy.aggregate(1, g0, r1)
    v1 = np.array([0.6 + 0.5, 0.8 - 0.3]) / 3
    np.testing.assert_allclose(g1["w"], v1, rtol=0, atol=1e-15)
    state = strategy.state()
    assert state["strategy"] == "centered-clipping"
    np.testing.assert_allclose(state["center/w"], v1, rtol=0, atol=1e-15)

    # round 2 starts from the center v1: gaps from it [0, 2] (clipped to [0, 1]),
    # [0.1, 0] and [-0.2, 0]: v2 = v1 + [-0.1, 1] / 3
    gaps = {"a": {"w": [0.0, 2.0]}, "b": {"w": [0.1, 0.0]}, "c": {"w": [-0.2, 0.0]}}
    r2 = shifted({"w": g1["w"] + v1}, gaps)
    resumed = CenteredClipping(tau=tau)
    resumed.load_state({k: np.array(v) if k != "strategy" else v for k, v in state.items()})
    g2 = strategy.aggregate(2, g1, r2)
    v2 = v1 + np.array([-0.1, 1.0]) / 3
    np.testing.assert_allclose(g2["w"], g1["w"] + v2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(strategy.state()["center/w"], v2, rtol=0, atol=1e-15)
    # the restored strategy continues the same trajectory, bit for bit
    assert resumed.aggregate(2, g1, r2)["w"].tobytes() == g2["w"].tobytes()
    # one that lost its center does not
    forgetful = CenteredClipping(tau=tau).aggregate(2, g1, r2)
    assert not np.allclose(forgetful["w"], g2["w"])


def test_centered_clipping_iterations() -> None:
    # deltas 10, 0, 0 and tau 1. Step 1 from 0: clips 1, 0, 0 -> v = 1/3.
    # Step 2: gaps 29/3 (clipped to 1), -1/3, -1/3 -> v = 1/3 + (1 - 2/3) / 3 = 4/9
    g = {"w": np.array([2.0])}
    updates = shifted(g, {"a": {"w": [10.0]}, "b": {"w": [0.0]}, "c": {"w": [0.0]}})
    one = CenteredClipping(tau=1.0, iterations=1).aggregate(1, g, updates)
    two = CenteredClipping(tau=1.0, iterations=2).aggregate(1, g, updates)
    np.testing.assert_allclose(one["w"], [2 + 1 / 3], rtol=0, atol=1e-15)
    np.testing.assert_allclose(two["w"], [2 + 4 / 9], rtol=0, atol=1e-15)
    # a huge tau is the plain mean
    mean = CenteredClipping(tau=1e9).aggregate(1, g, updates)
    np.testing.assert_allclose(mean["w"], [2 + 10 / 3], rtol=0, atol=1e-14)


def test_centered_clipping_state_refusals() -> None:
    strategy = CenteredClipping(tau=1.0)
    with pytest.raises(FlError, match="of strategy 'fedadam'"):
        strategy.load_state({"strategy": "fedadam"})
    with pytest.raises(FlError, match="unexpected key 'm/w'"):
        strategy.load_state({"strategy": "centered-clipping", "m/w": np.zeros(2)})
    with pytest.raises(FlError, match="is not a float array"):
        strategy.load_state({"strategy": "centered-clipping", "center/w": [0.0, 1.0]})
    with pytest.raises(FlError, match="holds NaN or Inf"):
        strategy.load_state({"strategy": "centered-clipping", "center/w": np.full(2, np.nan)})
    # a center of another model is refused at the next round, before anything changes
    strategy.load_state({"strategy": "centered-clipping", "center/w": np.zeros(3)})
    g = {"w": np.zeros(2)}
    updates = shifted(g, {"a": {"w": [1.0, 0.0]}})
    with pytest.raises(FlError, match=r"center of tensor 'w' has shape \(3,\)"):
        strategy.aggregate(1, g, updates)
    assert strategy.state()["center/w"].shape == (3,)
    with pytest.raises(FlError, match="the saved center names 'w', not in the model"):
        strategy.aggregate(1, {"v": np.zeros(3)}, [upd("a", v=np.ones(3))])
    strategy.load_state({"strategy": "centered-clipping", "center/w": np.zeros(2)})
    with pytest.raises(FlError, match="lacks tensor 'v'"):
        strategy.aggregate(1, {**g, "v": np.zeros(1)}, [upd("a", w=np.ones(2), v=np.ones(1))])
    strategy.load_state({"strategy": "centered-clipping"})  # no center: a fresh start
    assert strategy.state() == {"strategy": "centered-clipping"}


# --- FLTrust ------------------------------------------------------------------------------


def test_fltrust_trust_scores_and_normalization() -> None:
    g = {"w": np.array([1.0, -1.0])}
    calls: list[int] = []
    strategy = get_strategy("fltrust", root_update=root_hook({"w": [1.0, 0.0]}, calls))
    assert isinstance(strategy, FLTrust)
    deltas = {
        "same": {"w": [2.0, 0.0]},  # cos 1, rescaled to the root's norm: [1, 0]
        "orthogonal": {"w": [0.0, 3.0]},  # cos 0: no weight
        "opposite": {"w": [-5.0, 0.0]},  # cos -1, ReLU'd to 0: no weight
        "diagonal": {"w": [1.0, 1.0]},  # cos 1/sqrt(2), rescaled to [1, 1] / sqrt(2)
    }
    updates = shifted(g, deltas)
    result = strategy.aggregate(3, g, updates)
    assert calls == [3]
    s = 1 / math.sqrt(2)
    expected = (np.array([1.0, 0.0]) + s * np.array([s, s])) / (1 + s)  # [1.5, 0.5] / (1 + s)
    np.testing.assert_allclose(result["w"], g["w"] + expected, rtol=0, atol=1e-15)
    assert strategy.trust == pytest.approx(
        {"same": 1.0, "orthogonal": 0.0, "opposite": 0.0, "diagonal": s}, abs=1e-15
    )
    assert strategy.selected() is None

    # the opposite update's size does not matter, nor does the size of the trusted ones
    louder = {**deltas, "opposite": {"w": [-5000.0, 0.0]}, "same": {"w": [200.0, 0.0]}}
    again = FLTrust(root_update=root_hook({"w": [1.0, 0.0]})).aggregate(3, g, shifted(g, louder))
    np.testing.assert_allclose(again["w"], result["w"], rtol=0, atol=1e-15)
    # every update takes the root update's norm
    longer = FLTrust(root_update=root_hook({"w": [3.0, 0.0]})).aggregate(3, g, updates)
    np.testing.assert_allclose(longer["w"], g["w"] + 3 * expected, rtol=0, atol=1e-14)


def test_fltrust_keeps_the_global_model_when_it_trusts_nobody() -> None:
    g = {"w": np.array([1.0, -1.0]), "count": np.array(4, dtype=np.int64)}
    updates = [
        upd("a", w=[0.0, -1.0], count=np.int64(9)),  # delta [-1, 0]: opposite
        upd("b", w=[1.0, 0.0], count=np.int64(9)),  # delta [0, 1]: orthogonal
        upd("c", w=[1.0, -1.0], count=np.int64(9)),  # delta 0: no direction
    ]
    strategy = FLTrust(root_update=root_hook({"w": [1.0, 0.0], "count": 1}))
    result = strategy.aggregate(1, g, updates)
    for name in g:
        np.testing.assert_array_equal(result[name], g[name])
        assert result[name] is not g[name]
    assert strategy.trust == {"a": 0.0, "b": 0.0, "c": 0.0}
    # a zero root update trusts nobody either
    zero = FLTrust(root_update=root_hook({"w": [0.0, 0.0], "count": 0}))
    np.testing.assert_array_equal(zero.aggregate(1, g, updates)["w"], g["w"])


def test_fltrust_needs_its_root_dataset() -> None:
    g, updates = random_round(2, 3, np.float64)
    with pytest.raises(
        FlError,
        match=r"^fltrust: no root dataset \(the policy must give the aggregator a "
        r"validation volume\)$",
    ):
        get_strategy("fltrust").aggregate(1, g, updates)
    bad = FLTrust(root_update=lambda r, p, n: {**p, "w": np.zeros(3)})
    with pytest.raises(FlError, match=r"fltrust: the root update: tensor 'w' has shape \(3,\)"):
        bad.aggregate(1, g, updates)
    with pytest.raises(FlError, match="fltrust: root_update must be callable"):
        FLTrust(root_update="root.npz")  # type: ignore[arg-type]


# --- all robust rules ---------------------------------------------------------------------


def test_registry_names_and_selected_default() -> None:
    assert set(ROBUST) <= set(available_strategies())
    strategy = get_strategy("krum", f=1)
    assert isinstance(strategy, Krum) and strategy.f == 1
    assert isinstance(get_strategy("Multi_Krum", f=2, m=3), MultiKrum)
    assert isinstance(get_strategy("TrimmedMean", beta=0.25), TrimmedMean)
    assert FedAvg().selected() is None and Median().selected() is None
    assert repr(get_strategy("trimmed-mean", beta=0.25)).startswith("TrimmedMean(beta=0.25")
    assert get_strategy("multi-krum", f=2, m=3).settings()["m"] == 3
    with pytest.raises(FlError, match="strategy 'centered-clipping':.*'tau'"):
        get_strategy("centered-clipping")
    with pytest.raises(FlError, match="strategy 'krum':.*'beta'"):
        get_strategy("krum", beta=0.1)


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("trimmed-mean", {"beta": 0.5}, "trimmed-mean: beta must be below 0.5"),
        ("trimmed-mean", {"beta": -0.1}, "trimmed-mean: beta must be a finite number >= 0"),
        ("krum", {"f": -1}, "krum: f must be an integer >= 0, not -1"),
        ("krum", {"f": 1.5}, "krum: f must be an integer >= 0, not 1.5"),
        ("bulyan", {"f": True}, "bulyan: f must be an integer >= 0, not True"),
        ("multi-krum", {"m": 0}, "multi-krum: m must be an integer >= 1, not 0"),
        ("centered-clipping", {"tau": 0}, "centered-clipping: tau must be a finite number > 0"),
        (
            "centered-clipping",
            {"tau": 1, "iterations": 0},
            "centered-clipping: iterations must be an integer from 1 to 1000, not 0",
        ),
    ],
)
def test_settings_are_checked(name: str, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(FlError, match=f"^{message}"):
        get_strategy(name, **settings)


@pytest.mark.parametrize("name", ROBUST)
def test_float32_in_float32_out(name: str) -> None:
    g, updates = random_round(7, 7, np.float32)
    strategy = build(name)
    assert not strategy.streaming
    result = strategy.aggregate(1, g, updates)
    assert list(result) == list(g)
    for key, ref in g.items():
        assert result[key].dtype == ref.dtype and result[key].shape == ref.shape
        assert np.isfinite(result[key]).all()
    # the same as computing on float64 copies, rounded once
    g64 = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in g.items()}
    updates64 = [
        Update(u.sender, {k: v.astype(g64[k].dtype) for k, v in u.params.items()}, 1)
        for u in updates
    ]
    wide = build(name).aggregate(1, g64, updates64)
    for key in g:
        np.testing.assert_allclose(result[key], wide[key], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ROBUST)
def test_buffering_accumulator_gives_the_same_result(name: str) -> None:
    g, updates = random_round(8, 7, np.float64)
    acc = build(name).accumulator(1, g)
    assert isinstance(acc, BufferingAccumulator)
    for update in updates:
        acc.add(update)
    streamed = acc.finish()
    whole = build(name).aggregate(1, g, updates)
    for key in g:
        assert streamed[key].tobytes() == whole[key].tobytes()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda us: us.clear(), "aggregate: no updates to aggregate"),
        (lambda us: us.append(us[0]), "two updates from 'site-0'"),
        (
            lambda us: us.append(upd("z", w=np.float32([np.nan, 0]), b=np.float32([0]),
                                     count=np.int64(1))),
            "the update from 'z': tensor 'w' holds NaN or Inf",
        ),
        (
            lambda us: us.append(upd("z", w=np.float32([0, 0, 0]), b=np.float32([0]),
                                     count=np.int64(1))),
            r"the update from 'z': tensor 'w' has shape \(3,\)",
        ),
        (
            lambda us: us.append(upd("z", w=np.float64([0, 0]), b=np.float32([0]),
                                     count=np.int64(1))),
            "tensor 'w' has dtype float64",
        ),
    ],
)  # fmt: skip
@pytest.mark.parametrize("name", ROBUST)
def test_preconditions_are_clear_errors(
    mutate: Callable[[list[Update]], None], message: str, name: str
) -> None:
    g, updates = random_round(9, 7, np.float32)
    mutate(updates)
    with pytest.raises(FlError, match=message):
        build(name).aggregate(1, g, updates)


@pytest.mark.parametrize("name", ROBUST)
def test_complex_tensors_are_refused(name: str) -> None:
    g = {"w": np.zeros(2, dtype=np.complex128)}
    updates = [upd(f"s{i}", w=np.ones(2, dtype=np.complex128)) for i in range(7)]
    with pytest.raises(FlError, match=f"^{name}: tensor 'w' has dtype complex128"):
        build(name).aggregate(1, g, updates)


def test_an_overflowing_result_is_refused() -> None:
    # the coordinate-wise rules stay within the updates' range; FLTrust and centered
    # clipping can leave it. FLTrust: the root delta [120000, 120000] has norm ~169706,
    # which the update along [1, 0] takes: -60000 + 169706 is beyond float16's 65504.
    g = {"w": np.float16([-60000.0, -60000.0])}
    updates = [upd("a", w=np.float16([-59968.0, -60000.0]))]
    fltrust = FLTrust(root_update=lambda r, p, n: {"w": np.float16([60000.0, 60000.0])})
    with pytest.raises(FlError, match="^fltrust: the result of tensor 'w' overflows float16$"):
        fltrust.aggregate(1, g, updates)
    # centered clipping: a saved center of 60000 on a model at 60000
    clipping = CenteredClipping(tau=1.0)
    center = np.float32([60000.0])
    clipping.load_state({"strategy": "centered-clipping", "center/w": center})
    with pytest.raises(FlError, match="^centered-clipping: the result of tensor 'w' overflows"):
        clipping.aggregate(1, {"w": np.float16([60000.0])}, [upd("a", w=np.float16([65504.0]))])
    assert clipping.state()["center/w"] is not center  # loaded as a copy, kept on failure
    np.testing.assert_array_equal(clipping.state()["center/w"], center)


def test_fltrust_trains_its_root_update_on_as_many_examples_as_a_typical_participant() -> None:
    """The root update's norm is the step every update is rescaled to: trained on a
    root set three times a participant's, it would take three times their steps. The
    aggregator's hook trains on a fresh sample of the median participant's size."""
    import torch

    from secfl.fl._strategy_wiring import wire_strategy
    from secfl.tasks._base import Dataset

    seen: list[tuple[int, int]] = []

    class CountingTask:
        def build_model(self) -> torch.nn.Module:
            return torch.nn.Linear(2, 1)

        def train(self, model: torch.nn.Module, data: Dataset, config: dict[str, Any]) -> None:
            seen.append((len(data), len(set(data.y.tolist()))))

    root = Dataset(torch.zeros(300, 2), torch.arange(300))
    fltrust = FLTrust()
    wire_strategy(fltrust, CountingTask(), root, {"epochs": 1}, seed=0)
    g = {"weight": np.zeros((1, 2), np.float32), "bias": np.zeros(1, np.float32)}
    sizes = [90, 105, 120, 4000]
    updates = [Update(f"s{i}", {k: v + 0.1 for k, v in g.items()}, n) for i, n in enumerate(sizes)]
    fltrust.aggregate(1, g, updates)
    fltrust.aggregate(2, g, updates)
    assert [n for n, _ in seen] == [112, 112]  # the median of 90, 105, 120 and 4000
    assert seen[0][1] == 112  # distinct examples, not repeats
    big = [Update(u.sender, u.params, 1000) for u in updates]
    fltrust.aggregate(3, g, big)
    assert seen[-1][0] == 300  # never more than the root set holds
