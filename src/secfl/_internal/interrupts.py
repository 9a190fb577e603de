"""Ctrl-C for a long-running workload: raised once, and held across the few steps
that must not be cut in half.

A workload stopped with Ctrl-C must leave its durable state and its records in step:
a round whose counter is committed is also written to the metrics, or a restart skips
it in the record. Python raises ``KeyboardInterrupt`` between any two bytecodes, so
:func:`held` defers it to the end of such a block; :func:`interrupt_once` installs the
handler that knows about it (outside it, :func:`held` changes nothing). A signal
sent to the process may be taken by any of its threads, and then wakes no wait of
the main thread's: :func:`wait` waits in short slices, so that the main thread runs
the handler soon whichever thread took it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

__all__ = ["TICK", "held", "interrupt_once", "wait"]

#: The longest the main thread blocks at a time in :func:`wait` (seconds).
TICK = 0.2


class _Hold:
    depth = 0  # blocks in :func:`held` now open (the main thread only)
    pending = False  # a SIGINT arrived while one was open


def _main() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block has finished, then
    raise it. If the block raises, its own error goes on (the workload is stopping
    either way) and the held Ctrl-C is dropped. Only the main thread, where signal
    handlers run, holds anything."""
    if not _main():
        yield
        return
    _Hold.depth += 1
    try:
        yield
    except BaseException:
        _Hold.depth -= 1
        if _Hold.depth == 0:
            _Hold.pending = False
        raise
    _Hold.depth -= 1
    if _Hold.depth == 0 and _Hold.pending:
        _Hold.pending = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_once() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt once (after any :func:`held` block under way),
    then is ignored while the workload shuts down: a Ctrl-C reaches it twice (from the
    terminal, and forwarded by `secfl run`), and the second must not cut the clean stop
    short. Only in the main thread, and not when SIGINT was ignored when the workload
    started (its parent's choice)."""
    if not _main() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _Hold.depth:
            _Hold.pending = True
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    except KeyboardInterrupt:
        raise  # SIGINT stays ignored until the process exits
    except BaseException:
        signal.signal(signal.SIGINT, previous)
        raise
    signal.signal(signal.SIGINT, previous)


def wait(event: threading.Event, timeout: float | None = None) -> bool:
    """``event.wait(timeout)``, which a Ctrl-C interrupts within :data:`TICK` seconds in
    the main thread, whichever thread the kernel gave the signal to (one blocked in
    ``Event.wait()`` is woken only by a signal it took itself)."""
    if not _main():
        return event.wait(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = TICK if deadline is None else min(TICK, deadline - time.monotonic())
        if left <= 0:
            return event.is_set()
        if event.wait(left):
            return True
