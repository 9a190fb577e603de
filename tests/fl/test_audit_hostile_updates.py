"""What a collaborator's updates can do to the clone audit and the rules it wraps
(found by a hostile review): a far value in a coordinate no score sees must not wipe
the audited model, an excluded attacker must not steer a rule with state through the
clones, and the coordinates the detector looks at must not be known to the sites.
The audit and the rules are called as the aggregator calls them (whole rounds,
canonical order: sorted by sender)."""

from __future__ import annotations

import math

import numpy as np

from secfl.fl.strategies import CloneAudit, Update, get_strategy
from secfl.fl.strategies._detection import Detector
from secfl.fl.strategies._secret import keep_secret


def _detector_sample(seed: int, round: int, total: int, dims: int) -> np.ndarray:
    """The coordinates the audit's detector looks at in ``round``: a collaborator that
    knows the policy (it parses ``federation.strategy_settings``, seed included) draws
    them exactly as the aggregator does (``sampled_deltas``)."""
    rng = np.random.default_rng([seed, round, 53])
    return np.sort(rng.choice(total, size=dims, replace=False))


# --- one value far out in one coordinate wiped the audited FedAvg model ----------------


def test_one_far_value_in_a_dead_coordinate_does_not_wipe_the_audited_fedavg_model() -> None:
    """The clone audit over FedAvg (its default base) commits the exact fixed-point
    sum, whose grid is per tensor and, for a round held whole, widened to the round's
    largest value. One attacker puts 2**64 in one coordinate that does not affect the
    validation loss (a weight of an always-zero input, a dead unit), outside the
    coordinates the detector samples this round (predictable from the policy's seed).
    The clones (float64 products) are unaffected, so the attacker is not suspected;
    but the committed model's every other coordinate of that tensor is rounded to 0,
    and the huge value, now in the global model, keeps the grid that coarse: the next
    round, all honest, is wiped again."""
    rng = np.random.default_rng(0)
    d = (1 << 18) + 4096  # a model just above the detector's 2**18 sampled coordinates
    target = rng.normal(0, 0.05, d).astype(np.float32)
    glob = {"w": (target + rng.normal(0, 0.02, d)).astype(np.float32)}

    def score(p: dict[str, np.ndarray]) -> float:  # coordinate `dead` is never looked at
        w = p["w"].astype(np.float64)
        keep = np.ones(d, bool)
        keep[dead] = False
        return -math.log(float(np.mean((w[keep] - target[keep]) ** 2)))

    audit = CloneAudit(seed=0)
    audit.score = score
    seen = _detector_sample(0, 1, d, 1 << 18)
    dead = int(np.setdiff1d(np.arange(d), seen)[0])

    def honest_round(g: np.ndarray) -> list[Update]:
        step = g + 0.5 * (target - g)
        return [Update(f"h{i:02d}", {"w": (step + rng.normal(0, 0.005, d)).astype(np.float32)}, 100)
                for i in range(10)]  # fmt: skip

    ups = honest_round(glob["w"])
    bad = (glob["w"] + 0.5 * (target - glob["w"])).astype(np.float32)
    bad[dead] = np.float32(2.0**64)  # within the wire's ±2**100
    ups.append(Update("mallory", {"w": bad}, 100))
    new = audit.aggregate(1, glob, ups)
    honest_mean = {"w": np.mean([u.params["w"] for u in ups[:10]], axis=0)}
    # (on the old code the audit found nothing: no exclusion, the clones are fine)
    # the committed model must be no worse than the model the round started from
    assert score(new) > score(glob), (score(new), score(glob), score(honest_mean))
    # round 2: every update honest
    ups2 = honest_round(new["w"])
    new2 = audit.aggregate(2, {"w": new["w"]}, ups2)
    mean2 = {"w": np.mean([u.params["w"] for u in ups2], axis=0)}
    assert score(new2) > score(mean2) - 0.5, (score(new2), score(mean2))


