"""Fang et al.'s Krum and trimmed-mean attacks and the mimic attack: hand-checked small
cases, the lambda search against a brute-force one, and short real simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secfl.eval.attacks import get_attack
from secfl.eval.attacks.fang import FangKrum, krum_lambda_bound, trimmed_mean_interval
from secfl.eval.attacks.mimic import Mimic
from secfl.eval.grid import ATTACKS, attack_settings
from secfl.eval.simulation import DataCache, Scenario, simulate
from secfl.tasks import TaskError

RNG = np.random.default_rng
#: Four colluders' benign deltas of 3 coordinates: three on the axes and (1, 1, 1), so
#: the mean is (1, 1, 1), s = (1, 1, 1), and the nearest pair is sqrt(6) apart.
KRUM_ROWS = np.array([[3.0, 0, 0], [0, 3, 0], [0, 0, 3], [1, 1, 1]])


def deltas(rows: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"w": np.array(row)} for row in rows]


def brute_krum_lambda(rows: np.ndarray, f: int, start: float, threshold: float) -> float | None:
    """The first of ``start / 2**t`` for which a Krum written out here (crafted delta
    first, ties to the earlier one) selects ``-lambda * sign(mean)``; None if none
    above ``threshold``."""
    s = np.sign(rows.mean(0))
    lam = start
    while lam >= threshold:
        points = [-lam * s, *rows]
        n = len(points)
        k = min(max(1, n - f - 2), n - 1)
        scores = []
        for i, p in enumerate(points):
            others = sorted(float(((p - q) ** 2).sum()) for j, q in enumerate(points) if j != i)
            scores.append(sum(others[:k]))
        if scores.index(min(scores)) == 0:
            return lam
        lam /= 2
    return None


# -- registry, settings ------------------------------------------------------------------


def test_registered_and_in_the_grid() -> None:
    assert {"fang-krum", "fang-trimmed-mean", "mimic"} <= set(ATTACKS)
    assert get_attack("fang-krum").colluding and not get_attack("fang-krum").omniscient
    assert get_attack("FangTrimmedMean").colluding
    assert get_attack("mimic").omniscient and not get_attack("mimic").colluding
    assert not get_attack("alie").omniscient
    assert attack_settings("fang-krum", 20, 4) == {"f": 4}
    assert attack_settings("fang-krum", 20, 0) == {"f": 1}
    assert attack_settings("mimic", 20, 4) == {}
    assert repr(get_attack("fang-krum", f=2)) == "FangKrum(f=2, threshold=1e-05)"


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("fang-krum", {"f": -1}, "fang-krum: f must be an integer >= 0, not -1"),
        ("fang-krum", {"f": 1.5}, "fang-krum: f must be an integer >= 0, not 1.5"),
        ("fang-krum", {"threshold": 0}, "fang-krum: threshold must be a finite number > 0"),
        ("mimic", {"warmup": 0}, "mimic: warmup must be an integer >= 1, not 0"),
        ("fang-trimmed-mean", {"z": 1}, "fang-trimmed-mean"),
    ],
)
def test_bad_settings_refused_in_one_line(
    name: str, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(TaskError, match=message) as error:
        get_attack(name, **settings)
    assert "\n" not in str(error.value)


def test_missing_deltas_refused() -> None:
    own = deltas(KRUM_ROWS)[0]
    with pytest.raises(TaskError, match="needs the colluders' benign deltas"):
        get_attack("fang-krum").poison_delta(own, benign=[], rng=RNG(0))
    with pytest.raises(TaskError, match="needs the honest participants' deltas"):
        get_attack("mimic").poison_delta(own, benign=[own], rng=RNG(0))
    with pytest.raises(
        TaskError, match=r"honest participants' delta 1: tensor 'w' is float64\[2\]"
    ):
        get_attack("mimic").poison_delta(
            own, benign=[], rng=RNG(0), honest=[own, {"w": np.ones(2)}]
        )


# -- fang-krum --------------------------------------------------------------------------


def test_krum_bound_and_lambda_by_hand() -> None:
    # f = c = 4 on 5 deltas: each Krum score is the squared distance to the 1 nearest
    # other. Bound: nearest benign pair sqrt(6) / (1 * sqrt(3)) + largest norm 3 / sqrt(3).
    bound = math.sqrt(2) + math.sqrt(3)
    assert krum_lambda_bound(KRUM_ROWS, 4) == pytest.approx(bound)
    # f = 0: 3 neighbours; (1, 1, 1)'s sum 3 sqrt(6) is the smallest: 3 sqrt(6) / (3 sqrt(3)).
    assert krum_lambda_bound(KRUM_ROWS, 0) == pytest.approx(bound)
    # -lambda (1, 1, 1) is nearest (1, 1, 1), at 3 (1 + lambda)²; the smallest benign
    # score is 6 (or that same distance), so Krum selects it iff lambda <= sqrt(2) - 1:
    # bound / 8 = 0.393 is the first halving below 0.414.
    attack = FangKrum()
    out = attack.poison_delta(deltas(KRUM_ROWS)[3], benign=deltas(KRUM_ROWS), rng=RNG(0))["w"]
    assert attack.last_selected is True
    assert attack.last_lambda == pytest.approx(bound / 8)
    np.testing.assert_allclose(out, -bound / 8 * np.ones(3))
    # f = 0: the crafted delta's 3 nearest already sum to 21 > 15 at lambda = 0, so no
    # lambda works; the search gives up at the first one below the threshold
    attack = FangKrum(f=0)
    out = attack.poison_delta(deltas(KRUM_ROWS)[3], benign=deltas(KRUM_ROWS), rng=RNG(0))["w"]
    assert attack.last_selected is False
    assert attack.last_lambda is not None and 0.5e-5 <= attack.last_lambda < 1e-5
    np.testing.assert_allclose(out, -attack.last_lambda * np.ones(3))


@pytest.mark.parametrize("f", [0, 1, 2, 3, 4, 6])
def test_krum_search_matches_brute_force(f: int) -> None:
    rows = RNG(f).normal(0.3, 1.0, (5, 40))
    attack = FangKrum(f=f)
    out = attack.poison_delta(deltas(rows)[0], benign=deltas(rows), rng=RNG(0))["w"]
    expected = brute_krum_lambda(rows, f, krum_lambda_bound(rows, f), 1e-5)
    assert attack.last_selected is (expected is not None)
    if expected is not None:
        assert attack.last_lambda == expected
        np.testing.assert_array_equal(out, -expected * np.sign(rows.mean(0)))
        if expected < krum_lambda_bound(rows, f):  # the lambda before it was not selected
            assert brute_krum_lambda(rows, f, 2 * expected, 2 * expected) is None


def test_krum_search_on_random_deltas_and_the_threshold() -> None:
    rows = RNG(4).normal(0.2, 1.0, (6, 50))
    for f in range(5):
        attack = FangKrum(f=f)
        attack.poison_delta(deltas(rows)[0], benign=deltas(rows), rng=RNG(0))
        bound = krum_lambda_bound(rows, f)
        assert attack.last_lambda == brute_krum_lambda(rows, f, bound, 1e-5)
    # a threshold above the lambda that works: the search stops before it
    found = brute_krum_lambda(rows, 0, krum_lambda_bound(rows, 0), 1e-5)
    assert found is not None and found < krum_lambda_bound(rows, 0)
    attack = FangKrum(f=0, threshold=found * 1.5)
    out = attack.poison_delta(deltas(rows)[0], benign=deltas(rows), rng=RNG(0))["w"]
    assert attack.last_selected is False
    assert attack.last_lambda == found
    np.testing.assert_allclose(np.abs(out), found)


def test_krum_zero_mean_sends_zero() -> None:
    rows = np.array([[1.0, -2.0], [-1.0, 2.0]])
    out = get_attack("fang-krum").poison_delta(deltas(rows)[0], benign=deltas(rows), rng=RNG(0))
    np.testing.assert_array_equal(out["w"], [0.0, 0.0])


# -- fang-trimmed-mean -------------------------------------------------------------------


def test_trimmed_mean_intervals_per_coordinate() -> None:
    # mean (2, -3, 0); sample std sqrt(2/3) on the first two coordinates, 0 on the last;
    # s = (1, -1, 0): push coordinate 0 down, coordinate 1 up, coordinate 2 "down" by 0.
    rows = np.array([[1.0, -2, 0], [3, -4, 0], [2, -3, 0], [2, -3, 0]])
    sd = math.sqrt(2 / 3)
    low, high = trimmed_mean_interval(rows)
    np.testing.assert_allclose(low, [2 - 4 * sd, -3 + 3 * sd, 0])
    np.testing.assert_allclose(high, [2 - 3 * sd, -3 + 4 * sd, 0])
    attack, rng = get_attack("fang-trimmed-mean"), RNG(5)
    draws = np.stack(
        [
            attack.poison_delta(deltas(rows)[0], benign=deltas(rows), rng=rng)["w"]
            for _ in range(400)
        ]
    )
    assert (draws >= low).all() and (draws <= high).all()
    np.testing.assert_array_equal(draws[:, 2], 0.0)
    # uniform: the draws fill their interval (width sd) from end to end, and differ
    assert np.all(draws[:, :2].min(0) - low[:2] < 0.02 * sd)
    assert np.all(high[:2] - draws[:, :2].max(0) < 0.02 * sd)
    assert abs(draws[:, 1].mean() - (low[1] + high[1]) / 2) < 0.05 * sd
    assert len({tuple(d) for d in draws}) == 400


# -- mimic ------------------------------------------------------------------------------

#: Round 1: the third honest delta lies far out along the first axis (the top
#: principal direction); round 2: the first one does.
ROUND1 = np.array([[0.0, 0, 0], [1, 0, 0], [-3, 0.5, 0], [0.5, -0.5, 0]])
ROUND2 = np.array([[5.0, 0, 1], [0, 0, 0], [0, 0.1, 0], [0.2, 0, 0]])


def mimic(attack: Mimic, honest: np.ndarray, own: int = 0) -> np.ndarray:
    mine = {"w": np.full(3, 9.0 + own)}
    return attack.poison_delta(mine, benign=[mine], rng=RNG(0), honest=deltas(honest))["w"]


def test_mimic_copies_the_victim_and_keeps_it() -> None:
    attack = get_attack("mimic")
    assert isinstance(attack, Mimic)
    # two attackers in round 1: both copy the honest delta farthest along the
    # principal direction (by hand: centred first coordinates .375, 1.375, -2.625, .875)
    np.testing.assert_array_equal(mimic(attack, ROUND1, 0), ROUND1[2])
    np.testing.assert_array_equal(mimic(attack, ROUND1, 1), ROUND1[2])
    assert (attack.victim, attack.rounds) == (2, 1)
    # round 2: the same participant, though a fresh choice would be another one
    np.testing.assert_array_equal(mimic(attack, ROUND2), ROUND2[2])
    assert (attack.victim, attack.rounds) == (2, 2)
    fresh = get_attack("mimic")
    assert isinstance(fresh, Mimic)
    np.testing.assert_array_equal(mimic(fresh, ROUND2), ROUND2[0])
    # a round with one honest delta fewer: the index no longer names the same site
    np.testing.assert_array_equal(mimic(attack, ROUND2[[0, 2, 3]] + 1), ROUND2[0] + 1)


def test_mimic_warmup_chooses_again_then_fixes() -> None:
    attack = get_attack("mimic", warmup=2)
    assert isinstance(attack, Mimic)
    np.testing.assert_array_equal(mimic(attack, ROUND1), ROUND1[2])
    np.testing.assert_array_equal(mimic(attack, ROUND2), ROUND2[0])  # still warming up
    np.testing.assert_array_equal(mimic(attack, ROUND1 * 2), ROUND1[0] * 2)
    assert (attack.victim, attack.rounds) == (0, 3)


def test_mimic_keeps_names_shapes_dtypes() -> None:
    honest = [{"a": np.full((2, 2), i, np.float32), "n": np.array(i)} for i in (1, 2, 7)]
    mine = {"a": np.zeros((2, 2), np.float32), "n": np.array(3)}
    out = get_attack("mimic").poison_delta(mine, benign=[mine], rng=RNG(0), honest=honest)
    assert out["a"].dtype == np.float32 and out["a"].shape == (2, 2)
    np.testing.assert_array_equal(out["a"], 7.0)
    assert out["n"] == 3  # counters are not learned: the attacker's own is kept


# -- real simulations --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache() -> DataCache:
    return DataCache()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("attack", "defence", "settings"),
    [
        ("fang-krum", "krum", {"f": 2}),
        ("fang-trimmed-mean", "trimmed-mean", {"beta": 0.2}),
        ("mimic", "fedavg", {}),
        ("mimic", "krum", {"f": 2}),
    ],
)
def test_simulation_end_to_end(
    attack: str, defence: str, settings: dict[str, object], cache: DataCache
) -> None:
    scenario = Scenario(
        task="digits", clients=10, rounds=2, malicious=0.2, attack=attack,
        attack_settings=attack_settings(attack, 10, 2), defence=defence,
        defence_settings=settings, epochs=1,
    )  # fmt: skip
    outcome = simulate(scenario, cache)
    assert len(outcome.malicious) == 2
    assert [r["round"] for r in outcome.rounds] == [1, 2]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in outcome.rounds)
