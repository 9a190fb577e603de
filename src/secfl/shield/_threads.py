"""The threads that decrypt a volume's chunks: how many, and the one pool of them.

Why a module of its own: the count is read once from the environment
(``SECFL_SHIELD_THREADS``) and the CPUs this process may use, and the pool is shared
by every file the process reads (:mod:`secfl.shield._parallel` submits to it), so
that however many files are open, at most :data:`WORKERS` threads decrypt. A forked
child starts a pool of its own.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Final

__all__ = [
    "MAX_WORKERS",
    "READ_AHEAD",
    "WORKERS",
    "executor",
]

MAX_WORKERS: Final = 8


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _configured_threads() -> tuple[int, bool]:
    """Threads of the pool, and whether to decrypt ahead, from ``SECFL_SHIELD_THREADS``.

    Unset: every usable CPU (up to :data:`MAX_WORKERS`) for range reads, no read-ahead.
    ``N``: N threads (1 turns all of it off: the reader decrypts every chunk), with
    read-ahead from 2 on, for workloads that read a chunk at a time on more cores.
    """
    text = os.environ.get("SECFL_SHIELD_THREADS", "").strip()
    if not text:
        return min(_usable_cpus(), MAX_WORKERS), False
    # ASCII digits, a few of them: str.isdigit() takes "²" (which int() refuses) and
    # int() refuses 5000 digits, both tracebacks at import in every shield command
    if not re.fullmatch(r"[0-9]{1,6}", text) or int(text) < 1:
        logging.getLogger("secfl.shield").warning(
            "SECFL_SHIELD_THREADS=%.20r is not a positive integer: reading on one thread", text
        )
        return 1, False
    threads = min(int(text), _usable_cpus(), MAX_WORKERS)
    return threads, threads > 1


#: Threads that decrypt one read's chunks (the reader among them); 1: the reader alone.
#: READ_AHEAD: whether the pool also decrypts ahead of a reader reading chunk by chunk.
WORKERS, READ_AHEAD = _configured_threads()

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The process's pool of :data:`WORKERS` threads, started on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="secfl-shield")
        return _pool


def _forget_pool() -> None:
    # A forked child has none of the parent's threads: it starts a pool of its own.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
