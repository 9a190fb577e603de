"""One long-lived daemon thread that runs the calls handed to it, in order.

Why not a thread per call: starting one costs a clone, a stack and a wake-up back to
the starter, and ending it another; on a round path of tens of milliseconds, in a VM
where every cross-CPU wake-up is an interrupt the hypervisor handles, a few of those a
round were measurable. Why not a ``ThreadPoolExecutor``: its threads are not daemons,
and the interpreter waits for them at exit, so one call that never ends (task code)
would keep a stopping process alive.

A call's exceptions are its own business: :class:`Worker` runs the next call whatever
the last one did (a call that raises is logged as a bug, in one line).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

__all__ = ["Worker"]

log = logging.getLogger("secfl.worker")


class Worker:
    """Runs :meth:`submit`'s calls one after another on one daemon thread, started on
    first use and named ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._queued: collections.deque[Callable[[], object]] = collections.deque()
        self._unfinished = 0  # queued or running
        self._thread: threading.Thread | None = None
        self._closing = False

    def submit(self, call: Callable[[], object]) -> None:
        """Run ``call()`` after every call submitted before it."""
        with self._cond:
            self._closing = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._queued.append(call)
            self._unfinished += 1
            self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout`` seconds; None: no limit) until every call submitted
        so far has returned; False if some have not."""
        with self._cond:
            return self._cond.wait_for(lambda: self._unfinished == 0, timeout)

    def close(self) -> None:
        """Let the thread end once every call submitted so far has returned, without
        waiting for them (one that never returns keeps its thread, as before). A later
        :meth:`submit` opens the worker again: its call runs after the earlier ones, on
        the same thread if that is still running them, else on a new one. An owner that
        is done calls it, so that a process making many owners does not keep an idle
        thread for each."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queued) or self._closing)
                if not self._queued:  # closed, and nothing left to run
                    self._thread = None
                    self._closing = False
                    return
                call = self._queued.popleft()
            try:
                call()
            except BaseException as exc:  # a caller's bug must not stop the calls after it
                log.warning("%s: a background call failed: %r", self.name, exc)
            finally:
                with self._cond:
                    self._unfinished -= 1
                    if self._unfinished == 0:
                        self._cond.notify_all()
