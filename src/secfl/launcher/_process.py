"""The launcher's process hygiene: no core dumps, a program that dies with it, exit codes.

* :func:`harden` runs before any secret arrives: ``RLIMIT_CORE`` 0 (hard limit too,
  inherited by the program, which cannot raise it again) and ``PR_SET_DUMPABLE`` 0
  for the launcher, so that no crash writes the volume keys or the released
  secrets to a core file and no other process of the user can read its memory.
* :func:`run_program` starts the program with ``PR_SET_PDEATHSIG`` = ``SIGKILL``:
  if the launcher dies (even of ``kill -9``) the kernel kills the program, which
  therefore never runs unsupervised. The signal follows the death of the *thread*
  that forked, so the program is started from the calling (main) thread. The
  launcher forwards the usual termination and user signals to it. It handles them
  from *before* the fork: the kernel resets handled signals to their default
  action at ``exec``, whereas an ignored one stays ignored. A shell starts a
  background job (``secfl run ... &``) with SIGINT and SIGQUIT ignored, and a
  program that inherited that would shrug off the forwarded ``kill -INT``. SIGHUP
  ignored by ``nohup`` stays ignored, as ``nohup`` intends.
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
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from secfl.errors import LaunchError
from secfl.launcher import _linux as linux

__all__ = [
    "FORWARDED",
    "accept_interrupts",
    "default_signals",
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


def accept_interrupts() -> None:
    """Let SIGINT stop the launcher (KeyboardInterrupt, exit 130) even when it was
    started ignoring it, as a shell starts a background job: whoever sends SIGINT
    to ``secfl run`` means it. Only the main thread may set handlers."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def default_signals() -> None:
    """Undo what the host's signal dispositions would change in the launcher and its
    program: an ignored SIGCHLD (kept across ``exec``; the kernel then reaps every
    child, and Python reads each one's end as exit code 0: a failed program, or a
    failed check the program runs, passed for a success; found by a hostile review)
    and blocked signals (kept across ``exec`` too: a timer's SIGALRM never came). Only
    the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGCHLD) is signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _die_with(parent: int) -> Callable[[], None]:
    """What the child runs between fork and exec: die when ``parent`` dies."""

    def setup() -> None:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the launcher died before the line above took effect
            os._exit(127)

    return setup


def run_program(argv: Sequence[str], env: Mapping[str, str], executable: Path | None = None) -> int:
    """Run ``argv`` to its end, forwarding signals; its ``returncode`` (negative: signal).

    ``executable``: the file to start (``argv[0]`` stays the program's name), else
    ``argv[0]`` looked up on ``env``'s PATH. The launcher passes the file it measured:
    found again by name, under a PATH the policy injects, it was another file, one the
    host planted in a folder on that PATH (found by a hostile review)."""
    preexec = _die_with(os.getpid()) if linux.available() else None
    forward = _Forwarder()
    previous = {}
    for sig in FORWARDED:
        if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
            continue  # nohup: a hangup is not meant to stop anything
        previous[sig] = signal.signal(sig, forward)
    try:
        try:
            proc = subprocess.Popen(
                list(argv), executable=executable, env=dict(env), preexec_fn=preexec
            )
        except OSError as exc:
            raise LaunchError(f"run: cannot start '{argv[0]}': {exc.strerror or exc}") from None
        except subprocess.SubprocessError as exc:
            raise LaunchError(f"run: cannot start '{argv[0]}': {exc}") from None
        forward.attach(proc)
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Forwarder:
    """The launcher's handler of the forwarded signals: each goes to the program; one
    that arrives while the program is being started is sent once it exists."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []

    def __call__(self, signum: int, _frame: object) -> None:
        if self.proc is None:
            self.pending.append(signum)
        elif self.proc.returncode is None:
            self.proc.send_signal(signum)

    def attach(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        while self.pending:
            self(self.pending.pop(0), None)


def exit_status(code: int) -> int:
    """The launcher's exit code for a program that ended with ``code`` (-N: signal N)."""
    return 128 - code if code < 0 else code
