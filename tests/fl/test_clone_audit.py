"""The clone-and-sample audit: on real training (digits, the simulation engine that
runs the production rules) and on hand-made updates whose effect is known."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from secfl.errors import FlError
from secfl.eval.simulation import DataCache, Scenario, simulate
from secfl.fl.strategies import CloneAudit, Update, get_strategy


@pytest.fixture(scope="module")
def data() -> Iterator[DataCache]:
    yield DataCache()


def test_a_single_sign_flipper_among_ten_is_caught_within_three_rounds(data: DataCache) -> None:
    s = Scenario(task="digits", clients=10, rounds=3, malicious=0.1, attack="sign-flip",
                 defence="clone-audit", epochs=3)  # fmt: skip
    out = simulate(s, data)
    assert len(out.malicious) == 1
    caught = [r["round"] for r in out.rounds if out.malicious[0] in r["excluded"]]
    assert caught and caught[0] <= 3
    assert all(r["false_positive_rate"] == 0 for r in out.rounds)
    # leaving it out helps: better than plain FedAvg under the same attack
    plain = simulate(Scenario(task="digits", clients=10, rounds=3, malicious=0.1,
                              attack="sign-flip", epochs=3), data)  # fmt: skip
    assert out.final["test_accuracy"] > plain.final["test_accuracy"]


def test_without_attackers_false_positives_stay_under_five_percent(data: DataCache) -> None:
    """20 sites (the evaluation's federation size), 20 rounds. With 10 sites and a
    well-converged model the rate is higher (see docs/results/README.md)."""
    s = Scenario(task="digits", clients=20, rounds=20, defence="clone-audit", epochs=3)
    out = simulate(s, data)
    rates = [r["false_positive_rate"] for r in out.rounds]
    assert len(rates) == 20
    assert sum(rates) / len(rates) < 0.05
    assert all(r["audit_seconds"] > 0 for r in out.rounds)


def _updates(values: dict[str, float]) -> list[Update]:
    return [Update(n, {"w": np.full(3, v, dtype=np.float32)}, 10) for n, v in values.items()]


def test_the_participant_that_pulls_the_model_away_is_excluded_and_state_survives() -> None:
    audit = CloneAudit(clones=30, fraction=0.5, threshold=2.0, seed=1)
    audit.score = lambda params: -float(np.abs(params["w"] - 1.0).sum())  # the truth is 1
    honest = {f"h{i}": 1.0 + 0.01 * i for i in range(6)}
    glob = {"w": np.zeros(3, dtype=np.float32)}
    new = audit.aggregate(1, glob, _updates({**honest, "bad": -50.0}))
    assert audit.excluded == ["bad"]
    assert new["w"].dtype == np.float32
    assert np.allclose(new["w"], np.mean(list(honest.values())), atol=1e-6)
    assert audit.history[0].scores["bad"] > 2.0
    assert max(audit.history[0].scores[n] for n in honest) < 2.0  # robust z: noise

    again = get_strategy("clone-audit", clones=30, fraction=0.5, threshold=2.0, seed=1)
    again.load_state(audit.state())
    assert again.suspicion == audit.suspicion


def test_the_audit_refuses_to_run_blind_and_checks_its_settings() -> None:
    audit = CloneAudit()
    with pytest.raises(FlError, match="no validation data"):
        audit.aggregate(1, {"w": np.zeros(3, np.float32)}, _updates({"a": 1.0, "b": 2.0}))
    for bad, match in (
        ({"clones": 1}, "clones"),
        ({"fraction": 1.0}, "fraction"),
        ({"decay": 1.0}, "decay"),
        ({"base": "clone-audit"}, "base rule"),
        ({"base": "nonesuch"}, "unknown strategy"),
    ):
        with pytest.raises(FlError, match=match):
            CloneAudit(**bad)  # type: ignore[arg-type]


def test_a_model_that_scores_nan_counts_as_the_worst() -> None:
    audit = CloneAudit(clones=30, seed=2)
    audit.score = lambda p: float("nan") if p["w"][0] < 0 else -float(np.abs(p["w"] - 1).sum())
    honest = {f"h{i}": 1.0 + 0.05 * i for i in range(7)}
    audit.aggregate(1, {"w": np.zeros(3, dtype=np.float32)}, _updates({**honest, "nan": -1e6}))
    assert audit.excluded == ["nan"]


def test_small_persistent_honest_differences_do_not_add_up_to_exclusion() -> None:
    """Sites whose data differs a little (the same small offsets every round) are not
    attackers: the tolerance floor keeps their scores small, round after round.
    Without it (tolerance 0) the same differences are blown up to exclusions."""
    honest = {f"h{i}": 1.0 + 0.002 * (i - 5) for i in range(11)}
    glob = {"w": np.zeros(3, dtype=np.float32)}

    def excluded(tolerance: float) -> set[str]:
        audit = CloneAudit(clones=30, tolerance=tolerance, seed=3)
        audit.score = lambda p: -float(np.log(0.5 + np.abs(p["w"] - 1.0).sum()))
        seen: set[str] = set()
        for r in range(1, 21):
            audit.aggregate(r, glob, _updates(honest))
            seen |= set(audit.excluded)
        return seen

    assert excluded(0.02) == set()
    assert excluded(0.0)  # the floor is what keeps them in


def test_the_guard_commits_the_best_clone_when_the_aggregate_is_wrecked() -> None:
    """A model-replacement update that suspicion has not excluded yet (the threshold is
    out of reach here) wrecks the FedAvg aggregate; the guard sees the aggregate score
    far below the best clone and commits that clone, which holds no attacker. Without
    the guard the wrecked aggregate is committed."""
    honest = {f"h{i}": 1.0 + 0.01 * i for i in range(11)}
    updates = _updates({**honest, "scaler": 400.0})
    glob = {"w": np.zeros(3, dtype=np.float32)}

    def run(guard: float | None) -> tuple[CloneAudit, dict[str, np.ndarray]]:
        audit = CloneAudit(clones=30, threshold=1e6, guard=guard, seed=4)
        audit.score = lambda p: -float(np.log(0.5 + np.abs(p["w"] - 1.0).sum()))
        return audit, audit.aggregate(1, glob, updates)

    audit, guarded = run(0.1)
    assert audit.excluded == [] and audit.history[0].fell_back
    assert np.all(np.abs(guarded["w"] - 1.0) < 0.2)  # an honest clone's average
    plain_audit, plain = run(None)
    assert not plain_audit.history[0].fell_back
    assert np.all(plain["w"] > 30)  # 400 / 12: wrecked
    assert audit.settings()["guard"] == 0.1


def test_the_guard_leaves_honest_rounds_alone() -> None:
    """With everyone honest the whole aggregate is at least as good as a quarter of it,
    up to noise far below the guard's relative margin: over 20 rounds of differing
    sites (a loss of about 2, as cross-entropy early in training) it never fires."""
    rng = np.random.default_rng(5)
    audit = CloneAudit(clones=30, seed=6)
    audit.score = lambda p: -float(np.log(2.0 + np.abs(p["w"] - 1.0).sum()))
    glob = {"w": np.zeros(3, dtype=np.float32)}
    for r in range(1, 21):
        honest = {f"h{i}": float(1.0 + rng.normal(0, 0.05)) for i in range(20)}
        audit.aggregate(r, glob, _updates(honest))
    assert not any(h.fell_back for h in audit.history)
    with pytest.raises(FlError, match="guard"):
        CloneAudit(guard=-1.0)


def test_the_guard_never_lets_an_excluded_participant_back_in() -> None:
    """``bad`` is excluded on its past record (its suspicion is carried in a checkpoint)
    though this round its update is the best of all, so the best clone holds it; a
    scaler not excluded wrecks the aggregate. The guard commits the best clone
    without excluded participants: only honest updates (w between 1.0 and 1.1)."""
    honest = {f"h{i}": 1.0 + 0.01 * i for i in range(11)}
    audit = CloneAudit(clones=30, threshold=1e6, seed=7)
    audit.load_state({"suspicion": {"bad": 1e7}})
    audit.score = lambda p: -float(np.log(2.0 + np.abs(p["w"] - 0.5).sum()))  # truth: 0.5
    glob = {"w": np.zeros(3, dtype=np.float32)}
    new = audit.aggregate(1, glob, _updates({**honest, "bad": 0.5, "scaler": 400.0}))
    assert audit.excluded == ["bad"] and audit.history[0].fell_back
    # a clone holding bad averages at most (0.5 + 1.1 + 1.1) / 3 = 0.9 and scores best
    assert max(audit.history[0].clone_utilities) > -np.log(2.0 + 3 * 0.4) - 1e-9
    assert np.all(new["w"] >= 1.0 - 1e-6) and np.all(new["w"] <= 1.1 + 1e-6)


def test_every_update_is_checked_before_the_detector_reads_it() -> None:
    """Found by a hostile review: the audit read updates it never checked; a tensor of
    another shape (which Flower lets through: it checks names, not shapes) ended the
    ServerApp with a broadcasting traceback."""
    audit = CloneAudit(clones=30, fraction=0.5, threshold=2.0, seed=1)
    audit.score = lambda params: 0.0
    updates = _updates({"a": 1.0, "b": 2.0, "c": 3.0})
    updates.append(Update("d", {"w": np.zeros(13, np.float32)}, 10))
    with pytest.raises(FlError, match=r"^aggregate: the update from 'd': tensor 'w' has shape"):
        audit.aggregate(1, {"w": np.zeros(3, np.float32)}, updates)