def test_a_dead_coordinate_raised_just_under_the_range_each_round_does_not_wipe_it() -> None:
    """The same, staying under the range plain FedAvg accepts (±65536·max(1, the
    tensor's largest global value)) each round: the committed value grows ~6000x a
    round, so does the tensor's grid, and by the fourth round every other value of the
    tensor is rounded to 0; it stays so. Never excluded (no clone sees the coordinate,
    and it is outside the detector's predictable sample in every round)."""
    from secfl.fl.strategies._exact import fraction_bits

    rng = np.random.default_rng(0)
    d = 1 << 19
    target = rng.normal(0, 0.05, d).astype(np.float32)
    glob = (target + rng.normal(0, 0.02, d)).astype(np.float32)
    seen = [set(_detector_sample(0, r, d, 1 << 18).tolist()) for r in range(1, 7)]
    dead = next(i for i in range(d) if all(i not in s for s in seen))
    keep = np.ones(d, bool)
    keep[dead] = False

    def score(p: dict[str, np.ndarray]) -> float:
        return -math.log(float(np.mean((p["w"].astype(np.float64)[keep] - target[keep]) ** 2)))

    audit = CloneAudit(seed=0)
    audit.score = score
    for r in range(1, 7):
        step = glob + 0.5 * (target - glob)
        ups = []
        for i in range(11):
            x = (step + rng.normal(0, 0.005, d)).astype(np.float32)
            x[dead] = glob[dead]  # a dead weight: training leaves it where it is
            ups.append(Update(f"h{i:02d}", {"w": x}, 100))
        _, limit = fraction_bits(glob, 1)
        ups[-1].params["w"][dead] = np.float32(0.99 * limit)  # the attacker, h10
        new = audit.aggregate(r, {"w": glob}, ups)["w"]
        honest = {"w": np.mean([u.params["w"] for u in ups[:10]], axis=0)}
        assert score({"w": new}) > score(honest) - 0.5, (r, score({"w": new}), score(honest))
        glob = new


# --- a base rule with state was stepped once per clone -------------------------------


def _ups(values: dict[str, float]) -> list[Update]:
    return [Update(n, {"w": np.full(3, v, dtype=np.float32)}, 10) for n, v in values.items()]


def test_an_excluded_attacker_does_not_steer_fedadam_through_the_clones() -> None:
    """Over FedAdam (allowed as ``base``), every clone is ``base.aggregate`` of a sample,
    and each call takes an Adam step: the moments are stepped 30+ times a round, with
    the pseudo-gradients of clones that hold the attacker. The attacker is excluded,
    yet the committed model moves towards it: the exclusion does not keep it out."""
    honest = {f"h{i}": 1.0 + 0.01 * i for i in range(6)}
    glob = {"w": np.zeros(3, dtype=np.float32)}
    settings = {"server_lr": 0.1}
    audit = CloneAudit(base="fedadam", base_settings=settings, clones=30, fraction=0.5,
                       threshold=2.0, seed=1, signals=[])  # fmt: skip
    audit.score = lambda p: -float(np.abs(p["w"] - 1.0).sum())  # the truth is 1
    new = audit.aggregate(1, glob, _ups({**honest, "bad": -50.0}))
    assert audit.excluded == ["bad"]
    fresh = get_strategy("fedadam", **settings).aggregate(1, glob, _ups(honest))
    assert audit.base.state()["step"] == 1, audit.base.state()["step"]
    np.testing.assert_allclose(new["w"], fresh["w"], rtol=1e-6)


def test_centered_clipping_keeps_its_own_center_not_the_last_clones() -> None:
    """Over centered clipping the kept center is whatever the last clone left (or the
    guard's fallback): the next round starts from a sample's center, not the round's."""
    honest = {f"h{i}": 1.0 + 0.01 * i for i in range(6)}
    glob = {"w": np.zeros(3, dtype=np.float32)}
    audit = CloneAudit(base="centered-clipping", base_settings={"tau": 1.0}, clones=30,
                       fraction=0.5, threshold=2.0, seed=1, signals=[], guard=None)  # fmt: skip
    audit.score = lambda p: -float(np.abs(p["w"] - 1.0).sum())
    ups = _ups({**honest, "bad": -50.0})
    new = audit.aggregate(1, glob, ups)
    plain = get_strategy("centered-clipping", tau=1.0)
    want = plain.aggregate(1, glob, [u for u in ups if u.sender != "bad"])
    np.testing.assert_allclose(new["w"], want["w"], rtol=1e-6)
    np.testing.assert_allclose(audit.base.state()["center/w"], plain.state()["center/w"])


# --- the detector's coordinates were known to every collaborator ----------------------


