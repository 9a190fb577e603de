"""The clone audit's cheaper clones and scoring (``_clone_scoring``): clone models equal
to the base rule's aggregate of each subset, per-example losses that average to the
whole-set score, and a validation subsample whose decisions are the whole set's on
real training rounds."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from secfl.errors import FlError
from secfl.eval.simulation import DataCache, Scenario
from secfl.fl._strategy_wiring import wire_strategy
from secfl.fl._tensors import load_arrays, state_dict_arrays
from secfl.fl.strategies import CloneAudit, Update, get_strategy
from secfl.fl.strategies._clone_scoring import ScoreBook, clone_models, draw_members, settle
from secfl.tasks._registry import get_task


def _random_updates(rng: np.random.Generator, n: int) -> tuple[dict[str, np.ndarray], list[Update]]:
    glob = {"w": rng.normal(size=(7, 5)).astype(np.float32), "b": np.zeros(5, np.float32)}
    updates = [
        Update(
            f"s{i}",
            {
                k: (v + rng.normal(scale=1 + i, size=v.shape)).astype(np.float32)
                for k, v in glob.items()
            },
            int(rng.integers(1, 500)),
        )
        for i in range(n)
    ]
    return glob, updates


@pytest.mark.parametrize("rule", ["fedavg", "fedprox", "median", "trimmed-mean"])
def test_every_clone_is_the_base_rules_aggregate_of_its_members(rule: str) -> None:
    rng = np.random.default_rng(0)
    glob, updates = _random_updates(rng, 9)
    base = get_strategy(rule)
    members = draw_members(np.random.default_rng(1), 12, 9, 3)
    assert (members.sum(axis=1) == 3).all()
    models = clone_models(base, 1, glob, updates, members)
    assert len(models) == 12
    for row, model in zip(members, models, strict=True):
        expect = base.aggregate(1, glob, [u for u, m in zip(updates, row, strict=True) if m])
        for name, ref in expect.items():
            assert model[name].dtype == ref.dtype and model[name].shape == ref.shape
            # FedAvg's exact sum rounds each term to a fixed-point grid; the product does not
            np.testing.assert_allclose(model[name], ref, rtol=1e-6, atol=1e-6)


def test_a_nan_update_gets_the_base_rules_own_refusal() -> None:
    rng = np.random.default_rng(2)
    glob, updates = _random_updates(rng, 5)
    updates[2].params["w"][0, 0] = np.nan
    members = np.ones((2, 5), dtype=bool)
    with pytest.raises(FlError, match="NaN or Inf"):
        clone_models(get_strategy("fedavg"), 1, glob, updates, members)


@pytest.fixture(scope="module")
def digits() -> Iterator[tuple[object, object, list[object]]]:
    task = get_task("digits")
    shards, validation, _ = DataCache().get(Scenario(task="digits", clients=10), task)
    yield task, validation, shards


def test_per_example_losses_average_to_the_whole_set_score(digits: tuple) -> None:
    task, validation, _ = digits
    audit = CloneAudit()
    wire_strategy(audit, task, validation, {"epochs": 1}, 0)
    assert audit.score is not None
    params = state_dict_arrays(task.build_model(3))
    losses = audit.score.losses(params, np.arange(len(validation)))  # type: ignore[attr-defined]
    assert losses.shape == (len(validation),) and (losses > 0).all()
    assert math.isclose(-math.log(losses.mean()), audit.score(params), rel_tol=1e-5)
    wrong = {k: v.astype(np.float64) for k, v in params.items()}
    with pytest.raises(FlError, match="dtype"):
        audit.score.losses(wrong, np.arange(3))  # type: ignore[attr-defined]


def _round_updates(task: object, shards: list, glob: dict, r: int) -> list[Update]:
    """Real local training from ``glob``; site-01 flips the sign of its update."""
    model = task.build_model(0)  # type: ignore[attr-defined]
    updates = []
    for i, shard in enumerate(shards):
        load_arrays(model, glob)
        task.train(model, shard, {"epochs": 2, "seed": 100 * r + i})  # type: ignore[attr-defined]
        new = state_dict_arrays(model)
        if i == 0:
            new = {k: (glob[k] - 4 * (new[k] - glob[k])).astype(v.dtype) for k, v in new.items()}
        updates.append(Update(f"site-{i + 1:02d}", new, len(shard)))
    return updates


@pytest.mark.timeout(300)
def test_the_subsample_decides_as_the_whole_validation_set_on_real_rounds(digits: tuple) -> None:
    """Digits, 10 sites, a sign flipper; two audits with the same seed see the same
    updates: one scores every clone on the whole validation set, the other starts
    from 32 examples. Who is left out and whether the guard fires are the same in
    every round, the subsample stops early in some, and the suspicion it carries (an
    estimate on 32 to 179 examples) stays within one threshold of the whole set's."""
    task, validation, shards = digits
    whole = CloneAudit(validation_sample=None, seed=5)
    sampled = CloneAudit(validation_sample=32, seed=5)
    for audit in (whole, sampled):
        wire_strategy(audit, task, validation, {"epochs": 2}, 0)
    glob = state_dict_arrays(task.build_model(0))
    early = 0
    for r in range(1, 6):
        updates = _round_updates(task, shards, glob, r)
        expect = whole.aggregate(r, glob, updates)
        got = sampled.aggregate(r, glob, updates)
        a, b = whole.history[-1], sampled.history[-1]
        assert b.excluded == a.excluded and b.fell_back == a.fell_back
        assert a.extra["validation_rows"] == len(validation)
        early += b.extra["validation_rows"] < len(validation)
        for n in a.suspicion:
            assert abs(a.suspicion[n] - b.suspicion[n]) < whole.threshold
        for k in expect:  # the same model, up to float rounding
            np.testing.assert_allclose(got[k], expect[k], rtol=1e-4, atol=1e-5)
        glob = expect
    assert early >= 1  # the rule did stop before the whole set
    assert "site-01" in whole.history[-1].excluded


