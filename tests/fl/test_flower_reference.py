"""FedAvg and the robust rules against Flower's reference implementations
(``flwr.server.strategy.aggregate`` of flwr==1.41.*).

flwr cannot share the project's venv (it pins typer<0.21 and fastapi<0.139, older
than secfl needs), so it lives in ``.venv-flwr``, made by ``scripts/flwr-venv.sh``.
The tests write each round as one ``.npz`` per update (float64, a fixed seed; the
sample counts in ``jobs.json``), run a small script with ``.venv-flwr/bin/python``
that calls Flower's functions and writes their outputs as ``.npz``, and compare them
with ours on the same inputs (rtol 1e-9). They run when ``CI`` is set (the venv is
then created) or ``.venv-flwr`` exists, and are skipped otherwise.

Where Flower's definitions differ from ours (and from the papers'):

- Flower aggregates the models; we aggregate the deltas (``update - global``) and
  add the result to the global model. Median, trimmed mean, Krum's distances and
  Bulyan are translation-equivariant, so the two agree for any global model up to
  float64 rounding; every case runs with a random global model and with
  ``global = 0`` (where the deltas *are* the models).
- Multi-Krum: Flower averages the ``m`` kept models weighted by sample count
  (``aggregate``); Blanchard et al. and we take the plain mean. Compared with equal
  counts; :func:`test_flower_multi_krum_weighs_by_sample_count` pins the difference.
- Krum with ``n <= 2f + 2``: Flower scores with ``max(1, n - f - 2)`` neighbours
  without complaint; we refuse (the paper's precondition). Compared with
  ``n > 2f + 2`` only.
- Bulyan: no difference. Flower also re-runs Krum on the remaining updates with
  ``max(1, n' - f - 2)`` neighbours (fewer than the paper's ``2f + 3`` updates at
  the last steps) and averages the ``beta = theta - 2f`` values closest to the
  median. ``aggregate_bulyan`` accepts only ``aggregate_krum`` as its rule
  (``aggregation_rule=aggregate_krum, to_keep=0``) and empties the list it is given.
- Trimmed mean: Flower's ``proportiontocut`` is scipy's (``floor(p * n)`` values cut
  at each end), the same as our ``beta`` and Yin et al.'s.
- Ties: Flower orders ties with unstable sorts; the random inputs have none, except
  the exact ties of Bulyan's last Krum steps (the closest pair scores the same),
  which both resolve to the earlier update.
- Flower has no centered clipping or FLTrust (see test_robust.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfl.fl.strategies import FedAvg, Params, Update, get_strategy

NAMES = ("w", "b", "k")

#: Runs in .venv-flwr: ``python runner.py DIR`` reads DIR/jobs.json and the inputs.
RUNNER = """
import json, sys
from pathlib import Path

import numpy as np
from flwr.server.strategy import aggregate as agg

root = Path(sys.argv[1])
spec = json.loads((root / "jobs.json").read_text())
names = spec["names"]
for job in spec["jobs"]:
    case = spec["cases"][job["case"]]
    results = []
    for i, count in enumerate(case["num_examples"]):
        with np.load(root / f"{job['case']}-{i}.npz", allow_pickle=False) as z:
            results.append(([z[n] for n in names], count))
    if job["fn"] == "aggregate_bulyan":
        out = agg.aggregate_bulyan(
            results, aggregation_rule=agg.aggregate_krum, to_keep=0, **job["kwargs"]
        )
    else:
        out = getattr(agg, job["fn"])(results, **job["kwargs"])
    np.savez(root / f"out-{job['id']}.npz", **dict(zip(names, out, strict=True)))
