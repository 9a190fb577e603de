"""A secure workload's uncaught errors show the host one line, never a traceback.

Found by a review: a host that lowered the workload's memory limit turned a task's
allocation into a MemoryError that went up to Python's handler, whose traceback named
the task's files and functions, showed their source lines and the message's numbers
from the data; an exception in a thread the task started did the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from secfl.cli import main as cli_main

PROGRAM = """
import sys, threading
from pathlib import Path
from secfl.tasks._contract import hide_uncaught_errors, register_task_folder
folder = Path(sys.argv[1])
register_task_folder(folder)
sys.path.insert(0, str(folder))
import cohort
if sys.argv[2] == "hidden":
    hide_uncaught_errors()
thread = threading.Thread(target=cohort.load, name="loader")
thread.start()
thread.join()
cohort.Holder()  # dropped at once: its __del__ raises ("Exception ignored in")
cohort.load()
"""


@pytest.mark.parametrize("mode", ["hidden", "shown"])
def test_uncaught_errors_are_one_line_each_in_a_secure_workload(tmp_path: Path, mode: str) -> None:
    task = tmp_path / "task"
    task.mkdir()
    (task / "cohort.py").write_text(
        "def load():\n    raise KeyError('patient-alice-smith')\n"
        "class Holder:\n    def __del__(self):\n        raise ValueError('patient-bob')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(task), mode],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    if mode == "shown":  # (Python's own handlers: what --insecure and simulate keep)
        assert "patient-alice-smith" in done.stderr and "patient-bob" in done.stderr
        return
    hidden = (
        "KeyError at task file #1 of 1, line 2 (its message is not shown under `secfl run`, "
        "where the host reads the log: it may hold the data; `secfl simulate` on test data "
        "shows it)"
    )
    ignored = hidden.replace("KeyError", "ValueError").replace("line 2", "line 5")
    assert done.stderr.splitlines() == [
        f"error: loader: {hidden}",
        f"error: ignored: {ignored}",
        f"error: {hidden}",
    ], done.stderr


def test_running_out_of_memory_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    class Command:
        def main(self, **_: Any) -> None:
            np.empty((1 << 40, 1 << 20), dtype=np.float32)  # numpy's own MemoryError

    monkeypatch.setattr(cli_main, "command", Command)
    assert cli_main.main(["aggregator"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory ("), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_fatal_signal_dumps_no_stack_where_errors_are_hidden(tmp_path: Path) -> None:
    """Found by a review: a host that set PYTHONFAULTHANDLER (passed on to the program)
    and sent SIGABRT got every thread's stack: the task's files and functions."""
    program = (
        "import os, signal\n"
        "from secfl._internal.failures import hide_uncaught_errors\n"
        "hide_uncaught_errors()\n"
        "def train_on_the_hiv_cohort():\n"
        "    os.kill(os.getpid(), signal.SIGABRT)\n"
        "train_on_the_hiv_cohort()\n"
    )
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, check=False, env=env)  # fmt: skip
    assert done.returncode == -signal.SIGABRT
    assert "train_on_the_hiv_cohort" not in done.stderr and "File" not in done.stderr, done.stderr


def test_the_host_cannot_turn_the_fault_handler_on_for_a_program() -> None:
    from secfl._internal.environ import for_program

    kept, dropped = for_program({"PYTHONFAULTHANDLER": "1", "PATH": "/bin"})
    assert "PYTHONFAULTHANDLER" not in kept and dropped == ["PYTHONFAULTHANDLER"]
