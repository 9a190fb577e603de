"""secfl's rules as Flower strategies give what secfl's own strategies give, on the same
inputs, through a real Flower round (``configure_train``, replies, ``aggregate_train``).

The rounds are written here (``.npz``, float64 and float32, a fixed seed; some updates
far from the others so that the robust rules have something to leave out); secfl's own
strategies aggregate them in this venv; ``strategy_runner.py`` runs
``secfl.flower.SecflStrategy`` on them in the Flower venv (node IDs 101, 102, ... are
the senders). The two must agree exactly: the same code on the same numbers, so any
difference is the Flower side's conversion (names, order, dtypes, weights, senders).
For the rules Flower also has, its own strategy runs on the same replies too.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfl.fl.strategies import Update, get_strategy

RUNNER = Path(__file__).with_name("strategy_runner.py")
NAMES = ("w", "b", "k")

#: (job id, case, rule, settings); each runs through SecflStrategy and secfl directly.
RULES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("fedavg", "n7", "fedavg", {}),
    ("median", "n7", "median", {}),
    ("trimmed", "n7", "trimmed-mean", {"beta": 0.2}),
    ("krum", "n7", "krum", {"f": 2}),
    ("multikrum", "n7", "multi-krum", {"f": 2, "m": 3}),
    ("bulyan", "n11", "bulyan", {"f": 2}),
    ("clipping", "n7", "centered-clipping", {"tau": 1.0}),
    ("audit", "n11", "clone-audit", {"base": "median", "clones": 12, "threshold": 1.0}),
    ("median32", "f32", "median", {}),
]
#: Flower's own strategies on the same replies, against the secfl rule named.
FLOWER = [
    ("flower-median", "n7", "FedMedian", {}, "median"),
    ("flower-trimmed", "n7", "FedTrimmedAvg", {"beta": 0.2}, "trimmed"),
]


def _case(seed: int, n: int, outliers: int, dtype: type) -> tuple[dict[str, np.ndarray], list]:
    rng = np.random.default_rng(seed)
    shapes = {"w": (4, 3), "b": (3,), "k": (2, 2, 2)}
    global_params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    updates = []
    for i in range(n):
        scale = 8.0 if i < outliers else 1.0
        params = {
            k: (v + scale * rng.standard_normal(v.shape)).astype(dtype)
            for k, v in global_params.items()
        }
        updates.append((params, int(rng.integers(1, 500))))
    return global_params, updates


def _loss(target: dict[str, np.ndarray]) -> Any:
    def score(params: dict[str, np.ndarray]) -> float:
        loss = float(sum(np.mean((params[k] - target[k]) ** 2) for k in target)) + 1e-3
        return -math.log(min(max(loss, 1e-9), 1e9))

    return score


@pytest.fixture(scope="module")
def results(flower_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("strategies")
    cases = {
        "n7": _case(1, 7, 2, np.float64),
        "n11": _case(2, 11, 2, np.float64),
        "f32": _case(3, 7, 2, np.float32),
    }
    target = {k: np.zeros_like(v, dtype=np.float64) for k, v in cases["n7"][0].items()}
    np.savez(root / "target.npz", **target)
    spec: dict[str, Any] = {"names": list(NAMES), "cases": {}, "jobs": []}
    for name, (global_params, updates) in cases.items():
        np.savez(root / f"{name}-global.npz", **global_params)
        for i, (params, _) in enumerate(updates):
            np.savez(root / f"{name}-{i}.npz", **params)
        spec["cases"][name] = {"counts": [c for _, c in updates]}
    for job, case, rule, settings in RULES:
        spec["jobs"].append({"id": job, "case": case, "kind": "secfl", "rule": rule,
                             "settings": settings})  # fmt: skip
    for job, case, kind, settings, _ in FLOWER:
        spec["jobs"].append({"id": job, "case": case, "kind": kind, "settings": settings})
    (root / "jobs.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [str(flower_python), str(RUNNER), str(root)], capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, Any] = {"cases": cases, "target": target}
    for job in spec["jobs"]:
        with np.load(root / f"out-{job['id']}.npz", allow_pickle=False) as z:
            out[job["id"]] = ({k: z[k] for k in z.files}, json.loads(
                (root / f"out-{job['id']}.json").read_text()))  # fmt: skip
    return out


def _secfl(results: dict[str, Any], case: str, rule: str, settings: dict[str, Any]) -> Any:
    global_params, updates = results["cases"][case]
    strategy = get_strategy(rule, **settings)
    if hasattr(strategy, "score"):
        strategy.score = _loss(results["target"])
    ups = [Update(str(101 + i), p, c) for i, (p, c) in enumerate(updates)]
    return strategy, strategy.aggregate(1, global_params, ups)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("job", "case", "rule", "settings"), RULES, ids=[r[0] for r in RULES])
def test_flower_strategy_equals_secfl_rule(
    results: dict[str, Any], job: str, case: str, rule: str, settings: dict[str, Any]
) -> None:
    strategy, ours = _secfl(results, case, rule, settings)
    theirs, meta = results[job]
    assert meta["order"] == list(NAMES)
    for name in NAMES:
        assert theirs[name].dtype == ours[name].dtype
        np.testing.assert_array_equal(theirs[name], ours[name])
    selected = strategy.selected()
    if selected is not None:  # Krum, Multi-Krum, Bulyan: the same updates kept
        assert meta["kept"] == [str(int(s) - 101) for s in selected]
    if rule == "clone-audit":
        # The two far-away updates (0 and 1) are among those left out, by both.
        assert {"101", "102"} <= set(strategy.excluded)
        left_out = {str(int(s) - 101) for s in strategy.excluded}
        assert sorted(meta["kept"]) == sorted(set(map(str, range(11))) - left_out)


@pytest.mark.parametrize(("job", "case", "kind", "settings", "same_as"), FLOWER,
                         ids=[f[0] for f in FLOWER])  # fmt: skip
def test_secfl_rules_agree_with_flowers_own(
    results: dict[str, Any], job: str, case: str, kind: str, settings: dict[str, Any],
    same_as: str,
) -> None:  # fmt: skip
    flower, _ = results[job]
    ours, _ = results[same_as]
    for name in NAMES:
        np.testing.assert_allclose(flower[name], ours[name], rtol=1e-12, atol=0)


@pytest.mark.timeout(300)
def test_one_bad_reply_is_left_out_not_the_round(flower_python: Path) -> None:
    """Found by a hostile review: NaN, a value of 1e155, another dtype, a num-examples of
    inf, NaN, 0 or 1e300, or a loss sent as a list failed `aggregate_train`, and with it
    the ServerApp (a real Flower round; the bad node is 104)."""
    done = subprocess.run(
        [str(flower_python), str(Path(__file__).with_name("bad_reply_probe.py"))],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out.pop("krum-short") == {"kept": [], "w": None}  # the model kept, the run alive
    assert out.pop("fortran") == {"kept": ["101", "102", "103", "104"], "same": True}
    # A second review: one node's reply of another shape ended the ServerApp (Flower's
    # check of all replies together), and one node set the reported evaluation loss.
    for case in [k for k in out if k.startswith("eval-")]:
        got = out.pop(case)
        assert "error" not in got, (case, got)
        loss = got["metrics"]["loss"]  # a median, one vote each: within the honest ones'
        assert 0.501 <= loss <= 0.503, (case, got)
    for case in ("extra-metric", "missing-loss"):  # metrics, not the model: kept
        got = out.pop(case)
        assert got["kept"] == ["101", "102", "103", "104"], (case, got)
        assert got["metrics"] == {"loss": 0.5}, (case, got)  # what most nodes report
    for case, got in out.items():
        assert got.get("kept") == ["101", "102", "103"], (case, got)
        assert got["w"] == [1.02] * 4, (case, got)  # the honest median


@pytest.mark.timeout(300)
def test_an_error_reply_is_logged_without_its_reason(flower_python: Path) -> None:
    """Found by a review: FedAvg's check of the replies logged each error reply's
    reason, the ClientApp's exception message (it may quote the site's data), on the
    SuperLink's host. A real Flower round, one node replying with an error."""
    done = subprocess.run(
        [str(flower_python), str(Path(__file__).with_name("error_reason_probe.py"))],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"kept": ["101", "102", "103"]}
    assert "node 104 replied with error code 0" in printed, printed
    assert "patient" not in printed and "KeyError" not in printed, printed


