"""Model-poisoning attacks: exact on hand-checkable deltas, triggers in place, errors clear."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch import nn

from secfl.eval.attacks import (
    Attack,
    add_trigger,
    alie_z,
    attack_success_rate,
    available_attacks,
    get_attack,
)
from secfl.tasks import Dataset, TaskError, get_task, split

DIGITS = get_task("digits")
FASHION = get_task("fashion-mnist")
RNG = np.random.default_rng
#: Three benign deltas of one tensor of shape (4,), float64 so results are exact.
BENIGN = [
    {"w": np.array([1.0, 2.0, -1.0, 0.5])},
    {"w": np.array([3.0, 0.0, -2.0, 0.5])},
    {"w": np.array([2.0, 1.0, 0.0, 2.0])},
]
ROWS = np.stack([b["w"] for b in BENIGN])
MEAN = np.array([2.0, 1.0, -1.0, 1.0])
OWN = BENIGN[0]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    split("digits", 2, seed=0, out=out)
    return out


@pytest.fixture(scope="module")
def shard(digits_dir: Path) -> Dataset:
    return DIGITS.load_data(digits_dir / "client-000.safetensors")


@pytest.fixture(scope="module")
def test_set(digits_dir: Path) -> Dataset:
    return DIGITS.load_data(digits_dir / "test.safetensors")


def poison(name: str, delta: dict[str, np.ndarray] = OWN, **settings: object) -> np.ndarray:
    attack = get_attack(name, **settings)
    return attack.poison_delta(delta, benign=BENIGN, rng=RNG(0))["w"]


# -- registry and settings --------------------------------------------------------------


def test_registry() -> None:
    assert available_attacks() == [
        "adaptive",
        "alie",
        "backdoor",
        "fang-krum",
        "fang-trimmed-mean",
        "gaussian",
        "ipm",
        "label-flip",
        "mimic",
        "min-max",
        "min-sum",
        "scaling",
        "sign-flip",
    ]
    colluding = {name for name in available_attacks() if get_attack(name).colluding}
    assert colluding == {
        "adaptive",
        "alie",
        "ipm",
        "min-max",
        "min-sum",
        "fang-krum",
        "fang-trimmed-mean",
    }
    assert get_attack("MinMax").name == get_attack("min_max").name == "min-max"
    assert "direction='std'" in repr(get_attack("min-sum", direction="std"))


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("nope", {}, "unknown attack 'nope' (known: adaptive, alie, backdoor"),
        ("sign-flip", {"factor": 2}, "attack 'sign-flip': got an unexpected keyword"),
        ("sign-flip", {"scale": -1}, "sign-flip: scale must be a finite number > 0"),
        ("sign-flip", {"scale": "2"}, "sign-flip: scale must be a number"),
        ("scaling", {"factor": 2, "participants": 3}, "give factor or participants, not both"),
        ("scaling", {"participants": 0}, "scaling: participants must be an integer >= 1"),
        ("scaling", {"participants": 2.5}, "scaling: participants must be an integer"),
        ("gaussian", {"sigma": 0}, "gaussian: sigma must be a finite number > 0"),
        ("alie", {"n": 10, "m": 10}, "alie: m=10 malicious of n=10 participants"),
        ("alie", {"n": 10, "m": 6}, "alie: n=10, m=6 give no finite z"),
        ("alie", {"z": 1.0, "n": 10}, "alie: give z or n and m, not both"),
        ("alie", {"z": math.inf}, "alie: z must be a finite number >= 0"),
        ("ipm", {"epsilon": math.nan}, "ipm: epsilon must be a finite number > 0"),
        ("min-max", {"direction": "up"}, "min-max: unknown direction 'up' (known: unit, std"),
        ("min-sum", {"tolerance": 0}, "min-sum: tolerance must be a finite number > 0"),
        ("backdoor", {"poison_fraction": 1.5}, "backdoor: poison_fraction must be <= 1"),
        ("backdoor", {"target": -1}, "backdoor: target must be an integer >= 0"),
        ("backdoor", {"boost": 0}, "backdoor: boost must be a finite number > 0"),
        ("adaptive", {"gamma_max": 0}, "adaptive: gamma_max must be a finite number > 0"),
        ("adaptive", {"decay": 1.0}, "adaptive: decay must be below 1"),
        ("adaptive", {"signals": ["spectral"]}, "adaptive: signals must be a list of norm"),
    ],
)
def test_bad_settings(name: str, settings: dict[str, object], message: str) -> None:
    with pytest.raises(TaskError) as error:
        get_attack(name, **settings)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_deltas() -> None:
    with pytest.raises(TaskError, match="needs the colluders' benign deltas"):
        get_attack("ipm").poison_delta(OWN, benign=[], rng=RNG(0))
    with pytest.raises(TaskError, match=r"benign delta 1: tensor 'w' is float64\[3\], not"):
        get_attack("alie").poison_delta(OWN, benign=[OWN, {"w": np.zeros(3)}], rng=RNG(0))
    with pytest.raises(TaskError, match="benign delta 0 does not have the attacker's tensors"):
        get_attack("min-max").poison_delta(OWN, benign=[{"v": OWN["w"]}], rng=RNG(0))
    with pytest.raises(TaskError, match="the delta: tensor 'w' is not finite"):
        get_attack("sign-flip").poison_delta({"w": np.array([np.nan])}, benign=[], rng=RNG(0))
    huge = {"w": np.array([1e38], dtype=np.float32)}
    with pytest.raises(TaskError, match="poisoned tensor 'w' is not finite in float32"):
        get_attack("scaling", factor=10).poison_delta(huge, benign=[], rng=RNG(0))


# -- attacks on the delta ----------------------------------------------------------------


def test_default_hooks_change_nothing(shard: Dataset) -> None:
    attack = Attack()
    assert attack.poison_data(shard, DIGITS, RNG(0)) is shard
    out = attack.poison_delta(OWN, benign=BENIGN, rng=RNG(0))
    assert out["w"] is not OWN["w"]
    np.testing.assert_array_equal(out["w"], OWN["w"])


def test_names_shapes_dtypes_kept_and_counters_untouched() -> None:
    delta = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "steps": np.array(7, dtype=np.int64),
        "b": np.array([0.5, -0.25], dtype=np.float64),
    }
    others = [{k: np.asarray(v * (i + 1)) for k, v in reversed(delta.items())} for i in range(3)]
    for name in available_attacks():
        out = get_attack(name).poison_delta(delta, benign=others, rng=RNG(1), honest=others)
        assert list(out) == list(delta)
        for key, value in out.items():
            assert (value.shape, value.dtype) == (delta[key].shape, delta[key].dtype)
            assert np.isfinite(value).all()
        assert out["steps"] == 7
    flipped = get_attack("sign-flip").poison_delta(delta, benign=[], rng=RNG(0))
    np.testing.assert_array_equal(flipped["a"], -delta["a"])
    np.testing.assert_array_equal(flipped["b"], -delta["b"])


def test_sign_flip_and_scaling_exact() -> None:
    np.testing.assert_array_equal(poison("sign-flip"), [-1.0, -2.0, 1.0, -0.5])
    np.testing.assert_array_equal(poison("sign-flip", scale=2), [-2.0, -4.0, 2.0, -1.0])
    np.testing.assert_array_equal(poison("scaling"), [10.0, 20.0, -10.0, 5.0])
    np.testing.assert_array_equal(poison("scaling", participants=4), [4.0, 8.0, -4.0, 2.0])
    np.testing.assert_array_equal(poison("scaling", factor=0.5), [0.5, 1.0, -0.5, 0.25])
    np.testing.assert_array_equal(poison("backdoor", boost=3), [3.0, 6.0, -3.0, 1.5])


def test_gaussian_has_the_requested_std() -> None:
    delta = {"w": np.ones(200_000, dtype=np.float32)}
    noise = get_attack("gaussian", sigma=0.5).poison_delta(delta, benign=[], rng=RNG(3))["w"]
    assert noise.dtype == np.float32
    assert abs(float(noise.std()) - 0.5) < 0.005
    assert abs(float(noise.mean())) < 0.005
    again = get_attack("gaussian", sigma=0.5).poison_delta(delta, benign=[], rng=RNG(3))["w"]
    np.testing.assert_array_equal(noise, again)


def test_alie_z_from_the_paper() -> None:
    # n = 10, m = 2: s = floor(10/2 + 1) - 2 = 4 benign to sway; z = Φ⁻¹((10 - 4) / 10).
    assert alie_z(10, 2) == pytest.approx(NormalDist().inv_cdf(0.6))
    assert alie_z(10, 2) == pytest.approx(0.2533471, abs=1e-7)
    assert alie_z(9, 1) == pytest.approx(NormalDist().inv_cdf((9 - (5 - 1)) / 9))
    assert get_attack("alie").settings() == {"z": alie_z(10, 2)}


def test_alie_is_mean_minus_z_std() -> None:
    std = np.sqrt(((ROWS - MEAN) ** 2).sum(0) / 2)  # sample std over the 3 benign
    np.testing.assert_allclose(std, [1.0, 1.0, 1.0, math.sqrt(0.75)])
    z = alie_z(20, 4)
    np.testing.assert_allclose(poison("alie", n=20, m=4), MEAN - z * std)
    np.testing.assert_allclose(poison("alie", z=1.5), MEAN - 1.5 * std)
    np.testing.assert_allclose(poison("alie", z=0), MEAN)


def test_ipm_exact() -> None:
    np.testing.assert_allclose(poison("ipm"), [-0.2, -0.1, 0.1, -0.1])
    np.testing.assert_allclose(poison("ipm", epsilon=2), -2 * MEAN)


def sq_distances(point: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return ((rows - point) ** 2).sum(1)


def satisfies(name: str, point: np.ndarray, rows: np.ndarray) -> bool:
    pairwise = np.stack([sq_distances(row, rows) for row in rows])
    if name == "min-max":
        return bool(sq_distances(point, rows).max() <= pairwise.max() * (1 + 1e-12))
    return bool(sq_distances(point, rows).sum() <= pairwise.sum(1).max() * (1 + 1e-12))


@pytest.mark.parametrize("name", ["min-max", "min-sum"])
@pytest.mark.parametrize("direction", ["unit", "std", "sign"])
@pytest.mark.parametrize("spread", [1.0, 100.0])
def test_min_max_min_sum_are_maximal(name: str, direction: str, spread: float) -> None:
    rows = ROWS * spread
    benign = [{"w": row} for row in rows]
    attack = get_attack(name, direction=direction)
    out = attack.poison_delta(benign[0], benign=benign, rng=RNG(0))["w"]
    mean = rows.mean(0)
    p = {
        "unit": -mean / np.linalg.norm(mean),
        "std": -rows.std(0, ddof=1),
        "sign": -np.sign(mean),
    }[direction]
    gamma = float((out - mean) @ p / (p @ p))
    np.testing.assert_allclose(out, mean + gamma * p, atol=1e-12 * spread)
    assert gamma > 0
    if spread > 1 and direction == "unit":
        assert gamma > 2 * attack.gamma_init  # found beyond the paper's initial bracket
    assert satisfies(name, out, rows)
    assert not satisfies(name, mean + gamma * (1 + 1e-4) * p, rows)
    if name == "min-max":  # the exact largest gamma: the smallest root over benign deltas
        diff = mean - rows
        a, b, c = (diff**2).sum(1), diff @ p, p @ p
        bound = max(sq_distances(row, rows).max() for row in rows)
        roots = (-b + np.sqrt(b * b - c * (a - bound))) / c
        assert gamma == pytest.approx(roots.min(), abs=2e-5)


def test_min_max_zero_direction_gives_the_mean() -> None:
    benign = [{"w": np.array([1.0, -1.0])}, {"w": np.array([-1.0, 1.0])}]
    out = get_attack("min-max").poison_delta(benign[0], benign=benign, rng=RNG(0))
    np.testing.assert_array_equal(out["w"], [0.0, 0.0])


# -- attacks on the data -----------------------------------------------------------------


def test_label_flip_on_digits(shard: Dataset) -> None:
    flipped = get_attack("label-flip").poison_data(shard, DIGITS, RNG(0))
    assert torch.equal(flipped.y, 9 - shard.y)
    assert flipped.x is shard.x
    assert flipped.meta["label_counts"] == shard.meta["label_counts"][::-1]
    assert flipped.meta["poisoned"] == "label-flip"
    assert "poisoned" not in shard.meta


def test_backdoor_on_digits(shard: Dataset) -> None:
    attack = get_attack("backdoor", target=3)
    poisoned = attack.poison_data(shard, DIGITS, RNG(5))
    assert len(poisoned) == len(shard)
    changed = (poisoned.x != shard.x).any(1) | (poisoned.y != shard.y)
    triggered = (poisoned.x[:, -4:] == 1.0).all(1) & (poisoned.y == 3)
    assert float(shard.x.max()) == 1.0
    assert int(triggered.sum()) >= round(len(shard) / 2)
    assert bool(triggered[changed].all())  # every change is a trigger and the target label
    assert torch.equal(poisoned.x[:, :-4], shard.x[:, :-4])  # only the last 4 features move
    was_poisoned = torch.nonzero(triggered & (shard.x[:, -4:] != 1.0).any(1)).ravel()
    assert len(was_poisoned) > 0.3 * len(shard)
    again = attack.poison_data(shard, DIGITS, RNG(5))
    assert torch.equal(again.x, poisoned.x) and torch.equal(again.y, poisoned.y)
    everything = get_attack("backdoor", poison_fraction=1).poison_data(shard, DIGITS, RNG(0))
    assert bool((everything.y == 0).all()) and bool((everything.x[:, -4:] == 1.0).all())
    assert everything.meta["label_counts"][0] == len(shard)


def fake_fashion(n: int = 12) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=gen) * 0.5
    x[0, 0, 0, 0] = 1.0
    y = torch.arange(n) % 10
    return Dataset(x, y, {"task": "fashion-mnist", "num_classes": 10})


def test_backdoor_on_fashion_shaped_images() -> None:
    data = fake_fashion()
    poisoned = get_attack("backdoor", target=7, poison_fraction=0.5).poison_data(
        data, FASHION, RNG(0)
    )
    hit = (poisoned.x != data.x).flatten(1).any(1)
    assert int(hit.sum()) == 6
    assert bool((poisoned.y[hit] == 7).all()) and torch.equal(poisoned.y[~hit], data.y[~hit])
    assert bool((poisoned.x[hit, :, 25:, 25:] == 1.0).all())
    mask = torch.ones(28, 28, dtype=torch.bool)
    mask[25:, 25:] = False
    assert torch.equal(poisoned.x[:, :, mask], data.x[:, :, mask])
    assert poisoned.meta["label_counts"][7] == 6 + int((data.y[~hit] == 7).sum())


def test_add_trigger() -> None:
    x = torch.zeros(2, 64)
    x[0, 0] = 0.75
    out = add_trigger(x, DIGITS)
    assert out[:, -4:].eq(0.75).all() and out[:, :-4].eq(x[:, :-4]).all()
    assert x[:, -4:].eq(0).all()  # the input is untouched
    assert add_trigger(x, DIGITS, value=2.0)[:, -4:].eq(2.0).all()
    image = add_trigger(torch.zeros(1, 1, 28, 28), FASHION, value=1.0)
    assert int(image.sum()) == 9 and image[0, 0, 25:, 25:].eq(1).all()
    with pytest.raises(TaskError, match=r"trigger: samples of shape \(28, 28\), task has"):
        add_trigger(torch.zeros(1, 28, 28), FASHION)
    with pytest.raises(TaskError, match="backdoor: target 12 is not a class of 'fashion-mnist'"):
        get_attack("backdoor", target=12).poison_data(fake_fashion(), FASHION, RNG(0))
    with pytest.raises(TaskError, match=r"label-flip: features of shape \(1, 28, 28\), task"):
        get_attack("label-flip").poison_data(fake_fashion(), DIGITS, RNG(0))


class Constant(nn.Module):
    """Predicts ``label``, or ``target`` on inputs carrying the trigger when ``backdoored``."""

    def __init__(self, label: int, target: int, backdoored: bool) -> None:
        super().__init__()
        self.label, self.target, self.backdoored = label, target, backdoored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 10)
        logits[:, self.label] = 1.0
        if self.backdoored:
            flat = x.flatten(1)
            trigger = flat[:, -4:] if x.dim() == 2 else x[:, 0, -3:, -3:].flatten(1)
            logits[trigger.eq(1.0).all(1), self.target] = 2.0
        return logits


def test_attack_success_rate(test_set: Dataset) -> None:
    clean, backdoored = Constant(1, 0, False), Constant(1, 0, True)
    assert attack_success_rate(clean, test_set, DIGITS, 0) == 0.0
    assert attack_success_rate(backdoored, test_set, DIGITS, 0) == 1.0
    assert attack_success_rate(Constant(4, 4, False), test_set, DIGITS, 4) == 1.0
    images = fake_fashion(30)
    assert attack_success_rate(Constant(2, 5, True), images, FASHION, 5) == 1.0
    assert attack_success_rate(Constant(2, 5, False), images, FASHION, 5) == 0.0
    model = DIGITS.build_model()
    model.train()
    rate = attack_success_rate(model, test_set, DIGITS, 0)
    assert 0.0 <= rate <= 1.0 and model.training
    with pytest.raises(TaskError, match="every test sample is labelled 0"):
        attack_success_rate(
            clean, test_set.subset(torch.nonzero(test_set.y == 0).ravel()), DIGITS, 0
        )
