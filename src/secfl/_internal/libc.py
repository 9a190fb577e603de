"""The C library, for the few Linux calls Python does not wrap (or wraps holding the
GIL); ``None`` elsewhere. Calls through it release the GIL and set ``errno``."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["libc"]


@functools.cache
def libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - every Linux has a C library
        return None
