"""The CSV readers a scientist starts from: the `secfl new task` template's
``read_csv`` and the example ``load_data`` of docs/tasks.md.

A site's data folder is the site's: it may hold a FIFO named ``*.csv`` (opening it
would wait forever) and CSV files Excel saved, with a UTF-8 byte-order mark (read as
plain UTF-8, the mark sticks to the first column's name). Both readers skip what is
not a regular file and read the mark away; each runs in a process of its own, so a
reader that hangs fails the test rather than stalling it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from secfl.cli._template import new_task
from tests.fl.example_task import write_csv_sites, write_task

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def _rows(code: Path, module: str, function: str, data: Path) -> subprocess.CompletedProcess[str]:
    """``module.function(data)`` imported from the folder ``code``, in a process of its
    own: it prints the number of rows read."""
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        f"from {module} import {function} as read; print(len(read(Path(sys.argv[2]))))"
    )
    try:
        return subprocess.run(
            [sys.executable, "-c", script, str(code), str(data)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{module}.{function} still reading {data} after 60 s (a FIFO opened?)")


def _hostile(site: Path, first: Path) -> int:
    """Add to ``site`` a FIFO named like a CSV file and a copy of ``first`` saved with
    a byte-order mark; the rows the site then holds."""
    os.mkfifo(site / "zz-pipe.csv")
    (site / "excel.csv").write_bytes(b"\xef\xbb\xbf" + first.read_bytes())
    return sum(len(p.read_text().splitlines()) - 1 for p in site.glob("*.csv") if p.is_file())


def test_the_templates_reader_skips_a_fifo_and_reads_a_byte_order_mark(tmp_path: Path) -> None:
    made = new_task(tmp_path / "clinic", name="clinic")
    site = tmp_path / "site"
    shutil.copytree(made.folder / "data" / "site-1", site)
    rows = _hostile(site, site / "part-1.csv")
    done = _rows(made.folder / "code", f"{made.package}.data", "read_csv", site)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == rows


def test_the_documented_reader_skips_a_fifo_and_reads_a_byte_order_mark(tmp_path: Path) -> None:
    code = write_task(tmp_path / "mytask")
    site = write_csv_sites(tmp_path / "data", 1)["site-1"]
    rows = _hostile(site, site / "part-0.csv")
    done = _rows(code, "task", "load_data", site)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == rows
