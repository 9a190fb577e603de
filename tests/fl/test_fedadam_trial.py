"""The clone audit over FedAdam: each clone steps from the round's moments without a
copy of them (two of the model's size; about 31 clones a round, so ~24 GB of copies a
round at 100M parameters), and what it computes is what a copy would have."""

from __future__ import annotations

import copy
import tracemalloc

import numpy as np

from secfl.fl.strategies import FedAdam, Params, Update
from secfl.fl.strategies._clone_scoring import clone_models, commit

SIZE = 1 << 20  # one float32 tensor of 4 MiB


def _round(seed: int, n: int = 5) -> tuple[Params, list[Update]]:
    rng = np.random.default_rng(seed)
    glob = {"w": rng.standard_normal(SIZE, np.float32), "b": rng.standard_normal(7, np.float32)}
    updates = [
        Update(f"s{i}", {k: v + rng.standard_normal(v.shape, np.float32) for k, v in glob.items()},
               10 + i)
        for i in range(n)
    ]  # fmt: skip
    return glob, updates


def _moments(rule: FedAdam) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in rule.state().items() if isinstance(v, np.ndarray)}


def test_a_trial_steps_as_a_copy_would_and_leaves_the_moments_as_they_were() -> None:
    rule = FedAdam(server_lr=0.05, threads=2)
    for round in (1, 2, 3):
        glob, updates = _round(round)
        before = _moments(rule)
        step = rule.step
        want = commit(copy.deepcopy(rule), round, glob, updates[:3])  # what a copy gives
        got = commit(rule.trial(), round, glob, updates[:3])
        for name in glob:
            assert got[name].tobytes() == want[name].tobytes(), (round, name)
        assert _moments(rule) == before and rule.step == step  # round 1: still no moments
        rule.aggregate(round, glob, updates)  # the round's real step
        assert rule.step == step + 1 and _moments(rule) != before


def test_the_clones_of_a_fedadam_round_copy_no_moments() -> None:
    """A deep copy per clone held two more models while the clone's float64 mean was
    built: the peak above the clones' own models was ~4 models; it is ~2 (the mean)."""
    rule = FedAdam(threads=1)
    glob, updates = _round(9)
    rule.aggregate(1, glob, updates)  # moments of the model's size
    members = np.zeros((1, len(updates)), dtype=bool)
    members[0, :3] = True
    model = SIZE * 4
    tracemalloc.start()
    try:
        models = clone_models(rule, 2, glob, updates, members)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    extra = peak - sum(a.nbytes for m in models for a in m.values())
    assert extra < 3 * model, f"the clone needed {extra / model:.2f} models beside its own"
