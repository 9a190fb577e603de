"""The figures of a run's record (a line of ``runs*.jsonl``) as the report computes with
them: a figure that no run makes (NaN, an infinity, a 400-digit integer, an accuracy
of 5) is a malformed line, skipped with a warning like any other, not shown as "nan",
ranked first, or met as an OverflowError traceback while averaging."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from secfl.cli.main import main
from secfl.eval.folder import load_records
from tests.eval.test_hostile_folder import ENTRY, grid_folder

GOOD: dict[str, Any] = {
    "task": "digits", "partition": "iid", "malicious": 0.0, "attack": "none",
    "defence": "fedavg", "seed": 0, "error": "", "accuracy": 0.9, "backdoor_success": "",
    "tpr": None, "fpr_mean": "", "audit_ratio": "", "diverged_round": "", "seconds": 1.5,
    "rounds": [{"round": 1, "test_accuracy": 0.9}],
}  # fmt: skip


def line(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode() + b"\n"


BAD = {
    "accuracy-nan": line(accuracy=float("nan")),
    "accuracy-infinity": line(accuracy=float("inf")),
    "accuracy-huge-integer": line(accuracy=10**400),
    "accuracy-huge-float": line(accuracy=1e308),
    "accuracy-above-one": line(accuracy=5.0),
    "accuracy-negative": line(accuracy=-0.1),
    "seconds-huge-integer": line(seconds=10**400),
    "seconds-nan": line(seconds=float("nan")),
    "seconds-negative": line(seconds=-3.0),
    "tpr-nan": line(tpr=float("nan")),
    "tpr-above-one": line(tpr=2.0),
    "fpr-infinity": line(fpr_mean=float("-inf")),
    "audit-ratio-huge": line(audit_ratio=10**30),
    "diverged-round-nan": line(diverged_round=float("nan")),
    "malicious-above-one": line(malicious=1.5),
}


@pytest.mark.parametrize("bad", list(BAD.values()), ids=list(BAD))
def test_a_figure_out_of_its_range_is_a_malformed_line(
    tmp_path: Path, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    folder = grid_folder(tmp_path / "grid")
    (folder / "runs-0of1.jsonl").write_bytes(line() + bad)
    with caplog.at_level(logging.WARNING, logger="secfl.eval.grid"):
        assert load_records(folder) == [GOOD]
    assert "skipping a malformed line" in caplog.text
    # alone, it is a run still to go: the report is written, without it
    (folder / "runs-0of1.jsonl").write_bytes(bad)
    assert main(["eval", "robustness", "--report-only", "-o", str(folder)]) == 0
    report = (folder / "report.md").read_text()
    assert "**Partial: 0 of the grid's 1 runs**" in report
    assert "nan" not in report and "inf" not in report


def test_the_figures_a_run_makes_are_kept(tmp_path: Path) -> None:
    folder = grid_folder(tmp_path / "grid")
    edges = [line(accuracy=0, tpr=1, fpr_mean=0.0, seconds=0, audit_ratio=351.5,
                  diverged_round=3, backdoor_success=1.0)]  # fmt: skip
    (folder / "runs-0of1.jsonl").write_bytes(b"".join(edges))
    assert len(load_records(folder)) == 1


def test_a_huge_figure_is_no_traceback_from_the_command(tmp_path: Path) -> None:
    """Two records of 1e308 (finite: their sum is not) and one of 10**400: before, the
    report stopped with "OverflowError: int too large to convert to float"."""
    folder = grid_folder(tmp_path / "grid")
    (folder / "runs-0of1.jsonl").write_bytes(
        line(accuracy=1e308) + line(accuracy=1e308) + line(seconds=10**400)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", ENTRY, "eval", "robustness", "--report-only", "-o", str(folder)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "1 runs of the grid are still to go" in done.stdout


def test_the_published_records_are_all_kept() -> None:
    """Every record of the grids in docs/results passes the ranges."""
    results = Path(__file__).parents[2] / "docs" / "results"
    for folder in sorted(p for p in results.iterdir() if p.is_dir()):
        lines = sum(len(p.read_bytes().splitlines()) for p in folder.glob("runs*.jsonl"))
        assert lines > 0 and len(load_records(folder)) == lines, folder.name
