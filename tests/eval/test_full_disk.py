"""A grid on a disk that fills up (here: a file size limit, RLIMIT_FSIZE, which makes a
write short, then fail with EFBIG as a full disk does with ENOSPC) stops in one line
saying what to do, not with an OSError traceback; a run cut short by it is skipped when
read, and ``--resume`` then finishes the grid, every run once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from secfl.cli.main import main
from secfl.eval.folder import load_records
from secfl.eval.grid import key

#: The child limits its files itself, after its imports: a ``preexec_fn`` forks this test
#: process, whose gRPC (loaded by earlier tests in the worker) aborted the fork in CI
#: ("epoll_wait error: Bad file descriptor"); no bytecode written under the limit either
#: (a .pyc cut short would break the next import of its module).
ENTRY = (
    "import os, resource, sys; from secfl.cli.main import main; "
    "limit = int(os.environ['SECFL_TEST_FSIZE']); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "sys.exit(main(sys.argv[1:]))"
)
GRID = ["eval", "robustness", "--tasks", "digits", "--clients", "4", "--partitions", "iid",
        "--malicious", "0,0.25", "--attacks", "label-flip,sign-flip", "--defences",
        "fedavg,median", "--seeds", "3", "--rounds", "2", "--epochs", "1",
        "--samples", "200"]  # fmt: skip
RUNS = 3 * (1 + 2) * 2


def _limited(argv: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
           "SECFL_TEST_FSIZE": str(limit), "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    return subprocess.run([sys.executable, "-c", ENTRY, *argv], capture_output=True, text=True,
                          env=env, timeout=240)  # fmt: skip


@pytest.mark.timeout(400)
def test_a_full_disk_stops_the_grid_in_one_line_and_resume_finishes_it(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    done = _limited([*GRID, "-o", str(out)], 6000)  # a few runs' records
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out / 'runs-0of1.jsonl'}: "), lines
    assert lines[0].endswith("free some space, then run again with --resume")
    kept = load_records(out)  # the line cut short is skipped
    assert 0 < len(kept) < RUNS
    assert main([*GRID, "-o", str(out), "--resume"]) == 0
    finished = load_records(out)
    assert len(finished) == RUNS == len({key(r) for r in finished})


@pytest.mark.timeout(400)
def test_a_report_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    assert main([*GRID, "--seeds", "1", "-o", str(out)]) == 0
    for name in ("report.md", "results.csv", "results.json"):
        (out / name).unlink()
    done = _limited(["eval", "robustness", "--report-only", "-o", str(out)], 500)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines == [f"error: {out}: cannot write the report (File too large): free some "
                     f"space, then write it with --report-only -o {out}"]  # fmt: skip
