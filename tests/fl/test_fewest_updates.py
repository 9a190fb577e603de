"""Every rule says how many updates a round needs (``fewest_updates``), and means it.

A hostile review found that the clone audit over Krum failed every round below 20
sites (its clones, a quarter of the round, were too small for Krum's 2f + 3), and over
Bulyan even at 20; nothing said so until the rounds failed. Now each rule's minimum is
checked against the policy before anyone signs it (tests/cli/test_policy_federation.py),
the audit's clones are never smaller than its base rule needs, and a round whose
exclusions leave too few for the base rule takes the kept updates' median.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from secfl.errors import FlError
from secfl.fl.strategies import Update, available_strategies, get_strategy
from secfl.fl.strategies._base import Params, Strategy

SETTINGS: dict[str, list[dict[str, Any]]] = {
    "krum": [{"f": 0}, {"f": 1}, {"f": 3}],
    "centered-clipping": [{"tau": 1.0}],
    "multi-krum": [{"f": 1}, {"f": 1, "m": 9}],
    "bulyan": [{"f": 1}, {"f": 2}],
    "dnc": [{"f": 1}, {"f": 2, "c": 1.5}, {"f": 1, "c": 0.5}],
    "clone-audit": [{}, {"base": "krum"}, {"base": "bulyan", "base_settings": {"f": 1}}],
}


def model() -> Params:
    return {"w": np.zeros(16, dtype=np.float32), "steps": np.array(3, dtype=np.int64)}


def updates(n: int, seed: int = 0) -> list[Update]:
    rng = np.random.default_rng(seed)
    return [
        Update(
            f"s{i:02d}",
            {"w": rng.normal(0, 0.1, 16).astype(np.float32), "steps": np.array(3 + i)},
            10,
        )
        for i in range(n)
    ]


def build(name: str, settings: dict[str, Any]) -> Strategy:
    strategy = get_strategy(name, **settings)
    if hasattr(strategy, "score"):  # the clone audit: a validation utility
        strategy.score = lambda params: -float(np.sum(np.square(params["w"], dtype=np.float64)))
    if hasattr(strategy, "root_update"):  # FLTrust: a root update
        strategy.root_update = lambda round, params, samples: {
            k: v + np.ones_like(v) * 0.01 if v.dtype.kind == "f" else v.copy()
            for k, v in params.items()
        }
    return strategy


CASES = [
    (name, settings) for name in available_strategies() for settings in SETTINGS.get(name, [{}])
]


@pytest.mark.parametrize(("name", "settings"), CASES, ids=[f"{n}{s}" for n, s in CASES])
def test_a_round_of_the_fewest_updates_aggregates_and_one_fewer_is_refused(
    name: str, settings: dict[str, Any]
) -> None:
    strategy = build(name, settings)
    fewest = strategy.fewest_updates()
    result = strategy.aggregate(1, model(), updates(fewest))
    assert set(result) == {"w", "steps"} and np.isfinite(result["w"]).all()
    if fewest > 1:
        with pytest.raises(FlError, match=r"needs|too small"):
            build(name, settings).aggregate(1, model(), updates(fewest - 1))


def test_the_clone_audit_over_krum_runs_small_rounds() -> None:
    """Six sites, Krum f=1 (5 a round): the clones hold 5, not a quarter of 6 (2), and
    the rounds run. On the old code every such round failed ("needs n > 2f + 2")."""
    audit = build("clone-audit", {"base": "krum", "clones": 8})
    assert audit.fewest_updates() == 6
    for round in range(1, 4):
        out = audit.aggregate(round, model(), updates(6, seed=round))
        assert np.isfinite(out["w"]).all()
    with pytest.raises(FlError, match=r"^clone-audit: a round of 5 updates is too small: "):
        audit.aggregate(4, model(), updates(5))


def test_exclusions_that_leave_too_few_for_the_base_rule_take_the_median() -> None:
    """Two sites pull the model away and are left out: the four kept are too few for
    Krum (5), so the round takes their coordinate-wise median instead of failing."""
    audit = build("clone-audit", {"base": "krum", "clones": 12})
    honest = updates(4, seed=7)
    hostile = [
        Update(f"x{i}", {"w": np.full(16, 50.0, dtype=np.float32), "steps": np.array(3)}, 10)
        for i in range(2)
    ]
    out = audit.aggregate(1, model(), [*honest, *hostile])
    record = audit.history[-1]
    assert record.excluded == ["x0", "x1"]
    assert record.extra["kept_rule"] == "median" and record.to_json()["kept_rule"] == "median"
    expected = np.median(np.stack([u.params["w"] for u in honest]).astype(np.float64), axis=0)
    np.testing.assert_allclose(out["w"], expected.astype(np.float32), rtol=0, atol=1e-6)


def test_dnc_fewest_updates_is_the_smallest_round_it_accepts() -> None:
    """The smallest n with floor(n - c*f) >= 1, as DnC's aggregate computes it, over a
    grid of settings; and a c*f beyond any federation is refused at once (the second
    review: c = 1e30 looped for ever in `secfl policy validate`, 1e308 overflowed)."""
    for f in range(0, 5):
        for c in (0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.3, 7.0, 1 / 3):
            n = get_strategy("dnc", f=f, c=c).fewest_updates()
            assert math.floor(n - c * f) >= 1 and (n == 1 or math.floor(n - 1 - c * f) < 1)
    for c in (1e30, 1e308):
        with pytest.raises(FlError, match=r"^dnc: c \* f is .*; it filters at most 1000000"):
            get_strategy("dnc", f=2, c=c)


def test_two_kept_of_a_krum_round_keep_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Second review: the median of two kept updates is their mean, which one of them
    moves at will; with fewer than three kept the round keeps the global model."""
    from secfl.fl.strategies._audit_round import AuditRound

    audit = build("clone-audit", {"base": "krum", "clones": 8})
    ups = updates(6, seed=3)
    excluded = [u.sender for u in ups[2:]]

    def stub(round: int, global_params: Params, round_updates: Any) -> AuditRound:
        return AuditRound(round, {}, {}, excluded, [], 0.0)

    monkeypatch.setattr(audit, "audit", stub)
    monkeypatch.setattr(audit, "_guarded", lambda r, g, u, new, result: new)
    out = audit.aggregate(1, model(), ups)
    np.testing.assert_array_equal(out["w"], model()["w"])
    assert int(out["steps"]) == 3
