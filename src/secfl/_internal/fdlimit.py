"""This process's open-file limit: raised to what the system allows, and the room it
leaves for connections once the files a server needs of its own are set aside.

A server whose connections may take every descriptor cannot write its own files: an
aggregator held 1100 idle TCP connections open (no TLS needed) under a soft limit of
1024, and could no longer create a checkpoint (a review).
"""

from __future__ import annotations

import os
import resource

__all__ = ["RESERVED_FDS", "open_fds", "raise_file_limit"]

#: Descriptors kept for the process's own files (checkpoints, logs, the database).
RESERVED_FDS = 64


def raise_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one (as far as allowed); return
    the soft limit in force (2**20 for no limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def open_fds() -> int:
    """How many descriptors this process has open (32 where /proc cannot say)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 32
