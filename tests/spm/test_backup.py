"""Backing up an SPM as docs/operations.md says, and restoring it, with real `secfl spm
serve` processes on SQLite: a backup whose database is older than the anchor beside it
(copied before ``audit.anchor``) is refused at start, in one line that says how to take
and restore a backup; one taken as documented while the SPM runs (the anchor first, then
the database through SQLite's backup API) verifies and serves."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.spm.harness import SpmProcess

pytestmark = [pytest.mark.timeout(180)]


def _secfl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "secfl.cli.main", *args],
                          capture_output=True, text=True, timeout=90, check=False)  # fmt: skip


def _serve_once(data: Path, sim_dir: Path) -> subprocess.CompletedProcess[str]:
    return _secfl("spm", "serve", "--data", str(data), "--listen", "127.0.0.1:0",
                  "--platform", "simulated", "--sim-dir", str(sim_dir))  # fmt: skip


def test_a_database_copied_before_its_anchor_is_refused_with_the_next_step(
    tmp_path: Path, sim: tuple[Path, bytes]
) -> None:
    data = tmp_path / "spm-data"
    spm = SpmProcess(data, sim[0], None).start()
    spm.stop()
    backup = tmp_path / "backup"
    backup.mkdir(mode=0o700)
    shutil.copy2(data / "spm.db", backup / "spm.db")  # the database first...
    spm.start()  # ...while the SPM runs on: its start is an audit entry, the anchor moves
    spm.stop()
    for name in ("master.key", "audit.anchor"):  # ...then the rest of the folder
        shutil.copy2(data / name, backup / name)

    done = _serve_once(backup, sim[0])
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: rollback: the database's audit log ends at entry "), line
    # what to do next: how such a backup comes about, and where taking one is explained
    assert "copied before audit.anchor" in line, line
    assert "restore the data folder and the database from one backup" in line, line
    assert "docs/operations.md" in line, line

    done = _secfl("audit", "verify", "--data", str(backup))
    assert done.returncode == 1
    assert "restore the data folder and the database from one backup" in done.stderr


def test_a_backup_taken_as_documented_while_the_spm_runs_restores(
    tmp_path: Path, sim: tuple[Path, bytes]
) -> None:
    data = tmp_path / "spm-data"
    spm = SpmProcess(data, sim[0], None).start()
    try:
        backup = tmp_path / "backup"
        backup.mkdir(mode=0o700)
        for name in ("master.key", "audit.anchor"):  # the anchor before the database
            shutil.copy2(data / name, backup / name)
        # what `sqlite3 spm-data/spm.db ".backup 'backup/spm.db'"` does: the pages the
        # -wal file holds included
        with sqlite3.connect(data / "spm.db") as src, sqlite3.connect(backup / "spm.db") as dst:
            src.backup(dst)
        src.close()
        dst.close()
    finally:
        spm.stop()
    done = _secfl("audit", "verify", "--data", str(backup))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("audit verify: OK, "), done.stdout
    restored = SpmProcess(backup, sim[0], None).start()
    restored.stop()