"""


def make_round(
    seed: int,
    n: int,
    *,
    zero_global: bool,
    outliers: int = 0,
    equal_counts: bool = False,
    dtype: type = np.float64,
) -> tuple[Params, list[Update]]:
    """A round of ``n`` random updates of three tensors, the first ``outliers`` of them
    far from the others (so that Krum and Bulyan have something to leave out)."""
    rng = np.random.default_rng(seed)
    shapes = {"w": (4, 3), "b": (3,), "k": (2, 2, 2)}
    global_params = {
        k: (np.zeros(s) if zero_global else rng.standard_normal(s)).astype(dtype)
        for k, s in shapes.items()
    }
    updates = []
    for i in range(n):
        scale, shift = (8.0, rng.standard_normal()) if i < outliers else (1.0, 0.0)
        params = {
            k: (v + scale * rng.standard_normal(v.shape) + shift).astype(dtype)
            for k, v in global_params.items()
        }
        count = 10 if equal_counts else int(rng.integers(1, 500))
        updates.append(Update(f"site-{i}", params, count))
    return global_params, updates


def flower(
    python: Path,
    tmp: Path,
    cases: dict[str, list[Update]],
    jobs: dict[str, tuple[str, str, dict[str, Any]]],
) -> dict[str, list[np.ndarray]]:
    """Flower's outputs: ``jobs`` maps a job id to (case, function, keyword arguments)."""
    for case, updates in cases.items():
        for i, update in enumerate(updates):
            np.savez(tmp / f"{case}-{i}.npz", **update.params)
    spec = {
        "names": list(NAMES),
        "cases": {c: {"num_examples": [u.num_samples for u in us]} for c, us in cases.items()},
        "jobs": [
            {"id": job, "case": case, "fn": fn, "kwargs": kwargs}
            for job, (case, fn, kwargs) in jobs.items()
        ],
    }
    (tmp / "jobs.json").write_text(json.dumps(spec))
    (tmp / "runner.py").write_text(RUNNER)
    proc = subprocess.run(
        [str(python), "-I", str(tmp / "runner.py"), str(tmp)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"the Flower runner failed: {proc.stderr[-3000:]}")
    out: dict[str, list[np.ndarray]] = {}
    for job in jobs:
        with np.load(tmp / f"out-{job}.npz", allow_pickle=False) as z:
            out[job] = [z[name] for name in NAMES]
    return out


def assert_matches(ours: Params, theirs: list[np.ndarray], rtol: float = 1e-9) -> None:
    for name, reference in zip(NAMES, theirs, strict=True):
        assert ours[name].shape == reference.shape, name
        np.testing.assert_allclose(ours[name], reference, rtol=rtol, atol=1e-12, err_msg=name)


def run_cases(
    python: Path,
    tmp: Path,
    rounds: dict[str, tuple[Params, list[Update]]],
    rules: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]],
    rtol: float = 1e-9,
) -> int:
    """Compare every rule with Flower on its case; ``rules`` maps a job id to (case,
    our strategy's name, its settings, Flower's function and kwargs as ``fn`` +
    ``kwargs``). Returns the number of comparisons."""
    jobs = {job: (case, s["fn"], s["kwargs"]) for job, (case, _, _, s) in rules.items()}
    theirs = flower(python, tmp, {c: us for c, (_, us) in rounds.items()}, jobs)
    for job, (case, name, settings, _) in rules.items():
        global_params, updates = rounds[case]
        ours = get_strategy(name, **settings).aggregate(1, global_params, updates)
        assert_matches(ours, theirs[job], rtol)
    return len(rules)


def flwr(fn: str, **kwargs: Any) -> dict[str, Any]:
    return {"fn": fn, "kwargs": kwargs}


# --- the tests ----------------------------------------------------------------------------


def test_fedavg_matches_flower(flower_python: Path, tmp_path: Path) -> None:
    rounds = {
        f"s{seed}-{dtype.__name__}": make_round(seed, 7, zero_global=False, dtype=dtype)
        for seed in range(3)
        for dtype in (np.float64, np.float32)
    }
    jobs = {case: (case, "aggregate", {}) for case in rounds}
    theirs = flower(flower_python, tmp_path, {c: us for c, (_, us) in rounds.items()}, jobs)
    for case, (global_params, updates) in rounds.items():
        ours = FedAvg().aggregate(1, global_params, updates)
        # Flower sums in the inputs' dtype; ours sums in float64
        rtol = 1e-9 if case.endswith("float64") else 1e-5
        for name, reference in zip(NAMES, theirs[case], strict=True):
            assert ours[name].dtype == global_params[name].dtype
            np.testing.assert_allclose(ours[name], reference, rtol=rtol, atol=rtol / 10)


