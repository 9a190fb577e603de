"""Signal dispositions the host leaves to `secfl run`: what reaches the program."""

from __future__ import annotations

import subprocess
import sys

from tests.launcher.world import World, python

#: A measured program that trusts a child's exit code (a checker, a converter...).
CHECKS = (
    "import subprocess, sys\n"
    "child = subprocess.run([sys.executable, '-c', 'raise SystemExit(3)'])\n"
    "print('CHILD', child.returncode, flush=True)\n"
    "sys.exit(5)\n"
)


#: Runs the command after it with SIGCHLD ignored (kept across exec): a trampoline, not a
#: ``preexec_fn``, which forks this test process (with gRPC loaded there by earlier tests,
#: such a fork aborted in CI: "epoll_wait error: Bad file descriptor").
IGNORING_SIGCHLD = (
    sys.executable, "-c",
    "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
)  # fmt: skip


def test_a_sigchld_the_host_ignores_does_not_turn_failures_into_successes(
    world: World,
) -> None:
    """Found by a hostile review: an ignored signal stays ignored across ``exec``, and a
    process that ignores SIGCHLD cannot learn how its children ended (the kernel reaps
    them; Python reads that as exit code 0). A host that started `secfl run` so had the
    launcher report 0 for a program that failed, and the program read 0 for every
    child of its own that failed (a check it runs, a Flower process)."""
    argv = python(CHECKS)
    world.submit_program("sigchld", world.plain(argv))
    done = subprocess.run(
        [*IGNORING_SIGCHLD, *world.command("svc", argv, policy="sigchld")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "CHILD 3" in done.stdout, (done.stdout, done.stderr)
    assert done.returncode == 5, done.stderr
