"""The robustness evaluation on a tiny grid: every output written, the figures
computed from the runs, defences whose preconditions fail reported as such."""

from __future__ import annotations

import csv
import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from secfl.cli.main import main
from secfl.errors import FlError
from secfl.eval.folder import load_records
from secfl.eval.grid import FULL, QUICK, Evaluation, Grid
from secfl.eval.options import GridOptions, assemble_grid
from secfl.eval.report import write_results


def test_a_tiny_grid_writes_an_honest_report(tmp_path: Path) -> None:
    grid = Grid(tasks=["digits"], clients=10, partitions=[None], malicious=[0.0, 0.2],
                attacks=["sign-flip", "backdoor"], defences=["fedavg", "bulyan", "clone-audit"],
                seeds=[0], rounds=3, epochs=3)  # fmt: skip
    ev = Evaluation(grid)
    seen: list[str] = []
    ev.run(lambda i, n, label: seen.append(label))
    assert len(seen) == len(ev.records) == 3 * (1 + 2)
    assert ev.pending() == []
    paths = write_results(ev, tmp_path, "secfl eval robustness --test")
    with open(paths["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9
    clean = next(r for r in rows if r["defence"] == "fedavg" and r["attack"] == "none")
    assert float(clean["gap_to_clean_fedavg"]) == 0.0
    # Bulyan needs n >= 4f + 3: with 10 sites and f = 2 it cannot run, and says so
    bulyan = [r for r in rows if r["defence"] == "bulyan" and r["attack"] != "none"]
    assert all("bulyan" in r["error"] and not r["accuracy"] for r in bulyan)
    audit = next(r for r in rows if r["defence"] == "clone-audit" and r["attack"] == "sign-flip")
    assert float(audit["tpr"]) == 1.0
    backdoor = next(r for r in rows if r["defence"] == "fedavg" and r["attack"] == "backdoor")
    assert 0.0 <= float(backdoor["backdoor_success"]) <= 1.0
    report = paths["report"].read_text()
    assert "## digits, iid, 20% malicious" in report and "Not applicable here: bulyan" in report
    # the overview: the worst case over attacks per defence, Bulyan not applicable
    worst = min(float(r["accuracy"]) for r in rows
                if r["defence"] == "fedavg" and r["attack"] != "none")  # fmt: skip
    line = next(x for x in report.splitlines() if x.startswith("| digits | iid | 20% |"))
    assert f"{worst:.3f}" in line.split("|")[4] and line.split("|")[5].strip() == "n/a"
    assert int(audit["fallbacks"]) >= 0 and "clone-audit TPR / FPR / guard" in report
    doc = json.loads(paths["json"].read_text())
    assert doc["command"] == "secfl eval robustness --test" and len(doc["runs"]) == 9
    assert all(len(r["rounds"]) == 3 for r in doc["runs"] if not r["error"])
    assert Path(paths["png:digits:iid"]).read_bytes().startswith(b"\x89PNG")


TINY = ["eval", "robustness", "--tasks", "digits", "--clients", "10", "--partitions", "iid",
        "--malicious", "0,0.2", "--attacks", "sign-flip,gaussian", "--defences",
        "fedavg,median", "--seeds", "1", "--rounds", "2", "--epochs", "1"]  # fmt: skip


def test_a_grid_split_across_workers_and_resumed_runs_every_cell_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grid"
    cells = 2 * (1 + 2)  # defences x (clean + attacks)
    assert main([*TINY, "-o", str(out), "--shard", "0/2"]) == 0  # one worker's half
    half = load_records(out)
    assert len(half) == cells // 2 and not (out / "report.md").exists()
    # a grid under way is reported as it stands, from its folder alone (the grid and
    # the command that made it are recorded there), and nothing more is run
    assert main(["eval", "robustness", "-o", str(out), "--report-only"]) == 0
    assert f"{cells - cells // 2} runs of the grid are still to go" in capsys.readouterr().out
    partial = (out / "report.md").read_text()
    assert f"**Partial: {cells // 2} of the grid's {cells} runs**" in partial
    assert "--shard" not in partial and " ".join(TINY[2:]) in partial
    assert len(load_records(out)) == cells // 2
    # a run cut short by a kill leaves a partial line: skipped, and run again
    with open(out / "runs-0of2.jsonl", "a") as fh:
        fh.write('{"task": "digits", "partit')
    # without --resume the folder's runs are not silently mixed with new ones
    assert main([*TINY, "-o", str(out)]) == 1
    assert "already holds runs" in capsys.readouterr().err
    # nor with runs of other settings
    assert main([*TINY[:-2], "--epochs", "3", "-o", str(out), "--resume"]) == 1
    assert "other settings" in capsys.readouterr().err
    assert main([*TINY, "-o", str(out), "--resume", "--workers", "2"]) == 0
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == cells
    names = {(r["attack"], r["defence"]) for r in rows}
    assert len(names) == cells and all(r["accuracy"] for r in rows)
    kept = {json.dumps(r, sort_keys=True) for r in load_records(out)}
    assert {json.dumps(r, sort_keys=True) for r in half} <= kept  # kept, not run again
    assert len(load_records(out)) == cells
    report = (out / "report.md").read_text()
    assert f"Runs: {cells}" in report and "Partial" not in report
    assert "--workers" not in report and "--tasks digits" in report


def test_bad_worker_settings_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra, match in (
        (["--shard", "2/2"], "--shard"),
        (["--workers", "0"], "--workers"),
        (["--workers", "100000"], "give 1 to 256"),  # forked them all, before any run
        (["--report-only"], "no grid.json"),
    ):
        assert main([*TINY, "-o", str(tmp_path / "x"), *extra]) == 1
        assert match in capsys.readouterr().err
        assert not (tmp_path / "x").exists()  # refused before the folder is claimed
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "grid.json").write_text("[1, 2")
    assert main([*TINY, "-o", str(tmp_path / "x"), "--resume"]) == 1
    assert "not a grid's settings" in capsys.readouterr().err


def test_a_run_whose_model_breaks_is_a_result_not_a_crash() -> None:
    """A defence can let the global model break (a learning rate or an attack that no site
    can train on any more): the run ends there, marked, with the accuracy it was left
    with, and the grid goes on (it used to stop the worker)."""
    from secfl.eval.grid import Run
    from secfl.eval.simulation import Scenario, simulate

    s = Scenario(task="digits", clients=4, rounds=3, lr=1e20, epochs=1)
    out = simulate(s)
    assert len(out.rounds) == 1 and out.rounds[0]["diverged"] is True
    assert 0.0 <= out.final["test_accuracy"] <= 0.3  # the untrained model
    row = Run(s, s.label(), "fedavg", out).row()
    assert row["diverged_round"] == 1 and not row["error"]


def test_a_command_line_s_grid_is_the_preset_with_its_changes() -> None:
    options = GridOptions(tasks="digits, fashion-mnist", partitions="iid, 0.5",
                          malicious="0,0.2", seeds=2, rounds=4)  # fmt: skip
    grid, argv, command = assemble_grid(options, quick=True, out="r")
    assert grid == dataclasses.replace(
        QUICK, tasks=["digits", "fashion-mnist"], partitions=[None, 0.5],
        malicious=[0.0, 0.2], seeds=[0, 1], rounds=4,
    )  # fmt: skip
    assert argv == ["--quick", "--tasks", "digits, fashion-mnist", "--partitions", "iid, 0.5",
                    "--malicious", "0,0.2", "--seeds", "2", "--rounds", "4", "-o", "r"]  # fmt: skip
    assert command == "secfl eval robustness " + shlex.join(argv)
    assert assemble_grid(GridOptions(), out="r")[0] == FULL
    # a report on a folder is on the folder's grid, under its command, unless told otherwise
    stored = (grid, "secfl eval robustness --quick -o r")
    assert assemble_grid(GridOptions(), out="r", stored=stored) == (grid, ["-o", "r"], stored[1])
    changed, _, command = assemble_grid(GridOptions(epochs=2), out="r", stored=stored)
    assert changed == dataclasses.replace(grid, epochs=2)
    assert command == "secfl eval robustness --epochs 2 -o r"


def test_grid_options_that_are_not_numbers_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for option, value in (("partitions", "iid,0.5x"), ("malicious", "0,a")):
        with pytest.raises(FlError, match=f"^--{option}: '{value}' is not a comma-separated"):
            GridOptions(**{option: value}).apply(QUICK)
        argv = ["eval", "robustness", "--quick", f"--{option}", value, "-o", str(tmp_path)]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: --{option}: ") and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_a_report_folder_that_cannot_be_made_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    assert main([*TINY, "-o", str(tmp_path / "taken")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'taken'}: cannot write grid.json: ")
    assert len(err.splitlines()) == 1
