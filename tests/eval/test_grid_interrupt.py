"""Ctrl-C on ``secfl eval robustness`` (SIGINT to the command's process, as a terminal
or ``kill -INT`` sends it): the finished runs stay in the folder, one line says how to
continue, and with ``--workers`` the worker processes stop with their parent. Before,
SIGINT to the parent alone left its workers running on, unseen, appending runs that a
``--resume`` started meanwhile ran a second time beside them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secfl.cli.main import main
from secfl.eval.folder import load_records
from secfl.eval.grid import key

#: The command's process with Python's Ctrl-C handling, whatever this one's is (a
#: test run from a script in the background starts with SIGINT ignored).
ENTRY = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from secfl.cli.main import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip
GRID = ["eval", "robustness", "--tasks", "digits", "--clients", "4", "--partitions", "iid",
        "--malicious", "0,0.25", "--attacks", "label-flip,sign-flip", "--defences",
        "fedavg,median", "--seeds", "3", "--rounds", "2", "--epochs", "1",
        "--samples", "200"]  # fmt: skip
RUNS = 3 * (1 + 2) * 2


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in found.stdout.split()]


def _interrupt(argv: list[str], out: Path) -> tuple[int, str, list[int]]:
    """Start the grid, SIGINT it once its first run is in the folder; its exit code,
    its stderr and the processes it had started that outlived it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, *argv, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size for p in out.glob("runs*.jsonl")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no run finished in 120 s"
            time.sleep(0.05)
        started = _children(proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        left = [pid for pid in started if _running(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)  # (workers left running hold it open)
    finally:
        proc.kill()
    return proc.returncode, stderr, left


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not a zombie: the parent may have exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(300)
def test_ctrl_c_stops_the_workers_with_their_parent_keeping_what_finished(
    tmp_path: Path,
) -> None:
    out = tmp_path / "grid"
    code, stderr, left = _interrupt([*GRID, "--workers", "2"], out)
    assert left == [], "workers outlived their parent"
    assert code == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stopped: the finished runs are kept in {out}")
    assert lines[0].endswith(f"-o {out} --resume --workers 2")
    kept = load_records(out)
    sizes = {p: p.stat().st_size for p in out.glob("runs*.jsonl")}
    time.sleep(3)  # nothing more arrives: no worker is left running
    assert {p: p.stat().st_size for p in out.glob("runs*.jsonl")} == sizes
    assert 0 < len(kept) < RUNS and not (out / "report.md").exists()
    # the command the line gives continues it: every run once
    assert main([*GRID, "-o", str(out), "--resume"]) == 0
    finished = load_records(out)
    assert len(finished) == RUNS == len({key(r) for r in finished})
    assert all(r in finished for r in kept)


@pytest.mark.timeout(300)
def test_ctrl_c_stops_a_grid_in_one_process_saying_how_to_continue(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    code, stderr, _ = _interrupt(GRID, out)
    assert code == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stopped: the finished runs are kept in {out}")
    assert lines[0].endswith(f"-o {out} --resume")
    assert 0 < len(load_records(out)) < RUNS
