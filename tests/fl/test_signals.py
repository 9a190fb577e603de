"""The update-space primitives of :mod:`secfl.fl.strategies._signals` (shared by DnC,
SignGuard, FLAME and the clone audit's signals) on small hand-computed cases, and
FLAME's clustering against a direct call of scikit-learn's HDBSCAN."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN
from sklearn.metrics.pairwise import cosine_distances

from secfl.errors import FlError
from secfl.fl.strategies import Params, Update
from secfl.fl.strategies._signals import (
    clip_to,
    cosine_matrix,
    delta_matrix,
    dnc_scores,
    flame_clusters,
    kept_model,
    robust_z,
    round_rng,
    sign_statistics,
)


def test_delta_matrix_is_float_tensors_minus_global_in_key_order() -> None:
    g: Params = {
        "b": np.array([1.0, 2.0], dtype=np.float32),
        "count": np.array(3, dtype=np.int64),
        "a": np.array([[0.5], [-0.5]], dtype=np.float64),
    }
    ups = [
        Update("x", {"b": np.array([2.0, 2.0], np.float32), "count": np.array(9),
                     "a": np.array([[0.5], [0.5]])}, 1),
        Update("y", {"b": np.array([1.0, 0.0], np.float32), "count": np.array(0),
                     "a": np.array([[1.5], [-0.5]])}, 1),
    ]  # fmt: skip
    got = delta_matrix(g, ups)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [[1.0, 0.0, 0.0, 1.0], [0.0, -2.0, 1.0, 0.0]])
    assert delta_matrix({"c": np.array([1], np.int32)}, ups[:1]).shape == (1, 0)


def test_delta_matrix_refuses_a_delta_that_overflows_float64() -> None:
    g = {"w": np.array([-1e308])}
    with pytest.raises(FlError, match=r"^delta_matrix: a delta is not finite in float64$"):
        delta_matrix(g, [Update("x", {"w": np.array([1e308])}, 1)])


def test_robust_z_by_hand() -> None:
    # median 3, absolute deviations [2, 1, 0, 1, 97] -> MAD 1, scale 1.4826
    got = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    np.testing.assert_allclose(got, np.array([-2.0, -1.0, 0.0, 1.0, 97.0]) / 1.4826)
    # NaN stays NaN and is left out of the median and MAD: same as without it
    got = robust_z(np.array([1.0, np.nan, 2.0, 3.0, 4.0, 100.0]))
    assert np.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2, 3, 4, 5]], np.array([-2.0, -1, 0, 1, 97]) / 1.4826)
    # MAD 0: zeros without a floor, the floor as the scale with one
    np.testing.assert_array_equal(robust_z(np.array([5.0, 5.0, 5.0])), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(robust_z(np.array([0.0, 0.0, 0.0, 1.0])), [0, 0, 0, 0])
    np.testing.assert_array_equal(robust_z(np.array([0.0, 0, 0, 1]), floor=0.5), [0, 0, 0, 2])
    # the floor does not lower a larger scale
    np.testing.assert_allclose(robust_z(np.array([1.0, 2, 3, 4, 100]), floor=0.1)[4], 97 / 1.4826)
    assert np.isnan(robust_z(np.array([np.nan, np.nan]))).all()


def test_cosine_matrix_by_hand_with_a_zero_row() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    r = 1 / np.sqrt(2)
    want = np.array([
        [1, 0, -1, 0, r],
        [0, 1, 0, 0, r],
        [-1, 0, 1, 0, -r],
        [0, 0, 0, 1, 0],
        [r, r, -r, 0, 1],
    ])  # fmt: skip
    np.testing.assert_allclose(cosine_matrix(x), want, atol=1e-15)


def test_sign_statistics_by_hand_and_on_a_subset() -> None:
    x = np.array([[1.0, 0.0, -1.0, 2.0], [0.0, 0.0, 0.0, -5.0]])
    np.testing.assert_array_equal(sign_statistics(x), [[0.5, 0.25, 0.25], [0.0, 0.75, 0.25]])
    np.testing.assert_array_equal(
        sign_statistics(x, coordinates=np.array([0, 3])), [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]
    )
    with pytest.raises(FlError, match=r"^sign_statistics: no coordinate to count signs on$"):
        sign_statistics(x, coordinates=np.array([], dtype=int))


def test_dnc_scores_by_hand() -> None:
    # mean 0; the spread is 8 along e1 and 2 along e2: v = +-e1, scores x_1 ** 2
    x = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    got = dnc_scores(x, dims=10, iterations=3, rng=np.random.default_rng(0))
    np.testing.assert_allclose(got, np.tile([4.0, 4.0, 0.0, 0.0], (3, 1)), atol=1e-12)
    # one shifted row: mean [0.75, 0], centred first coordinates [-0.75]*3 + [2.25]
    y = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [3.0, 1.0]])
    got = dnc_scores(y, dims=2, iterations=1, rng=np.random.default_rng(0))
    np.testing.assert_allclose(got, [[0.5625, 0.5625, 0.5625, 5.0625]], atol=1e-12)


def test_dnc_scores_equal_the_projections_on_numpys_top_singular_vector() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(9, 40)) + np.outer(rng.normal(size=9), rng.normal(size=40))
    got = dnc_scores(x, dims=40, iterations=1, rng=np.random.default_rng(0))[0]
    centred = x - x.mean(axis=0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    np.testing.assert_allclose(got, (centred @ v) ** 2, rtol=1e-9, atol=1e-12)


def test_dnc_scores_sample_coordinates_without_replacement() -> None:
    # only coordinate 0 varies: a draw of 1 coordinate scores [.5625]*3 + [5.0625]
    # when it draws coordinate 0, zeros otherwise; both must occur over 40 draws
    y = np.zeros((4, 3))
    y[3, 0] = 3.0
    got = dnc_scores(y, dims=1, iterations=40, rng=np.random.default_rng(1))
    hit = np.isclose(got, [0.5625, 0.5625, 0.5625, 5.0625]).all(axis=1)
    miss = np.isclose(got, 0.0).all(axis=1)
    assert (hit | miss).all() and hit.any() and miss.any()
    # the same generator state, the same scores
    again = dnc_scores(y, dims=1, iterations=40, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(got, again)
    with pytest.raises(FlError, match=r"^dnc_scores: dims and iterations must be >= 1"):
        dnc_scores(y, dims=0, iterations=1, rng=np.random.default_rng(0))


def test_flame_clusters_match_sklearn_hdbscan_on_the_same_distances() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=200)
    honest = base + 0.3 * rng.normal(size=(7, 200))
    bad = -base + 0.3 * rng.normal(size=(3, 200))
    x = np.vstack([honest, bad])
    got = flame_clusters(x)
    dist = np.maximum(cosine_distances(x), 0.0)
    np.fill_diagonal(dist, 0.0)
    want = HDBSCAN(
        min_cluster_size=6,
        min_samples=1,
        metric="precomputed",
        allow_single_cluster=True,
        copy=True,
    ).fit_predict(dist)
    np.testing.assert_array_equal(got, want)
    # the 3 flipped rows are outliers; the one cluster holds only honest rows, at least
    # min_cluster_size of them. In single-cluster mode HDBSCAN also leaves out the
    # honest rows that peel off while the rest still has min_cluster_size rows: here
    # the farthest of the 7 (the one whose nearest honest neighbour is farthest)
    np.testing.assert_array_equal(got[7:], [-1, -1, -1])
    cluster = np.flatnonzero(got >= 0)
    assert set(got[cluster]) == {0} and set(cluster) <= set(range(7)) and cluster.size >= 6
    nearest = np.sort(dist[:7, :7], axis=1)[:, 1]
    assert set(range(7)) - set(cluster) <= {int(np.argmax(nearest))}


def test_flame_clusters_of_one_update_and_of_zero_rows() -> None:
    np.testing.assert_array_equal(flame_clusters(np.ones((1, 3))), [0])
    x = np.zeros((3, 4))  # no direction: cosine 0 between rows, distance 1 everywhere
    labels = flame_clusters(x)
    assert labels.shape == (3,)


def test_clip_to_and_round_rng() -> None:
    x = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    np.testing.assert_allclose(clip_to(x, 1.0), [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    np.testing.assert_array_equal(clip_to(x, 0.0), np.zeros((3, 2)))
    a = round_rng("r", 7, 3).normal(size=4)
    np.testing.assert_array_equal(a, np.random.default_rng([7, 3]).normal(size=4))
    with pytest.raises(FlError, match=r"^r: the round must be an integer >= 0 to seed it"):
        round_rng("r", 7, -1)


def test_kept_model_splits_the_delta_and_rounds_counters() -> None:
    g: Params = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(4, np.int64),
         "b": np.array([0.5], np.float64)}  # fmt: skip
    ups = [Update("x", {"w": g["w"], "n": np.array(5), "b": g["b"]}, 1),
           Update("y", {"w": g["w"], "n": np.array(8), "b": g["b"]}, 1)]  # fmt: skip
    out = kept_model("r", g, ups[:1], np.array([0.5, -1.0, 2.0]), ups)
    assert list(out) == ["w", "n", "b"]
    np.testing.assert_array_equal(out["w"], np.array([1.5, 1.0], np.float32))
    assert out["w"].dtype == np.float32 and out["n"].dtype == np.int64
    assert int(out["n"]) == 6  # the whole round's median: rint(6.5) = 6 (half to even)
    np.testing.assert_array_equal(out["b"], [2.5])
    assert int(kept_model("r", g, [], np.zeros(3), ups)["n"]) == 4  # nobody kept: global
    with pytest.raises(FlError, match=r"^r: the aggregated delta has 2 values, not 3$"):
        kept_model("r", g, ups, np.zeros(2), ups)


def test_a_round_too_large_to_hold_in_float64_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from secfl.fl.strategies import _signals

    glob = {"w": np.zeros(1000, dtype=np.float32)}
    ups = [Update(f"s{i}", {"w": np.ones(1000, dtype=np.float32)}, 1) for i in range(4)]
    assert _signals.delta_matrix(glob, ups).shape == (4, 1000)
    monkeypatch.setattr(_signals, "MAX_MATRIX_BYTES", 2 * 8 * 4 * 1000 - 1)
    with pytest.raises(FlError, match=r"^delta_matrix: 4 updates .* use clone-audit") as info:
        _signals.delta_matrix(glob, ups)
    assert "\n" not in str(info.value)
