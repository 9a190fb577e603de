"""DnC, SignGuard and FLAME on small hand-built rounds: 4 honest updates and 2 obvious
outliers of one kind (flipped sign, huge norm, tiny norm, ALIE-shifted). Each result
must equal the global model plus the mean of the expected kept set, computed here
independently; preconditions are refused in one line; the seeded draws repeat."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN
from sklearn.metrics.pairwise import cosine_distances

from secfl.errors import FlError
from secfl.fl.strategies import (
    DnC,
    Flame,
    Params,
    SignGuard,
    Update,
    _signals,
    available_strategies,
    get_strategy,
)

D_W, D_B = 2000, 10  # float coordinates: "w" (40, 50) and "b" (10,)
HONEST = ["h0", "h1", "h2", "h3"]


def global_model() -> Params:
    rng = np.random.default_rng(0)
    return {
        "w": rng.normal(size=(40, 50)).astype(np.float32),
        "steps": np.array(7, dtype=np.int64),
        "b": np.zeros(10, dtype=np.float32),
    }


def honest_deltas() -> np.ndarray:
    """6 honest-like deltas: a shared direction plus noise of std 0.01. On 70% of the
    coordinates the direction is at least 0.05 away from 0 (80% of them positive), so
    the noise never flips the sign; on the other 30% it is 0 and the sign is the
    noise's. The first 4 are the honest updates, the other 2 the material of the
    scaled and flipped outliers."""
    rng = np.random.default_rng(1)
    d = D_W + D_B
    signs = np.where(rng.random(d) < 0.8, 1.0, -1.0)
    base = signs * (0.05 + 0.05 * np.abs(rng.normal(size=d)))
    base[rng.random(d) < 0.3] = 0.0
    return base + 0.01 * rng.normal(size=(6, d))


def outliers(kind: str, rows: np.ndarray) -> np.ndarray:
    honest, spare = rows[:4], rows[4:]
    if kind == "flip":
        return -spare
    if kind == "huge":
        return 20.0 * spare
    if kind == "tiny":
        return 0.01 * spare
    if kind == "alie":  # both send mean + 3 std, coordinate by coordinate
        shifted = honest.mean(axis=0) + 3.0 * honest.std(axis=0)
        return np.stack([shifted, shifted])
    raise AssertionError(kind)


def round_of(g: Params, deltas: np.ndarray, names: list[str]) -> list[Update]:
    """Updates ``global + delta`` in float32 (the counter: 7 + index)."""
    out = []
    for i, (name, d) in enumerate(zip(names, deltas, strict=True)):
        params = {
            "w": (g["w"] + d[:D_W].reshape(40, 50)).astype(np.float32),
            "steps": np.array(7 + i, dtype=np.int64),
            "b": (g["b"] + d[D_W:]).astype(np.float32),
        }
        out.append(Update(name, params, 10))
    return out


def make(*kinds: str) -> tuple[Params, list[Update]]:
    """4 honest updates then 2 of each kind named (``a0``, ``a1``; ``b0``, ``b1``...)."""
    g = global_model()
    honest = honest_deltas()
    rows, names = [honest[:4]], list(HONEST)
    for k, kind in enumerate(kinds):
        rows.append(outliers(kind, honest))
        names += [f"{'ab'[k]}0", f"{'ab'[k]}1"]
    return g, round_of(g, np.vstack(rows)[: len(names)], names)


def actual_deltas(g: Params, updates: list[Update]) -> np.ndarray:
    """The float64 deltas of what was sent (after the float32 cast), ``w`` then ``b``."""
    return np.array([
        np.concatenate([
            u.params["w"].reshape(-1).astype(np.float64) - g["w"].reshape(-1).astype(np.float64),
            u.params["b"].astype(np.float64) - g["b"].astype(np.float64),
        ])
        for u in updates
    ])  # fmt: skip


def expected(
    g: Params,
    updates: list[Update],
    kept: list[str],
    transform: Callable[[np.ndarray], np.ndarray] = lambda x: x,
) -> Params:
    """The global model plus the mean of the kept deltas (after ``transform``), the
    counter the rounded median of the whole round's values."""
    idx = [i for i, u in enumerate(updates) if u.sender in kept]
    mean = transform(actual_deltas(g, updates))[idx].mean(axis=0)
    return {
        "w": (g["w"].astype(np.float64) + mean[:D_W].reshape(40, 50)).astype(np.float32),
        "steps": np.array(np.rint(np.median([7 + i for i in range(len(updates))])), np.int64),
        "b": (g["b"].astype(np.float64) + mean[D_W:]).astype(np.float32),
    }


