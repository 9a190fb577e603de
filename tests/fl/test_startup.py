"""Starting the aggregator: what it tells whoever waits for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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
