"""A folder's grid.json, the settings its runs were made with: read only from a regular
file (a FIFO planted there, in a folder received from someone else, is one error line,
not a report or a resume that waits for ever for a writer), and needed before runs in
the folder are resumed into a grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.eval.test_hostile_folder import ENTRY, OPTIONS


def test_a_fifo_planted_as_grid_json_is_refused_not_waited_on(tmp_path: Path) -> None:
    folder = tmp_path / "grid"
    folder.mkdir()
    os.mkfifo(folder / "grid.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for extra in (["--report-only"], [*OPTIONS, "--resume"]):  # a report, and a resume
        done = subprocess.run(
            [sys.executable, "-c", ENTRY, "eval", "robustness", *extra, "-o", str(folder)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: grid: "), lines
        assert "grid.json" in lines[0] and "not a regular file" in lines[0]
        assert "use another folder" in lines[0]
    assert not (folder / "report.md").exists()


def test_runs_without_a_grid_json_are_not_resumed_into_a_grid(tmp_path: Path) -> None:
    """Runs copied into a folder (or a folder whose grid.json was lost) were made with
    settings no one can check: before, ``--resume`` took them as this grid's runs (a
    record of 1 round at 0.99 counted as a 7-round run) and wrote a grid.json that
    vouched for them."""
    folder = tmp_path / "grid"
    folder.mkdir()
    record = {"task": "digits", "partition": "iid", "malicious": 0.0, "attack": "none",
              "defence": "fedavg", "seed": 0, "error": "", "accuracy": 0.99,
              "rounds": [{"round": 1, "test_accuracy": 0.99}]}  # fmt: skip
    (folder / "runs-0of1.jsonl").write_text(json.dumps(record) + "\n")
    argv = [*OPTIONS, "--rounds", "7", "-o", str(folder), "--resume"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", ENTRY, "eval", "robustness", *argv],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {folder} holds runs but no grid.json (the settings they were made with), so "
        "they cannot be told comparable: use another folder"
    ]
    assert not (folder / "grid.json").exists() and not (folder / "report.md").exists()