def assert_same(got: Params, want: Params) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def clip_to_median_norm(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    bound = np.median(norms)
    return x * np.minimum(1.0, bound / norms)[:, None]


def refused(match: str, call: Callable[[], object]) -> None:
    with pytest.raises(FlError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_registered_with_their_settings() -> None:
    assert {"dnc", "signguard", "flame"} <= set(available_strategies())
    dnc = get_strategy("dnc", f=2, iterations=3, dims=50, c=1.5, seed=4)
    assert isinstance(dnc, DnC)
    assert dnc.settings()["dims"] == 50 and dnc.settings()["c"] == 1.5
    assert isinstance(get_strategy("SignGuard", coordinates=0.5), SignGuard)
    assert get_strategy("flame", lam=0).settings()["lam"] == 0.0
    assert get_strategy("flame").selected() is None


# --- DnC ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flip", "huge", "alie"])
def test_dnc_keeps_exactly_the_honest_mean(kind: str) -> None:
    g, ups = make(kind)
    rule = DnC(f=2, dims=50, iterations=5)
    got = rule.aggregate(1, g, ups)
    assert rule.selected() == HONEST
    assert rule.scores is not None and rule.scores.shape == (5, 6)
    # the two outliers have the two highest scores in every iteration
    assert (np.argsort(rule.scores, axis=1)[:, -2:] >= 4).all()
    assert_same(got, expected(g, ups, HONEST))


def test_dnc_draws_repeat_per_seed_and_round() -> None:
    g, ups = make("alie")
    a, b, c, d = (DnC(f=2, dims=20, seed=s) for s in (3, 3, 4, 3))
    assert_same(a.aggregate(2, g, ups), b.aggregate(2, g, ups))
    assert a.scores is not None and b.scores is not None
    np.testing.assert_array_equal(a.scores, b.scores)
    c.aggregate(2, g, ups)
    d.aggregate(3, g, ups)
    assert c.scores is not None and d.scores is not None
    assert not np.array_equal(a.scores, c.scores) and not np.array_equal(a.scores, d.scores)


def test_dnc_with_nothing_in_common_keeps_the_global_model() -> None:
    # one coordinate per draw: coordinate j keeps updates {2j, 2j+1}, so two draws on
    # different coordinates leave nothing in common
    g = {"x": np.zeros(3)}
    cols = np.array([[0, 5, -5], [0, 5, -5], [5, 0, -5], [5, 0, -5], [-5, -5, 0], [-5, -5, 0.0]])
    cols -= cols.mean(axis=0)
    ups = [Update(f"s{i}", {"x": row}, 1) for i, row in enumerate(cols)]
    rule = DnC(f=2, c=2.0, dims=1, iterations=5)
    got = rule.aggregate(1, g, ups)
    assert rule.scores is not None and len({tuple(r) for r in rule.scores.round(9)}) > 1
    assert rule.selected() == []
    assert_same(got, g)


@pytest.mark.parametrize("value", [1e200, 1e300, -1.7e308])
def test_dnc_survives_deltas_too_large_for_its_gram_matrix(value: float) -> None:
    """Found by a hostile review: on a float64 model, one update of 1e200 (finite)
    made DnC's Gram matrix overflow, and LAPACK's LinAlgError (not an FlError) ended
    the aggregator with a traceback. Such an update is now refused on arrival (beyond
    2**100, like every rule), and DnC's scores scale huge deltas by a power of two
    anyway: it scores highest."""
    rng = np.random.default_rng(0)
    deltas = rng.standard_normal((7, 100)) * 0.01
    deltas[6, 0] = value
    scores = _signals.dnc_scores(deltas, dims=100, iterations=3, rng=rng)
    assert np.isfinite(scores).all() and (np.argmax(scores, axis=1) == 6).all()
    g = {"w": np.zeros(100, np.float64)}
    ups = [Update(f"s{i}", {"w": deltas[i].copy()}, 10) for i in range(7)]
    refused(r"^aggregate: the update from 's6': tensor 'w' holds a value beyond ±2\^100$",
            lambda: DnC(f=1, dims=100).aggregate(1, g, ups))  # fmt: skip


def test_dnc_refuses_in_one_line() -> None:
    g, ups = make("flip")
    refused(r"^dnc: needs n - c\*f >= 1 updates to keep \(n=6, c=1.0, f=6\)$",
            lambda: DnC(f=6).aggregate(1, g, ups))  # fmt: skip
    refused(r"^dnc: needs n - c\*f >= 1", lambda: DnC(f=2, c=3.0).aggregate(1, g, ups))
    refused(r"^dnc: f must be an integer >= 0", lambda: DnC(f=-1))
    refused(r"^dnc: iterations must be an integer from 1 to 1000", lambda: DnC(iterations=0))
    refused(r"^dnc: dims must be an integer from 1 to 4194304", lambda: DnC(dims=0))
    refused(r"^dnc: c ", lambda: DnC(c=0))
    refused(r"^dnc: seed must be an integer >= 0", lambda: DnC(seed=-2))
    refused(r"^dnc: the round must be an integer >= 0", lambda: DnC(f=1).aggregate(-1, g, ups))
    counters = {"n": np.array([1, 2])}
    refused(r"^dnc: the model has no floating-point tensor to filter on$",
            lambda: DnC(f=1).aggregate(1, counters, [Update(f"s{i}", {"n": np.array([i, 1])}, 1)
                                                     for i in range(3)]))  # fmt: skip
    refused(r"^aggregate: two updates from 'h0'", lambda: DnC(f=1).aggregate(1, g, ups + ups))


# --- SignGuard ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kinds", "norm_ok", "sign_ok"),
    [
        (("huge", "tiny"), [1, 1, 1, 1, 0, 0, 0, 0], None),
        (("flip",), [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]),
        (("alie",), [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]),
    ],
)
def test_signguard_keeps_the_clipped_honest_mean(
    kinds: tuple[str, ...], norm_ok: list[int], sign_ok: list[int] | None
) -> None:
    g, ups = make(*kinds)
    rule = SignGuard()
    got = rule.aggregate(1, g, ups)
    assert rule.selected() == HONEST
    np.testing.assert_array_equal(rule.passed["norm"], np.array(norm_ok, dtype=bool))
    if sign_ok is not None:
        np.testing.assert_array_equal(rule.passed["sign"], np.array(sign_ok, dtype=bool))
    # every kept delta clipped to the median norm of all the round's deltas
    assert_same(got, expected(g, ups, HONEST, clip_to_median_norm))


def test_signguard_draws_repeat_per_seed() -> None:
    g, ups = make("flip")
    one, two = SignGuard(seed=5), SignGuard(seed=5)
    assert_same(one.aggregate(4, g, ups), two.aggregate(4, g, ups))
    assert one.selected() == two.selected() == HONEST


def test_signguard_refuses_in_one_line() -> None:
    refused(r"^signguard: needs lower < 1 < upper", lambda: SignGuard(lower=1.0))
    refused(r"^signguard: needs lower < 1 < upper", lambda: SignGuard(upper=0.9))
    refused(r"^signguard: lower ", lambda: SignGuard(lower=-0.1))
    refused(r"^signguard: coordinates is a fraction in \(0, 1\]", lambda: SignGuard(coordinates=2))
    refused(r"^signguard: coordinates ", lambda: SignGuard(coordinates=0))
    refused(r"^signguard: seed must be an integer >= 0", lambda: SignGuard(seed=1.5))  # type: ignore[arg-type]
    g, ups = make("flip")
    refused(r"^signguard: the round must be an integer", lambda: SignGuard().aggregate(-3, g, ups))


# --- FLAME ----------------------------------------------------------------------------


def test_flame_admits_the_honest_cluster_and_clips_without_noise() -> None:
    g, ups = make("flip")
    rule = Flame(lam=0)
    got = rule.aggregate(1, g, ups)
    assert rule.selected() == HONEST
    assert_same(got, expected(g, ups, HONEST, clip_to_median_norm))
    # the clustering is sklearn's HDBSCAN on the same cosine distances
    dist = np.maximum(cosine_distances(actual_deltas(g, ups)), 0.0)
    np.fill_diagonal(dist, 0.0)
    want = HDBSCAN(
        min_cluster_size=4, min_samples=1, metric="precomputed", allow_single_cluster=True,
        copy=True,
    ).fit_predict(dist)  # fmt: skip
    assert rule.labels is not None
    np.testing.assert_array_equal(rule.labels, want)
    assert rule.bound == pytest.approx(np.median(np.linalg.norm(actual_deltas(g, ups), axis=1)))


def test_flame_admits_a_huge_update_in_the_honest_direction_but_clips_it() -> None:
    g, ups = make("huge", "flip")
    ups = ups[:5] + ups[6:]  # h0..h3, a0 (huge), b1 (flipped)
    rule = Flame(lam=0)
    got = rule.aggregate(1, g, ups)
    # 5 updates in one direction, clusters of at least 4: HDBSCAN's single cluster may
    # leave out the one that joins last (test_signals.py), as sklearn's own call does
    dist = np.maximum(cosine_distances(actual_deltas(g, ups)), 0.0)
    np.fill_diagonal(dist, 0.0)
    labels = HDBSCAN(
        min_cluster_size=4, min_samples=1, metric="precomputed", allow_single_cluster=True,
        copy=True,
    ).fit_predict(dist)  # fmt: skip
    want = [u.sender for u, label in zip(ups, labels, strict=True) if label == 0]
    assert rule.selected() == want and "a0" in want and "b1" not in want and len(want) >= 4
    assert_same(got, expected(g, ups, want, clip_to_median_norm))


def test_flame_noise_is_seeded_per_round() -> None:
    g, ups = make("flip")
    clean = Flame(lam=0).aggregate(1, g, ups)
    a = Flame(lam=0.01, seed=2).aggregate(1, g, ups)
    b = Flame(lam=0.01, seed=2).aggregate(1, g, ups)
    c = Flame(lam=0.01, seed=2).aggregate(2, g, ups)
    assert_same(a, b)
    assert not np.array_equal(a["w"], c["w"])
    # the noise: N(0, (lam * S)^2) from default_rng([seed, round]) on every float coordinate
    bound = float(np.median(np.linalg.norm(actual_deltas(g, ups), axis=1)))
    noise = np.random.default_rng([2, 1]).normal(0.0, 0.01 * bound, size=D_W + D_B)
    mean = clip_to_median_norm(actual_deltas(g, ups))[:4].mean(axis=0) + noise
    want_w = (g["w"].reshape(-1).astype(np.float64) + mean[:D_W]).astype(np.float32)
    np.testing.assert_array_equal(a["w"].reshape(-1), want_w)
    assert a["steps"] == clean["steps"]  # counters get no noise
    spread = (a["w"].astype(np.float64) - clean["w"].astype(np.float64)).std()
    assert spread == pytest.approx(0.01 * bound, rel=0.2)


def test_flame_refuses_in_one_line() -> None:
    refused(r"^flame: lam ", lambda: Flame(lam=-0.1))
    refused(r"^flame: lam ", lambda: Flame(lam=float("nan")))
    refused(r"^flame: seed must be an integer >= 0", lambda: Flame(seed=-1))
    g, ups = make("flip")
    refused(r"^flame: the round must be an integer", lambda: Flame().aggregate(-1, g, ups))
    bad = {"w": g["w"].astype(np.complex64), "b": g["b"]}
    refused(r"^flame: tensor 'w' has dtype complex64",
            lambda: Flame().aggregate(1, bad, [Update("x", dict(bad), 1)]))  # fmt: skip
