"""The demo's processes: each a workload in its own process group, logged to a file.

:func:`spawn` starts one (a new session, so that :func:`kill_group` and
:func:`stop_all` reach everything it started: ``secfl run`` and its program);
:func:`wait_ready` waits for the ready file it writes once it serves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secfl.errors import DemoError

# imported here, not between fork and exec: loading it finds libc (an ldconfig run)
from secfl.launcher import _linux as linux

__all__ = [
    "Workload",
    "free_port",
    "kill_group",
    "secfl_program",
    "spawn",
    "stop_all",
    "wait_ready",
]


@dataclass
class Workload:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 1) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def secfl_program() -> Path:
    """The ``secfl`` executable the workloads run (what their measurement covers)."""
    beside = Path(sys.executable).parent / "secfl"
    found = beside if beside.exists() else shutil.which("secfl")
    if not found:
        raise DemoError("demo: the `secfl` command is not installed next to this Python")
    return Path(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(name: str, argv: Sequence[str], log: Path, cwd: Path) -> Workload:
    """Start ``argv`` in ``cwd`` in a new session, its output appended to ``log``. Started
    from the main thread, it is sent SIGTERM if this process dies (a SIGKILLed `secfl
    demo` left its SPM serving and its workloads running, for ever)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    main = threading.current_thread() is threading.main_thread()
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True,
                                preexec_fn=_die_with(os.getpid()) if main else None)  # fmt: skip
    return Workload(name, proc, log)


def _die_with(parent: int) -> Callable[[], None]:
    """What a child runs between fork and exec: SIGTERM when ``parent`` dies (the signal
    follows the forking *thread*: only the main thread's children get it)."""

    def setup() -> None:  # pragma: no cover - runs in the child
        if linux.available():
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def wait_ready(w: Workload, ready: Path, timeout: float) -> dict[str, Any]:
    """The JSON of the ready file ``w`` writes; :class:`DemoError` with the last line of
    its log if it exits or takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if w.proc.poll() is not None:
            raise DemoError(f"demo: {w.name} exited {w.proc.returncode}: {w.tail()}")
        if time.monotonic() > deadline:
            raise DemoError(f"demo: {w.name} did not start in {timeout:.0f} s: {w.tail()}")
        time.sleep(0.05)
    return dict(json.loads(ready.read_text()))


def kill_group(w: Workload) -> None:
    """SIGKILL ``w`` and everything it started, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(w.proc.pid, signal.SIGKILL)
    w.proc.wait(timeout=30)


def stop_all(workloads: Sequence[Workload]) -> None:
    """SIGTERM every running workload (the last started first), then SIGKILL any that
    has not exited 15 s later."""
    for w in reversed(workloads):
        if w.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGTERM)
    for w in workloads:
        try:
            w.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait()