def test_poison_outside_the_detectors_predictable_coordinates_is_still_seen() -> None:
    """A model larger than ``signal_dims`` is looked at on a random subset of its
    coordinates, drawn from the policy's seed and the round: every collaborator can
    draw the same subset. A flipped and scaled update (norm, direction, sign all far
    out) confined to the coordinates left out this round gives no evidence at all."""
    rng = np.random.default_rng(7)
    d = (1 << 18) + (1 << 16)  # a fifth of the coordinates unseen each round
    common = rng.normal(0, 1.0, d)
    rows = [common + rng.normal(0, 1.0, d) for _ in range(12)]
    seen = _detector_sample(0, 1, d, 1 << 18)
    unseen = np.setdiff1d(np.arange(d), seen)
    evil = common + rng.normal(0, 1.0, d)  # an honest-looking site where it is looked at
    evil[unseen] = -20.0 * common[unseen]  # the poison, where the detector does not look
    glob = {"w": np.zeros(d, dtype=np.float32)}
    ups = [Update(f"s{i:02d}", {"w": r.astype(np.float32)}, 10) for i, r in enumerate(rows)]
    ups.append(Update("zz-evil", {"w": evil.astype(np.float32)}, 10))
    # the detector as the aggregator wires it (Aggregator.start)
    audit = CloneAudit(seed=0, signal_margin=2.5)
    keep_secret(audit)
    found = audit.detector.observe(1, glob, ups, [u.sender for u in ups])
    # the same poison everywhere is the largest evidence there is
    everywhere = -20.0 * common
    ups2 = [*ups[:-1], Update("zz-evil", {"w": everywhere.astype(np.float32)}, 10)]
    blatant = Detector(margin=2.5, cap=5.0).observe(1, glob, ups2, [u.sender for u in ups2])
    assert blatant.evidence["zz-evil"] == 5.0
    assert audit.detector.cap == 5.0
    assert found.evidence["zz-evil"] > 0.0, found.evidence["zz-evil"]


def test_the_aggregators_secret_comes_back_from_a_checkpoint() -> None:
    """The secret drawn at start is in the sealed checkpoint's state: a
    resumed audit draws the same clones and coordinates as the run it continues; a
    malformed one is refused in one line."""
    import pytest

    from secfl.errors import FlError

    first = CloneAudit(seed=3)
    first.keep_secret(bytes(range(32)))
    again = CloneAudit(seed=3)
    again.keep_secret(bytes(32))  # drawn at start, before the checkpoint is read
    again.load_state(first.state())
    assert again.secret == first.secret and again.detector.key == first.detector.key
    assert again._rng(5).integers(1 << 30) == first._rng(5).integers(1 << 30)
    assert CloneAudit(seed=3)._rng(5).integers(1 << 30) != first._rng(5).integers(1 << 30)
    for bad in ("zz", "00" * 31, 7):
        with pytest.raises(FlError, match="^clone-audit: the checkpoint's secret is malformed$"):
            CloneAudit(seed=3).load_state({**first.state(), "secret": bad})


# --- a review of the fixes: a rule without state is not copied per clone ------------------


def test_clone_audit_over_fltrust_with_a_root_trainer_method() -> None:
    """Flower's SecflStrategy sets ``root_update`` to whatever callable the ServerApp
    gives; a trainer's bound method is the natural one. Every clone deep-copies the
    base rule (clone_models) once the fix above copied rules with state, so the trainer
    object was deep-copied once per clone: a trainer holding a lock (or an open file, a
    thread...) failed the round with a TypeError, one holding a model or data copied it
    per clone, and a trainer's own bookkeeping was done on copies."""
    import threading

    from secfl.fl.strategies import CloneAudit, Update

    class Trainer:
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.calls = 0

        def update(self, round: int, params: dict, samples: int) -> dict:
            with self.lock:
                self.calls += 1
            return {k: v + np.float32(1.0) for k, v in params.items()}

    trainer = Trainer()
    audit = CloneAudit(base="fltrust", clones=4, fraction=0.5, seed=1, signals=[], guard=None)
    audit.base.root_update = trainer.update  # as SecflStrategy(root_update=...) sets it
    audit.score = lambda p: -float(np.abs(p["w"] - 1.0).sum())
    glob = {"w": np.zeros(3, dtype=np.float32)}
    ups = [Update(f"h{i}", {"w": np.full(3, 1.0 + 0.01 * i, np.float32)}, 10) for i in range(6)]
    audit.aggregate(1, glob, ups)
    # every root update went through the ServerApp's own trainer: clones + the round
    assert trainer.calls == 4 + 1, trainer.calls


# --- a review of the fixes: a rule built on FedAvg that aggregates its own way ----------


