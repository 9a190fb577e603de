"""Starting the aggregator: what it tells whoever waits for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clirun import secfl


def test_an_unwritable_ready_file_is_one_error_line(tmp_path: Path) -> None:
    """The ready file goes to a folder that does not exist: the aggregator, already
    listening, says so in one line (it used to end in an OSError traceback) and exits."""
    ready = tmp_path / "missing" / "ready.json"
    argv = ["aggregator", "--insecure", "--task", "digits", "--listen", "127.0.0.1:0",
            "--ready-file", str(ready)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: ready file: cannot write {ready}: "), done.stderr
    assert not ready.exists()


@pytest.mark.parametrize(
    ("setting", "value", "line"),
    [
        ("SECFL_OUTPUT", "a-file", "output: a-file (SECFL_OUTPUT or --output) cannot be the final "
                                   "model's folder: File exists; give a folder"),
        ("--output", "a-file", "output: a-file (SECFL_OUTPUT or --output) cannot be the final "),
        ("SECFL_METRICS", "missing/m.jsonl", "metrics: cannot append to missing/m.jsonl "
                                             "(SECFL_METRICS or --metrics): No such file or "),
        ("--metrics", "a-file/m.jsonl", "metrics: cannot append to a-file/m.jsonl (SECFL_METRICS"),
        # found by a hostile review: a FIFO the host put there hung the aggregator
        ("--metrics", "fifo", "metrics: cannot append to fifo (SECFL_METRICS or --metrics): a "
                              "FIFO nobody reads (it would block the writer)"),
    ],
)  # fmt: skip
def test_a_host_path_that_cannot_be_used_is_one_line_before_any_round(
    tmp_path: Path, setting: str, value: str, line: str
) -> None:
    """Not after training every round (the output), nor after committing round 1,
    which every restart would repeat (the metrics): at start, before listening."""
    (tmp_path / "a-file").write_text("not a folder\n")
    os.mkfifo(tmp_path / "fifo")
    ready = tmp_path / "ready.json"
    argv = ["aggregator", "--insecure", "--task", "digits", "--listen", "127.0.0.1:0",
            "--ready-file", str(ready)]  # fmt: skip
    env = dict(os.environ)
    if setting.startswith("--"):
        argv += [setting, value]
    else:
        env[setting] = value
    done = secfl(*argv, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {line}"), done.stderr
    assert not ready.exists()  # it never listened