@pytest.mark.timeout(300)
def test_a_clientapps_exception_reaches_neither_the_log_nor_the_reply(
    flower_python: Path, tmp_path: Path
) -> None:
    """Found by a review: ``flwr-clientapp`` logged a ClientApp's exception with its
    traceback (the app's files and source lines) on the site's host and sent its
    message (it may quote the data) to the SuperLink as the reply's reason. Under
    secfl the executor starts it through ``secfl.flower._app_process``."""
    (tmp_path / "app.py").write_text(
        "from flwr.clientapp import ClientApp\n"
        "app = ClientApp()\n"
        "@app.train()\n"
        "def train(msg, context):\n"
        "    raise KeyError('patient alice-smith, HIV+, viral load 52000')\n"
    )
    done = subprocess.run(
        [str(flower_python), str(Path(__file__).with_name("app_error_probe.py")), str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert (
        "REASON <class 'secfl.flower._app_process.AppFailed'>:<'ClientApp raised KeyError"
        in printed
    )
    assert "ClientApp raised an exception" in printed  # Flower's line, with a traceback ...
    assert "patient" not in printed and "raise KeyError" not in printed, printed  # ... of ours
    assert "app.py" not in printed, printed


def test_a_hidden_app_exception_keeps_the_exit_code_the_app_chose(flower_python: Path) -> None:
    """Found by a review of the fix above: an app's own ``AppExitException`` subclass
    (a deliberate exit, code 50) became Flower's base class, exit code -1 (an error)."""
    program = (
        "from flwr.app.exception import AppExitException\n"
        "from secfl.flower._app_process import hidden\n"
        "class Done(AppExitException):\n"
        "    exit_code = 50\n"
        "h = hidden(Done('patient alice'), 'ServerApp')\n"
        "print(isinstance(h, AppExitException), h.exit_code, 'patient' in str(h))\n"
    )
    done = subprocess.run([str(flower_python), "-c", program], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "50", "False"]


def test_an_apps_exit_message_is_not_printed(tmp_path: Path) -> None:
    """``sys.exit("text")`` in an app (Flower lets SystemExit through) had Python print
    the text on the host's stderr; a numeric exit code is kept."""
    program = (
        "import sys\n"
        "from secfl.flower import _app_process\n"
        "def app():\n"
        "    sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else sys.argv[1])\n"
        "_app_process.ENTRIES['flwr-clientapp'] = lambda: app\n"
        "sys.argv = ['x', 'flwr-clientapp', sys.argv[1]]\n"
        "_app_process.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", program, "patient alice, HIV+"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1
    assert "patient" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "the app exited with a message" in done.stderr
    done = subprocess.run([sys.executable, "-c", program, "7"], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert (done.returncode, done.stderr) == (7, "")


def test_the_flower_audit_draws_with_a_secret_of_its_own(flower_python: Path) -> None:
    """Found by a hostile review of the audit: its draws (clones, validation rows, the
    detector's coordinates) came from the seed alone, which the FAB every node runs
    holds. ``SecflStrategy`` draws a secret in the ServerApp's process; ``secret=False``
    reproduces a run from the seed."""
    program = (
        "from secfl.flower._strategies import SecflStrategy\n"
        "a = SecflStrategy('clone-audit', {'base': 'median', 'seed': 7})\n"
        "b = SecflStrategy('clone-audit', {'base': 'median', 'seed': 7})\n"
        "c = SecflStrategy('clone-audit', {'base': 'median', 'seed': 7}, secret=False)\n"
        "draw = lambda s: int(s.rule._rng(1).integers(1 << 62))\n"
        "print(len(a.rule.secret), a.rule.secret != b.rule.secret, draw(a) != draw(b),\n"
        "      c.rule.secret is None, draw(c) == draw(SecflStrategy('clone-audit',\n"
        "      {'base': 'median', 'seed': 7}, secret=False)))\n"
    )
    done = subprocess.run([str(flower_python), "-c", program], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["32", "True", "True", "True", "True"]
