"""The scientist's path end to end (examples/own-task.sh), run for real as a user would:
`secfl new task`, `secfl simulate`, shielded code and CSV data, `secfl policy init` with
the task's federation.yaml, a 2-of-3 board, a federation of 3 sites under `secfl run`,
a Ctrl-C and a resume, a policy version 2 without any reset, `secfl status` and `secfl
audit show` along the way, and the final model opened by its owner.

Every assertion reads what the processes produced (their output, the metrics file, the
decrypted model), so each one fails when that step did not happen as the docs say.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from tests.clirun import run_script

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # the template's own test is the template's test's business (tests/cli/test_new_task.py)
        "OWN_TASK_SKIP_PYTEST": "1",
    }


def _section(out: str, number: int) -> str:
    """What the script printed under its step ``number`` (up to the next step)."""
    match = re.search(rf"^=== {number}\. .*?$(.*?)(?=^=== \d+\. |\Z)", out, flags=re.M | re.S)
    assert match, f"no step {number} in the output"
    return match.group(1)


def _table_column(text: str, header: str) -> list[float]:
    """A column of the round table `secfl simulate` prints."""
    lines = [line for line in text.splitlines() if "┃" in line or "│" in line]
    names = [cell.strip() for cell in lines[0].split("┃")]
    at = names.index(header)
    return [float(line.split("│")[at]) for line in lines[1:]]


def _metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("own") / "w"
    result = run_script(
        ["bash", str(REPO / "examples" / "own-task.sh"), str(work)], timeout=900, env=_env()
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    return work, result.stdout


pytestmark = [pytest.mark.timeout(960), pytest.mark.heavy(95)]


def test_the_template_trains_in_simulate(ran: tuple[Path, str]) -> None:
    work, out = ran
    step = _section(out, 2)
    table = _table_column(step, "val loss*")
    assert len(table) == 4 and table[-1] < table[0]
    # the table is the metrics file's (rounded), and the loss falls round after round
    rows = _metrics(work / "owner" / "simulate.jsonl")
    losses = [r["val_loss"] for r in rows]
    assert table == pytest.approx(losses, rel=1e-3)  # shown with 4 significant digits
    assert all(b < a for a, b in itertools.pairwise(losses))
    # the task is the template: a package beside task.py, CSV files for each site
    task = work / "owner" / "clinic-risk"
    assert (task / "code" / "clinic_risk" / "model.py").is_file()
    assert sorted(p.name for p in (task / "data" / "site-1").glob("*.csv")) == [
        "part-1.csv", "part-2.csv",
    ]  # fmt: skip


def test_the_policy_from_init_validates_and_carries_the_task_settings(
    ran: tuple[Path, str],
) -> None:
    import yaml

    work, out = ran
    step = _section(out, 6)
    assert "policy clinic-risk version 1: valid" in step
    assert "accepted: policy clinic-risk version 1" in step
    assert "board:    2 of 3 (alice, bob, carol)" in step
    federation = yaml.safe_load((work / "board" / "policy.yaml").read_text())["federation"]
    settings = yaml.safe_load((work / "owner" / "clinic-risk" / "federation.yaml").read_text())
    # what the scientist tried in simulate is what the board signed (rounds overridden)
    assert federation == {**settings["federation"], "rounds": 12, "counter": "rounds"}


def test_ctrl_c_names_the_sealed_round_and_the_restart_resumes_after_it(
    ran: tuple[Path, str],
) -> None:
    work, out = ran
    stopped = re.search(
        r"stopped: round (\d+) of 12 of run 1 \(policy version 1, [0-9a-f]{12}\) is sealed in "
        r"checkpoints \(counter (\d+)\); start the aggregator again with the same command: it "
        r"resumes with round (\d+)",
        _section(out, 8),
    )
    assert stopped, _section(out, 8)
    sealed, counter, resume = (int(g) for g in stopped.groups())
    assert sealed >= 2 and resume == sealed + 1
    run1 = [e for e in _metrics(work / "owner" / "metrics.jsonl") if e["policy_version"] == 1]
    # every round once, in order: none lost, none trained twice across the restart
    assert [e["round"] for e in run1] == list(range(1, 13))
    assert run1[sealed - 1]["counter"] == counter
    log = (work / "owner" / "aggregator.log").read_text()
    assert f"resumed from checkpoint-r{sealed:08d}-c{counter:010d}-" in log
    assert f"training rounds {resume} to 12" in log
    # the sites were not restarted: they waited for the aggregator and joined it again
    for site in ("site-1", "site-2", "site-3"):
        site_log = (work / site / "collaborator.log").read_text()
        assert "waiting for the aggregator" in site_log
        assert site_log.count(f"joined as '{site}'") == 2  # run 1's process, run 2's
        assert f"joined again as '{site}'" in site_log  # the restarted aggregator


def test_status_and_audit_show_during_the_run(ran: tuple[Path, str]) -> None:
    _, out = ran
    step = _section(out, 9)
    stopped = re.search(r"stopped: round (\d+) .* \(counter (\d+)\)", _section(out, 8))
    assert stopped
    sealed, counter = stopped.groups()
    assert re.search(r"^policy clinic-risk: version 1 \(digest [0-9a-f]{16}…\), accepted .* by "
                     r"alice, bob$", step, flags=re.M)  # fmt: skip
    assert f"round: {sealed} committed at counter {counter}, 3 participant(s)" in step
    for service in ("aggregator", "site-1", "site-2", "site-3"):
        assert re.search(rf"^{service} +(aggregator|collaborator) +\S+ \S+ +1 ", step, flags=re.M)
    # audit show: the newest entries, the last of them this round's progress
    rounds = re.findall(r"fl\.round .*", step)
    assert rounds and "counter=" in rounds[-1]


def test_version_2_takes_effect_without_a_reset(ran: tuple[Path, str]) -> None:
    work, out = ran
    step = _section(out, 11)
    assert "federation changes: rounds, run, start_from" in step
    assert "accepted: policy clinic-risk version 2" in step
    metrics = _metrics(work / "owner" / "metrics.jsonl")
    run2 = [e for e in metrics if e["policy_version"] == 2]
    assert [e["round"] for e in run2] == [1, 2, 3, 4, 5] and {e["run"] for e in run2} == {2}
    # the counter goes on from run 1 (the initial model of run 2 is committed first)
    assert run2[0]["counter"] == metrics[len(metrics) - 6]["counter"] + 2
    log = (work / "owner" / "aggregator.log").read_text()
    assert re.search(r"run 2 \(policy version 2, [0-9a-f]{12}\) starts from the previous run's "
                     r"model \(checkpoint-r00000012-", log)  # fmt: skip
    # nobody signed or applied a reset
    assert not list(work.rglob("reset*.json"))
    assert "sign-reset" not in out


def test_the_owner_opens_the_final_model(ran: tuple[Path, str]) -> None:
    work, out = ran
    model = work / "owner" / "model" / "model.safetensors"
    with safe_open(str(model), "numpy") as f:
        meta, names = f.metadata(), sorted(f.keys())
    run2 = [e for e in _metrics(work / "owner" / "metrics.jsonl") if e["policy_version"] == 2]
    best = min(run2, key=lambda e: e["val_loss"])
    assert meta["best_round"] == str(best["round"]) and meta["objective_metric"] == "val_loss"
    assert float(meta["best_objective"]) == pytest.approx(best["val_loss"])
    step = _section(out, 12)
    assert f"tensors: {', '.join(names)}" in step and names
    assert f"best round: {best['round']} (val_loss " in step


def test_status_and_audit_show_at_the_end(ran: tuple[Path, str]) -> None:
    work, out = ran
    step = _section(out, 13)
    assert re.search(r"^policy clinic-risk: version 2 \(digest [0-9a-f]{16}…\), accepted .* by "
                     r"alice, carol$", step, flags=re.M)  # fmt: skip
    assert "run: 2\n" in step
    last = _metrics(work / "owner" / "metrics.jsonl")[-1]
    assert re.search(rf"round: 5 committed at counter {last['counter']}, 3 participant\(s\), "
                     r"loss [0-9.]+ \(min\); .* \(run 2, policy version 2\)", step)  # fmt: skip
    for service in ("aggregator", "site-1", "site-2", "site-3"):
        assert re.search(rf"^{service} +(aggregator|collaborator) +\S+ \S+ +2 ", step, flags=re.M)
    # audit show --event fl.round: one entry per committed round of both runs, verified
    shown = re.findall(r"^ +\d+ +\S+ \S+ +(\S+) ", step, flags=re.M)
    assert shown and set(shown) == {"fl.round"}
    assert len(shown) == len(_metrics(work / "owner" / "metrics.jsonl"))
    assert re.search(r"audit verify: OK, \d+ entries", step)
