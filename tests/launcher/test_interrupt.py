"""SIGINT to `secfl run`, as a shell user sends it: the program stops and the
launcher passes its end through (130). A shell starts a background job
(``secfl run ... &``) with SIGINT ignored; a program that inherited that would never
stop, so the launcher must hand it the default action back."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.launcher.world import World, wait_ready

#: A non-interactive shell, as in a script: the job runs in the background, its PID
#: is printed, and the shell waits for it and exits with its status.
BACKGROUND = '"$@" & echo "JOB $!" >&2; wait $!'


def _ignores(pid: int, sig: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(status.split("SigIgn:")[1].split()[0], 16)
    return bool(mask & (1 << (sig - 1)))


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def test_a_background_job_starts_with_sigint_ignored() -> None:
    """The premise: what `sh` does to ``cmd &`` (POSIX, without job control)."""
    done = subprocess.run(
        # the job reads its own status: ignored signals stay ignored across exec, and
        # reading the job's status from outside raced the shell setting it up
        ["sh", "-c", "grep SigIgn /proc/self/status & wait"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    mask = int(done.stdout.split()[1], 16)
    assert mask & (1 << (signal.SIGINT - 1))


def test_sigint_to_a_background_secfl_run_stops_its_program(world: World) -> None:
    shell = subprocess.Popen(
        ["sh", "-c", BACKGROUND, "sh", *world.command("worker", world.argv("--die"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        program = int(wait_ready(shell)["PID"])
        assert shell.stderr is not None
        launcher = next(int(line.split()[1]) for line in shell.stderr if line.startswith("JOB "))
        assert not _ignores(program, signal.SIGINT)  # the shell's SIG_IGN did not reach it
        os.kill(launcher, signal.SIGINT)
        assert shell.wait(timeout=30) == 128 + signal.SIGINT
        deadline = time.monotonic() + 5
        while not _dead(program) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _dead(program)
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
