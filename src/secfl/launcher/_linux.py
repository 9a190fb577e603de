"""The few Linux system calls the launcher needs that :mod:`os` does not offer.

``prctl`` (no core dump, die with the parent), ``unshare`` and ``mount`` (a private
RAM folder in a mount namespace of the launcher's own), called through ``ctypes``
on the C library. Each returns whether it worked or raises :class:`OSError` with
the kernel's reason; on a system without them (not Linux) every call reports
failure, and the launcher falls back as :mod:`secfl.launcher._private` describes.
"""

from __future__ import annotations

import ctypes
import os

from secfl._internal.libc import libc

__all__ = [
    "CLONE_NEWNS",
    "MNT_DETACH",
    "MS_NODEV",
    "MS_NOSUID",
    "MS_REC",
    "MS_SLAVE",
    "PR_GET_DUMPABLE",
    "PR_SET_DUMPABLE",
    "PR_SET_PDEATHSIG",
    "available",
    "mount",
    "prctl",
    "umount",
    "unshare",
]

PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MNT_DETACH = 0x2


_LIBC = libc()


def available() -> bool:
    """Whether these calls exist here (Linux)."""
    return _LIBC is not None


def _call(name: str, *args: object) -> int:
    """``name(*args)`` in the C library; :class:`OSError` on -1."""
    if _LIBC is None:
        raise OSError(0, f"{name} is not available on this system")
    func = getattr(_LIBC, name)
    result = int(func(*args))
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def prctl(option: int, arg: int = 0) -> int:
    """``prctl(option, arg, 0, 0, 0)``."""
    return _call("prctl", ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0),
                 ctypes.c_ulong(0), ctypes.c_ulong(0))  # fmt: skip


def unshare(flags: int) -> None:
    _call("unshare", ctypes.c_int(flags))


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    _call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def umount(target: str, flags: int = 0) -> None:
    _call("umount2", os.fsencode(target), ctypes.c_int(flags))
