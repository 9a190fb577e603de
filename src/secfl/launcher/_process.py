"""The launcher's process hygiene: no core dumps, a program that dies with it, exit codes.

* :func:`harden` runs before any secret arrives: ``RLIMIT_CORE`` 0 (hard limit too,
  inherited by the program, which cannot raise it again) and ``PR_SET_DUMPABLE`` 0
  for the launcher, so that no crash writes the volume keys or the released
  secrets to a core file and no other process of the user can read its memory.
* :func:`run_program` starts the program with ``PR_SET_PDEATHSIG`` = ``SIGKILL``:
  if the launcher dies (even of ``kill -9``) the kernel kills the program, which
  therefore never runs unsupervised. The signal follows the death of the *thread*
  that forked, so the program is started from the calling (main) thread. The
  launcher forwards the usual termination and user signals to it.
* :func:`exit_status` passes the program's end through as a shell does: its exit
  code, or ``128 + N`` when signal N killed it. The launcher never re-raises the
  signal on itself (which dumped a core of the launcher before, and cannot be
  done for ``SIGKILL`` at all).

A limit: only the program itself dies with the launcher; a program that starts
children of its own should make them die with it (or ``exec`` them).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence

from secfl.errors import LaunchError
from secfl.launcher import _linux as linux

__all__ = [
    "FORWARDED",
    "exit_status",
    "harden",
    "run_program",
]

FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def harden() -> None:
    """No core dump of the launcher or its program; launcher memory not readable."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"harden: cannot disable core dumps: {exc}") from None
    try:
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
    except OSError as exc:
        if linux.available():
            raise LaunchError(f"harden: cannot make the launcher non-dumpable: {exc}") from None


def _die_with(parent: int) -> Callable[[], None]:
    """What the child runs between fork and exec: die when ``parent`` dies."""

    def setup() -> None:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the launcher died before the line above took effect
            os._exit(127)

    return setup


def run_program(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run ``argv`` to its end, forwarding signals; its ``returncode`` (negative: signal)."""
    preexec = _die_with(os.getpid()) if linux.available() else None
    try:
        proc = subprocess.Popen(list(argv), env=dict(env), preexec_fn=preexec)
    except OSError as exc:
        raise LaunchError(f"run: cannot start '{argv[0]}': {exc.strerror or exc}") from None
    except subprocess.SubprocessError as exc:
        raise LaunchError(f"run: cannot start '{argv[0]}': {exc}") from None
    previous = {}
    for sig in FORWARDED:
        previous[sig] = signal.signal(sig, lambda signum, _frame: _forward(proc, signum))
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _forward(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.returncode is None:
        proc.send_signal(signum)


def exit_status(code: int) -> int:
    """The launcher's exit code for a program that ended with ``code`` (-N: signal N)."""
    return 128 - code if code < 0 else code