def test_the_subsample_is_deterministic_per_seed(digits: tuple) -> None:
    task, validation, shards = digits
    glob = state_dict_arrays(task.build_model(0))
    updates = _round_updates(task, shards, glob, 1)
    runs = []
    for _ in range(2):
        audit = CloneAudit(validation_sample=16, seed=9)
        wire_strategy(audit, task, validation, {"epochs": 2}, 0)
        runs.append((audit.aggregate(1, glob, updates), audit.history[-1]))
    (m1, h1), (m2, h2) = runs
    assert h1.scores == h2.scores and h1.extra == h2.extra and h1.fell_back == h2.fell_back
    assert all(np.array_equal(m1[k], m2[k]) for k in m1)


def _trained_and_untrained(digits: tuple) -> tuple[Any, Any, Any, Any, float]:
    """The audit's scorer, a model trained on one shard, an untrained one, and the gap
    in utility between them on the whole validation set."""
    task, validation, shards = digits
    audit = CloneAudit()
    wire_strategy(audit, task, validation, {"epochs": 1}, 0)
    score = audit.score
    assert score is not None
    untrained = state_dict_arrays(task.build_model(0))
    model = task.build_model(0)
    task.train(model, shards[0], {"epochs": 5, "seed": 1})
    trained = state_dict_arrays(model)
    return score, validation, trained, untrained, score(trained) - score(untrained)


def test_settle_adds_rows_only_while_the_decision_is_in_doubt(digits: tuple) -> None:
    """A trained and an untrained model are told apart on the first rows; whether their
    utilities differ by more than the whole set's difference less a hair is in doubt
    on any subsample, and needs every row (where it holds)."""
    score, validation, trained, untrained, gap = _trained_and_untrained(digits)
    assert gap > 0.5

    def better(u: np.ndarray) -> bool:
        return bool(u[0] > u[1])

    def beyond_the_gap(u: np.ndarray) -> bool:
        return bool(u[0] - u[1] > gap - 1e-6)

    book = ScoreBook(score, np.random.default_rng(0), 16)
    pair = [book.add(trained), book.add(untrained)]
    assert better(settle(book, pair, better)) and book.rows(pair) == 16
    assert beyond_the_gap(settle(book, pair, beyond_the_gap))
    assert book.rows(pair) == len(validation)


def test_a_capped_book_never_scores_more_rows_than_its_cap(digits: tuple) -> None:
    """The doubt that needs every row (as above) stops at the cap instead."""
    score, validation, trained, untrained, gap = _trained_and_untrained(digits)
    book = ScoreBook(score, np.random.default_rng(0), 16, cap=48)
    pair = [book.add(trained), book.add(untrained)]
    settle(book, pair, lambda u: bool(u[0] - u[1] > gap - 1e-6))
    assert book.rows(pair) == 48 < len(validation)


def test_the_validation_sample_setting_is_checked_and_reported() -> None:
    assert CloneAudit().settings()["validation_sample"] == 128
    assert CloneAudit().settings()["validation_cap"] == 384
    assert CloneAudit(validation_cap=None).settings()["validation_cap"] is None
    assert CloneAudit(validation_cap=384).settings()["validation_cap"] == 384
    with pytest.raises(FlError, match="validation_cap"):
        CloneAudit(validation_cap=0)
    assert (
        get_strategy("clone-audit", validation_sample=None).settings()["validation_sample"] is None
    )
    for bad in (0, -3, 2.5, "all", True):
        with pytest.raises(FlError, match="validation_sample"):
            CloneAudit(validation_sample=bad)  # type: ignore[arg-type]


def test_the_guard_with_every_clone_holding_an_excluded_site_keeps_the_aggregate(
    digits: tuple,
) -> None:
    """Half of the sites excluded on their record and clones of three quarters of the
    round: every clone holds one of them, so the guard has no clone to fall back on
    and the round keeps its aggregate (a grid run crashed here, on the real scorer:
    no clone left to score)."""
    task, validation, _ = digits
    glob = state_dict_arrays(task.build_model(0))
    rng = np.random.default_rng(4)
    names = [f"s{i}" for i in range(8)]
    updates = [
        Update(
            n, {k: (v + rng.normal(0, 0.01, v.shape)).astype(v.dtype) for k, v in glob.items()}, 10
        )
        for n in names
    ]
    # a sample, not the whole set (digits' 179 rows are scored whole from 128)
    audit = CloneAudit(clones=5, fraction=0.75, seed=3, signals=[], validation_sample=16)
    wire_strategy(audit, task, validation, {"epochs": 1}, 0)
    audit.load_state({"suspicion": {n: 1e7 for n in names[4:]}})
    new = audit.aggregate(1, glob, updates)
    assert audit.excluded == names[4:] and not audit.history[0].fell_back
    kept = get_strategy("fedavg").aggregate(1, glob, updates[:4])
    assert all(np.array_equal(new[k], kept[k]) for k in glob)
