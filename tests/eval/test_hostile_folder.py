"""A grid's report folder holds what anyone put there, and a command line what anyone
typed: planted files (a FIFO, symbolic links), edited run records and grid.json, text
made to look like Markdown or a spreadsheet formula, and settings out of range are
each refused in one line or skipped with a warning; nothing hangs, crashes with a
traceback, writes through a link or carries markup into the report."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secfl.cli.main import main
from secfl.errors import FlError
from secfl.eval.folder import GridFolder, append_record, load_records
from secfl.eval.grid import ATTACKS, DEFENCES, FULL, QUICK
from secfl.eval.options import GridOptions, assemble_grid

#: The bounds (folder.MAX_RECORD_BYTES, options.MAX_CELLS), spelled out: this file also
#: runs against code without them.
MAX_RECORD_BYTES = 1 << 20
MAX_CELLS = 100_000
ENTRY = "import sys; from secfl.cli.main import main; sys.exit(main(sys.argv[1:]))"
#: One run of digits with FedAvg: a folder of its grid is reported in seconds.
OPTIONS = ["--tasks", "digits", "--clients", "4", "--partitions", "iid", "--malicious", "0",
           "--attacks", "label-flip", "--defences", "fedavg", "--seeds", "1", "--rounds", "1",
           "--epochs", "1", "--samples", "200"]  # fmt: skip
GOOD = {"task": "digits", "partition": "iid", "malicious": 0.0, "attack": "none",
        "defence": "fedavg", "seed": 0, "error": "", "accuracy": 0.9, "backdoor_success": "",
        "tpr": None, "seconds": 1.5, "rounds": [{"round": 1, "test_accuracy": 0.9}]}  # fmt: skip


def grid_folder(path: Path) -> Path:
    """A real folder of the one-run grid (its grid.json as the command writes it)."""
    options = GridOptions(tasks="digits", clients=4, partitions="iid", malicious="0",
                          attacks="label-flip", defences="fedavg", seeds=1, rounds=1,
                          epochs=1, samples=200)  # fmt: skip
    grid, _, command = assemble_grid(options, out=str(path))
    GridFolder(path, grid, command).claim()
    return path


def report(folder: Path) -> int:
    return main(["eval", "robustness", "--report-only", "-o", str(folder)])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_fifo_planted_as_a_runs_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    folder = grid_folder(tmp_path / "grid")
    os.mkfifo(folder / "runs-x.jsonl")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for extra in (["--report-only"], [*OPTIONS, "--resume"]):  # a report, and a resume
        done = subprocess.run(
            [sys.executable, "-c", ENTRY, "eval", "robustness", *extra, "-o", str(folder)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "runs-x.jsonl" in done.stderr and "not a regular file" in done.stderr


def test_a_runs_file_reached_through_a_link_is_refused(tmp_path: Path) -> None:
    folder = grid_folder(tmp_path / "grid")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps(GOOD) + "\n")
    (folder / "runs-0of1.jsonl").symlink_to(elsewhere)
    with pytest.raises(FlError, match="a symbolic link"):
        load_records(folder)
    # nor is a run appended through it
    with pytest.raises(FlError, match="a symbolic link.*--resume"):
        append_record(folder / "runs-0of1.jsonl", GOOD)
    assert elsewhere.read_text() == json.dumps(GOOD) + "\n"


def test_the_report_replaces_links_planted_in_the_folder_never_writes_through(
    tmp_path: Path,
) -> None:
    folder = grid_folder(tmp_path / "grid")
    (folder / "runs-0of1.jsonl").write_text(json.dumps(GOOD) + "\n")
    names = ["report.md", "results.csv", "results.json", "worst-case-digits-iid.png"]
    victims = {}
    for name in names:
        victims[name] = tmp_path / f"precious-{name}"
        victims[name].write_text("precious notes\n")
        (folder / name).symlink_to(victims[name])
    assert report(folder) == 0
    for name in names:
        assert victims[name].read_text() == "precious notes\n"
        assert not (folder / name).is_symlink() and (folder / name).stat().st_size > 0
    assert "Runs: 1" in (folder / "report.md").read_text()


@pytest.mark.parametrize(
    "line",
    [
        b"\xff\xfe not UTF-8\n",
        json.dumps({**GOOD, "malicious": "0"}).encode() + b"\n",
        json.dumps({**GOOD, "accuracy": "0.9"}).encode() + b"\n",
        json.dumps({**GOOD, "seed": 0.5}).encode() + b"\n",
        json.dumps({**GOOD, "malicious": 10**400}).encode() + b"\n",
        json.dumps({**GOOD, "seed": True}).encode() + b"\n",
        json.dumps({**GOOD, "malicious": False}).encode() + b"\n",
        json.dumps({**GOOD, "rounds": 5}).encode() + b"\n",
        json.dumps({**GOOD, "rounds": [1, 2]}).encode() + b"\n",
        json.dumps({**GOOD, "tpr": [0.5]}).encode() + b"\n",
        json.dumps({**GOOD, "error": 3}).encode() + b"\n",
        json.dumps({k: v for k, v in GOOD.items() if k != "defence"}).encode() + b"\n",
        b"[1, 2]\n",
        b'{"task": "digits", "malicious": ' + b"1" * (MAX_RECORD_BYTES + 10) + b"}\n",
    ],
    ids=[
        "not-utf8",
        "malicious-text",
        "accuracy-text",
        "seed-float",
        "malicious-huge",
        "seed-bool",
        "malicious-bool",
        "rounds-number",
        "rounds-of-numbers",
        "tpr-list",
        "error-number",
        "no-defence",
        "a-list",
        "too-long",
    ],
)
def test_an_edited_record_is_skipped_with_a_warning_and_the_report_is_written(
    tmp_path: Path, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    folder = grid_folder(tmp_path / "grid")
    # the bad line between two good ones: only it is lost
    good = json.dumps(GOOD).encode() + b"\n"
    (folder / "runs-0of1.jsonl").write_bytes(good + line + good)
    with caplog.at_level(logging.WARNING, logger="secfl.eval.grid"):
        assert load_records(folder) == [GOOD, GOOD]
    assert "skipping a malformed line" in caplog.text
    # the bad line alone: the report says the run is still to go, no traceback
    (folder / "runs-0of1.jsonl").write_bytes(line)
    assert report(folder) == 0
    assert "**Partial: 0 of the grid's 1 runs**" in (folder / "report.md").read_text()


def test_the_published_runs_are_all_kept() -> None:
    """The records the grids in docs/results were made of pass every check."""
    folder = Path(__file__).parents[2] / "docs" / "results" / "fashion-12k-target"
    lines = sum(len(p.read_bytes().splitlines()) for p in folder.glob("runs*.jsonl"))
    assert lines > 0 and len(load_records(folder)) == lines


def test_an_edited_grid_json_of_millions_of_runs_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = grid_folder(tmp_path / "grid")
    doc = json.loads((folder / "grid.json").read_text())
    grid = doc["grid"]
    grid["partitions"] = [None, *(0.1 * (i + 1) for i in range(39))]
    grid["malicious"] = [0.01 * (i + 1) for i in range(40)]
    grid.update(seeds=list(range(40)), attacks=ATTACKS, defences=DEFENCES)
    (folder / "grid.json").write_text(json.dumps(doc))
    assert len((folder / "grid.json").read_bytes()) < 2000
    assert report(folder) == 1
    assert f"more than {MAX_CELLS}" in one_line_error(capsys)
    grid.update(partitions=[None], malicious=[0.0], seeds=list(range(1001)))  # a long list
    (folder / "grid.json").write_text(json.dumps(doc))
    assert report(folder) == 1
    assert "the grid's 'seeds': 1001 entries" in one_line_error(capsys)


def test_options_of_millions_of_runs_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "grid")
    fracs = ",".join(str(0.0001 * i) for i in range(1, 1001))
    assert main(["eval", "robustness", "--malicious", fracs, "-o", out]) == 1
    assert f"more than {MAX_CELLS}" in one_line_error(capsys)
    assert main(["eval", "robustness", "--seeds", "1001", "-o", out]) == 1
    assert "--seeds: 1001" in one_line_error(capsys)
    assert not (tmp_path / "grid").exists()  # refused before anything is written


def test_markup_from_the_folder_stays_text_in_report_md(tmp_path: Path) -> None:
    folder = grid_folder(tmp_path / "grid")
    doc = json.loads((folder / "grid.json").read_text())
    doc["command"] = "x`\n\n<img src=x onerror=alert(1)>\n\n## Overview\n\n| a | **0.999** |\n`"
    (folder / "grid.json").write_text(json.dumps(doc))
    error = "<script>alert(1)</script>\n## Injected | `code`"
    (folder / "runs-0of1.jsonl").write_text(json.dumps({**GOOD, "error": error}) + "\n")
    assert report(folder) == 0
    text = (folder / "report.md").read_text()
    assert "<img" not in text and "<script" not in text and "&lt;script>" in text
    assert "**0.999**" not in text and "\n## Injected" not in text
    assert text.count("## Overview") == 1 and "\\`code\\`" in text
    command = next(x for x in text.splitlines() if x.startswith("Command: "))
    assert "onerror" in command  # the whole command, on its own line


def test_a_plain_command_stays_a_code_span(tmp_path: Path) -> None:
    folder = grid_folder(tmp_path / "grid")
    (folder / "runs-0of1.jsonl").write_text(json.dumps(GOOD) + "\n")
    assert report(folder) == 0
    command = json.loads((folder / "grid.json").read_text())["command"]
    assert f"Command: `{command}`" in (folder / "report.md").read_text()


def test_results_csv_has_known_columns_and_no_formulas(tmp_path: Path) -> None:
    folder = grid_folder(tmp_path / "grid")
    record = {**GOOD, "error": '=HYPERLINK("http://evil","x")', "=cmd|' /C calc'!A0": "1",
              "extra": "x"}  # fmt: skip
    (folder / "runs-0of1.jsonl").write_text(json.dumps(record) + "\n")
    assert report(folder) == 0
    with open(folder / "results.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:7] == ["task", "partition", "malicious", "attack", "defence", "seed", "error"]
    assert "extra" not in rows[0] and not any(c.startswith("=") for c in rows[0])
    assert rows[1][6] == "'" + record["error"]
    for cell in ("+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        (folder / "runs-0of1.jsonl").write_text(json.dumps({**GOOD, "error": cell}) + "\n")
        assert report(folder) == 0
        with open(folder / "results.csv", newline="") as fh:
            assert next(csv.DictReader(fh))["error"] == "'" + cell


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--rounds", "0", "--rounds: 0"),
        ("--epochs", "0", "--epochs: 0"),
        ("--clients", "0", "--clients: 0"),
        ("--clients", "1", "--clients: 1"),
        ("--malicious", "1.5", "--malicious: 1.5"),
        ("--malicious", "-0.5", "--malicious: -0.5"),
        ("--malicious", "0.5", "--malicious: 0.5"),
        ("--malicious", "nan", "--malicious: nan"),
        ("--seeds", "0", "--seeds: 0"),
        ("--partitions", "nan", "--partitions: nan"),
        ("--partitions", "0", "--partitions: 0"),
        ("--partitions", "-1", "--partitions: -1"),
        ("--samples", "0", "--samples: 0"),
    ],
)
def test_an_option_out_of_range_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, says: str
) -> None:
    i = OPTIONS.index(option)
    argv = [*OPTIONS[:i], option, value, *OPTIONS[i + 2 :]]
    assert main(["eval", "robustness", *argv, "-o", str(tmp_path / "grid")]) == 1
    assert says in one_line_error(capsys)
    assert not list((tmp_path).glob("grid/runs*"))  # nothing was run


def test_an_option_out_of_range_is_one_line_from_the_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", ENTRY, "eval", "robustness", *OPTIONS, "--rounds", "0",
         "-o", str(tmp_path / "grid")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["error: --rounds: 0 rounds; give 1 or more"]


def test_a_grid_counts_its_runs_without_making_them() -> None:
    """The bound on runs (and the report's "of N runs") counts what the grid runs."""
    for grid in (QUICK, FULL):
        assert grid.cells() == sum(1 for _ in grid.scenarios())