@pytest.mark.parametrize("zero_global", [False, True])
def test_median_and_trimmed_mean_match_flower(
    flower_python: Path, tmp_path: Path, zero_global: bool
) -> None:
    rounds = {
        f"n{n}": make_round(n, n, zero_global=zero_global, outliers=n // 4) for n in (5, 6, 9, 10)
    }
    rules: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {}
    for case in rounds:
        rules[f"{case}-median"] = (case, "median", {}, flwr("aggregate_median"))
        for beta in (0.0, 0.1, 0.2, 0.25, 0.3, 0.45):
            rules[f"{case}-trim{beta}"] = (
                case, "trimmed-mean", {"beta": beta},
                flwr("aggregate_trimmed_avg", proportiontocut=beta),
            )  # fmt: skip
    assert run_cases(flower_python, tmp_path, rounds, rules) == 28


@pytest.mark.parametrize("zero_global", [False, True])
def test_krum_and_multi_krum_match_flower(
    flower_python: Path, tmp_path: Path, zero_global: bool
) -> None:
    # rounds with f far outliers (which must be left out) and without any (where the
    # choice hangs on the exact scores)
    cases = [(5, 1), (7, 1), (9, 2), (12, 3), (13, 0)]
    rounds = {
        f"n{n}f{f}o{o}": make_round(
            100 * o + n, n, zero_global=zero_global, outliers=f * o, equal_counts=True
        )
        for n, f in cases
        for o in (0, 1)
    }
    rules: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {}
    for case in rounds:
        n, f = (int(x) for x in case[1:].split("o")[0].split("f"))
        rules[f"{case}-krum"] = (
            case, "krum", {"f": f}, flwr("aggregate_krum", num_malicious=f, to_keep=0)
        )  # fmt: skip
        for m in sorted({1, 3, n - f, n}):
            rules[f"{case}-m{m}"] = (
                case, "multi-krum", {"f": f, "m": m},
                flwr("aggregate_krum", num_malicious=f, to_keep=m),
            )  # fmt: skip
    assert run_cases(flower_python, tmp_path, rounds, rules) == 48
    # the outliers were left out
    for n, f in cases:
        strategy = get_strategy("multi-krum", f=f)
        strategy.aggregate(1, *rounds[f"n{n}f{f}o1"])
        assert not {f"site-{i}" for i in range(f)} & set(strategy.selected() or [])


def test_flower_multi_krum_weighs_by_sample_count(flower_python: Path, tmp_path: Path) -> None:
    """With unequal counts Flower's Multi-Krum is the count-weighted mean of the models
    we select; ours is their plain mean (the paper's)."""
    global_params, updates = make_round(5, 9, zero_global=False, outliers=2)
    assert len({u.num_samples for u in updates}) > 1
    theirs = flower(
        flower_python,
        tmp_path,
        {"r": updates},
        {"mk": ("r", "aggregate_krum", {"num_malicious": 2, "to_keep": 4})},
    )["mk"]
    strategy = get_strategy("multi-krum", f=2, m=4)
    ours = strategy.aggregate(1, global_params, updates)
    kept = [u for u in updates if u.sender in (strategy.selected() or [])]
    assert len(kept) == 4
    weights = np.array([u.num_samples for u in kept], dtype=np.float64)
    for name, reference in zip(NAMES, theirs, strict=True):
        stack = np.stack([u.params[name] for u in kept])
        np.testing.assert_allclose(
            reference, np.average(stack, axis=0, weights=weights), rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(ours[name], stack.mean(axis=0), rtol=1e-9, atol=1e-12)
        assert not np.allclose(ours[name], reference)


@pytest.mark.parametrize("zero_global", [False, True])
def test_bulyan_matches_flower(flower_python: Path, tmp_path: Path, zero_global: bool) -> None:
    # n = 4f + 3 (odd theta), larger n, and an even theta (n = 12, f = 2: theta 8, beta 4)
    cases = [(3, 0), (7, 1), (9, 1), (11, 2), (12, 2), (15, 3), (16, 2)]
    rounds = {
        f"n{n}f{f}": make_round(200 + n, n, zero_global=zero_global, outliers=f) for n, f in cases
    }
    rules = {
        f"n{n}f{f}": (f"n{n}f{f}", "bulyan", {"f": f}, flwr("aggregate_bulyan", num_malicious=f))
        for n, f in cases
    }
    assert run_cases(flower_python, tmp_path, rounds, rules) == len(cases)