def test_the_audit_commits_what_a_fedavg_subclass_aggregates() -> None:
    """``register_strategy`` is public API: a ServerApp (SecflStrategy) or a task can
    register its own rule built on FedAvg, e.g. one that clips each update's delta
    (or adds noise) in ``aggregate`` before averaging. Under the clone audit the
    round's model is ``commit(base, ...)``, which for any ``isinstance(base, FedAvg)``
    computed the plain float64 mean and called ``_server_step``: the rule's own
    ``aggregate`` was never called, and its clipping silently left out of the
    committed model."""
    from collections.abc import Sequence

    from secfl.fl.strategies import CloneAudit, Update, register_strategy
    from secfl.fl.strategies._fedavg import FedAvg

    class ClippedFedAvg(FedAvg):
        name = "test-clipped-fedavg"

        def aggregate(self, round: int, global_params: dict, updates: Sequence[Update]) -> dict:
            clipped = []
            for u in updates:
                delta = {k: v - global_params[k] for k, v in u.params.items()}
                norm = float(np.sqrt(sum(float((d.astype(np.float64) ** 2).sum())
                                         for d in delta.values())))  # fmt: skip
                scale = min(1.0, 1.0 / norm) if norm > 0 else 1.0
                params = {k: (global_params[k] + scale * d).astype(global_params[k].dtype)
                          for k, d in delta.items()}  # fmt: skip
                clipped.append(Update(u.sender, params, u.num_samples))
            return super().aggregate(round, global_params, clipped)

    register_strategy(ClippedFedAvg)
    glob = {"w": np.zeros(4, dtype=np.float32)}
    ups = [Update(f"h{i}", {"w": np.full(4, 10.0 + i, np.float32)}, 10) for i in range(6)]
    audit = CloneAudit(base="test-clipped-fedavg", clones=4, fraction=0.5, seed=1,
                       signals=[], guard=None)  # fmt: skip
    audit.score = lambda p: -float(np.abs(p["w"] - 1.0).sum())
    new = audit.aggregate(1, glob, ups)
    want = ClippedFedAvg().aggregate(1, glob, ups)  # every delta clipped to norm 1
    np.testing.assert_allclose(new["w"], want["w"], rtol=1e-6)


# --- the filtering rules' coordinates were known to every collaborator too -------------


def _dnc_sample(seed: int, round: int, d: int, dims: int, iterations: int) -> np.ndarray:
    """Every coordinate DnC looks at in ``round``, drawn as a site that reads the
    policy's seed draws them (``dnc_scores``)."""
    rng = np.random.default_rng([seed, round])
    return np.unique(
        np.concatenate([rng.choice(d, size=dims, replace=False) for _ in range(iterations)])
    )


def test_dnc_filters_poison_outside_the_coordinates_the_seed_predicts() -> None:
    """DnC looks at random coordinate subsets drawn from ``[seed, round]``: a site that
    flips and scales its update only where this round's subsets do not look was kept,
    while the same rule filters it once the aggregator's secret is in the draws."""
    from secfl.fl.strategies._dnc import DnC

    rng = np.random.default_rng(11)
    d, dims, iterations = 8192, 512, 2
    common = rng.normal(0, 1.0, d)
    rows = [common + rng.normal(0, 1.0, d) for _ in range(9)]
    seen = _dnc_sample(0, 1, d, dims, iterations)
    unseen = np.setdiff1d(np.arange(d), seen)
    evil = common + rng.normal(0, 1.0, d)
    evil[unseen] = -20.0 * common[unseen]
    glob = {"w": np.zeros(d, dtype=np.float32)}
    ups = [Update(f"s{i}", {"w": r.astype(np.float32)}, 10) for i, r in enumerate(rows)]
    ups.append(Update("zz-evil", {"w": evil.astype(np.float32)}, 10))
    plain = DnC(f=1, dims=dims, iterations=iterations)
    plain.aggregate(1, glob, ups)
    assert "zz-evil" in (plain.selected() or []), "the seed alone: the poison is not seen"
    guarded = DnC(f=1, dims=dims, iterations=iterations)
    keep_secret(guarded)
    guarded.aggregate(1, glob, ups)
    assert "zz-evil" not in (guarded.selected() or [])


def test_a_filtering_rules_secret_comes_back_from_a_checkpoint() -> None:
    """DnC, FLAME and SignGuard keep their secret in their (sealed) state: a resumed run
    draws as the run it continues; a checkpoint of a release without one still loads;
    a malformed one, or any other key, is refused in one line. Under the clone audit a
    base rule that draws keeps the audit's secret."""
    import pytest

    from secfl.errors import FlError

    for name in ("dnc", "flame", "signguard"):
        first = get_strategy(name)
        keep_secret(first)
        assert len(first.state()["secret"]) == 64
        again = get_strategy(name)
        again.load_state(first.state())
        assert again.key == first.key != ()
        get_strategy(name).load_state({})  # an older release's checkpoint
        for bad in ({"secret": "zz"}, {"secret": "00" * 31}, {"secret": 7}):
            with pytest.raises(FlError, match=f"^{name}: the checkpoint's secret is malformed$"):
                get_strategy(name).load_state(bad)
        with pytest.raises(FlError, match=f"^{name}: keeps no state but its secret"):
            get_strategy(name).load_state({"center/w": 1})
    audit = CloneAudit(base="dnc", seed=3)
    keep_secret(audit)
    assert audit.base.key == audit.detector.key != ()
    resumed = CloneAudit(base="dnc", seed=3)
    resumed.load_state(audit.state())
    assert resumed.base.key == audit.base.key and resumed.secret == audit.secret
