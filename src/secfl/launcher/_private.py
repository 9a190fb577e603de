"""Where ``secfl run`` keeps plaintext, so that none of it outlives the launcher.

The workload's identity, its injected files and the verified copies of its volumes
live in one private folder, ``$SECFL_FILES`` (mode 0700, files 0600). A launcher
killed with ``kill -9`` runs no clean-up code, so the folder is protected in
layers, each of which works without the others:

1. **A private RAM file system, where the launcher may mount one.** With
   ``CAP_SYS_ADMIN`` (root, as in a confidential VM) the launcher moves into a mount
   namespace of its own (``unshare``; mounts propagate into it from the host, none
   out of it) and mounts a fresh ``tmpfs`` on the folder. Only the launcher and its
   program see the files; from outside, the folder is an empty mount point. When
   the last process of the namespace is gone, the kernel unmounts the ``tmpfs`` and
   frees its pages: nothing is left, whatever killed the launcher.
2. **A watchdog.** Before any secret arrives the launcher forks a small process
   that holds the read end of a pipe and ignores the usual termination signals.
   When the launcher dies, however it dies, the pipe closes and the watchdog
   removes the folder (unprivileged launchers keep their plaintext in ``/dev/shm``:
   this is what removes it at once). It runs in a session of its own, so a kill of
   the launcher's process group (``kill -9 -PGID``, a closed terminal) leaves it
   standing; the launcher goes on only once it is. Only the launcher holds the
   pipe's write end: it is closed on exec, and in any child that a ``--module``
   workload forks from the launcher's own process (a ``fork`` multiprocessing pool,
   a data loader's worker), which would otherwise keep the pipe, and so the folder,
   for as long as it lived. A kill of the whole control
   group (a service manager's stop, a cgroup's OOM kill) takes it too: layer 3.
3. **Stale folders are wiped by the next launcher.** A folder's name records its
   launcher (PID namespace, PID, start time): ``secfl-run-NS-PID-START-XXXX``. Each
   launcher, when it starts, removes the folders of this user whose launcher is no
   longer alive (a PID reused by another process does not count as alive); a live
   launcher's folder is never touched, nor a folder whose name it cannot read.

The program itself dies with the launcher (``PR_SET_PDEATHSIG``, see
:mod:`secfl.launcher._process`), so it never runs on unsupervised.

Not chosen: one ``memfd`` per file exposed as ``/proc/<launcher>/fd/N`` needs the
launcher to stay dumpable (``PR_SET_DUMPABLE 0`` puts ``/proc/<pid>/fd`` out of
the program's reach), and ``/proc/self/fd/N`` links resolve to whatever the
*reading* process has open as N (a grandchild started with closed descriptors
would read the wrong file); a volume of many files would also exhaust the
descriptor limit. An unprivileged user namespace would give layer 1 to every user,
but changes what the program sees (its groups, other users' files, no setuid):
too surprising for running unmodified programs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from secfl._internal import files
from secfl.errors import LaunchError
from secfl.launcher import _linux as linux

log = logging.getLogger("secfl.launcher")

__all__ = [
    "PREFIX",
    "PrivateDir",
    "bases",
    "owned_prefix",
    "wipe_stale",
]

PREFIX = "secfl-run-"

#: The watchdogs' pipe write ends this process holds: a child it forks closes them.
_WATCHDOG_PIPES: set[int] = set()


def _close_watchdog_pipes() -> None:
    for fd in _WATCHDOG_PIPES:
        with contextlib.suppress(OSError):
            os.close(fd)
    _WATCHDOG_PIPES.clear()


os.register_at_fork(after_in_child=_close_watchdog_pipes)


def _name(prefix: str) -> re.Pattern[str]:
    """A folder of ``prefix`` that names its owner (PID namespace, PID, start time)."""
    return re.compile(re.escape(prefix) + r"(\d{1,20})-(\d{1,10})-(\d{1,20})-[a-z0-9_]{1,64}")


def bases() -> list[Path]:
    """The folders that may hold a launcher's folder: RAM first, then the temp folder."""
    ram = files.ram_base()
    return [*([Path(ram)] if ram else []), Path(tempfile.gettempdir())]


#: File systems whose files live in RAM only (they never reach a disk).
_RAM_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})


def file_system(path: Path) -> str | None:
    """The type of the file system that holds ``path`` (from this process's mount table),
    or None when it cannot be told (no ``/proc``)."""
    try:
        table = Path("/proc/self/mountinfo").read_text(errors="replace")
    except OSError:
        return None
    real = os.path.realpath(path)
    best, kind = "", None
    for line in table.splitlines():
        mount, sep, rest = line.partition(" - ")
        fields, described = mount.split(), rest.split()
        if not sep or len(fields) < 5 or not described:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the last mount at a point is on top
            best, kind = point, described[0]
    return kind


def _check_in_ram(path: Path) -> None:
    """:class:`LaunchError` unless ``path`` is on a RAM file system: the folder holds the
    workload's keys and the plaintext of its volumes, which must never reach a disk."""
    kind = file_system(path)
    if kind not in _RAM_FILE_SYSTEMS:
        found = f"on {kind}" if kind else "on a file system this system does not name"
        raise LaunchError(
            f"files: the private folder {path} would be {found}, not in RAM, and keys and "
            "plaintext must never reach a disk; make /dev/shm a writable tmpfs (or set "
            "TMPDIR to one), or let secfl run mount its own (CAP_SYS_ADMIN)"
        )


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _start_time(pid: int | str) -> int | None:
    """The start time (clock ticks after boot) of a live, non-zombie process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read(4096)
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] == b"Z" or not fields[19].isdigit():
        return None
    return int(fields[19])


def owned_prefix(prefix: str = PREFIX) -> str:
    """``prefix`` and this process's identity, for a temporary folder's name: once the
    process is gone, :func:`wipe_stale` removes what it left."""
    ns, start = _pid_namespace(), _start_time("self")
    if ns is None or start is None:
        return f"{prefix}unowned-"  # never matched by _name, so never wiped by others
    return f"{prefix}{ns}-{os.getpid()}-{start}-"


def wipe_stale(prefix: str = PREFIX) -> list[Path]:
    """Remove the folders of ``prefix`` this user's dead processes left behind (a
    launcher's, by default); return them."""
    ns = _pid_namespace()
    if ns is None:
        return []
    wiped = []
    pattern = _name(prefix)
    for base in bases():
        with contextlib.suppress(OSError), os.scandir(base) as entries:
            for entry in entries:
                match = pattern.fullmatch(entry.name)
                if match is None or int(match.group(1)) != ns:
                    continue
                pid, start = int(match.group(2)), int(match.group(3))
                if pid == os.getpid() or _start_time(pid) == start:
                    continue  # its launcher is alive
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if entry.is_dir(follow_symlinks=False) and info.st_uid == os.geteuid():
                        if files.remove_tree(entry.path):  # (it raises no error)
                            wiped.append(Path(entry.path))
                        else:
                            log.warning("files: cannot remove %s, left by a launcher that "
                                        "ended: remove it by hand", entry.path)  # fmt: skip
    return wiped


@dataclass
class PrivateDir:
    """The launcher's private folder; :meth:`remove` when the workload is done."""

    path: Path
    #: A tmpfs in the launcher's own mount namespace (layer 1), not a plain folder.
    mounted: bool = False
    #: The watchdog's PID and the write end of its pipe (layer 2).
    _watchdog: tuple[int, int] | None = field(default=None, repr=False)

    @classmethod
    def create(cls) -> PrivateDir:
        """Wipe stale folders, make a fresh one, guard it (watchdog, private tmpfs)."""
        wipe_stale()
        refused: LaunchError | None = None
        for base in bases():  # the first in RAM: /dev/shm, else $TMPDIR on a tmpfs
            try:
                path = Path(tempfile.mkdtemp(prefix=owned_prefix(), dir=base))
            except OSError as exc:
                refused = LaunchError(
                    f"files: cannot create a private folder in {base}: {exc.strerror or exc}"
                )
                continue
            private = cls(path)
            try:
                private._watchdog = _start_watchdog(path)
                private.mounted = _mount_tmpfs(path)
                if not private.mounted:
                    _check_in_ram(path)
            except LaunchError as exc:
                private.remove()
                refused = exc
                continue
            except BaseException:
                private.remove()
                raise
            return private
        assert refused is not None
        raise refused

    def remove(self) -> None:
        """Remove every file (and the tmpfs); then let the watchdog go."""
        gone = files.remove_tree(self.path)  # a mount point itself stays
        if self.mounted:
            with contextlib.suppress(OSError):
                linux.umount(str(self.path), linux.MNT_DETACH)
            self.mounted = False
            gone = files.remove_tree(self.path)
        if not gone:  # what another user owns, or an immutable file, in there
            log.warning("files: cannot remove all of %s: remove it by hand", self.path)
        if self._watchdog is not None:
            pid, pipe = self._watchdog
            self._watchdog = None
            _WATCHDOG_PIPES.discard(pipe)
            os.close(pipe)  # the watchdog removes the folder again (nothing left) and ends
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _mount_tmpfs(path: Path) -> bool:
    """Layer 1: a private mount namespace and a tmpfs on ``path``, where permitted."""
    try:
        linux.unshare(linux.CLONE_NEWNS)
    except OSError:
        return False  # unprivileged (or no namespaces): layers 2 and 3 protect the folder
    try:
        # Nothing mounted from now on may propagate back to the host's namespace.
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE, None)
        options = f"mode=0700,uid={os.geteuid()},gid={os.getegid()}"
        linux.mount("secfl-run", str(path), "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, options)
    except OSError:
        return False
    return True


def _start_watchdog(path: Path) -> tuple[int, int]:
    """Layer 2: fork a process that removes ``path`` once the launcher is gone.

    It is forked before any secret arrives, so its memory holds none; it keeps no
    descriptor but its end of the pipe. Returns its PID and the pipe's write end,
    which only the launcher holds (not inherited by the program)."""
    read_end, write_end = os.pipe()
    started, ready = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the watchdog process (tested through real kills)
        code = 0
        try:
            # the launcher's end, closed by name: the ranges below stop at 65,536, and a
            # copy kept here would keep the pipe open past the launcher's death
            os.close(write_end)
            os.close(started)
            os.setsid()  # out of the launcher's process group and session
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                        signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE):  # fmt: skip
                signal.signal(sig, signal.SIG_IGN)
            os.write(ready, b"1")
            # above the standard descriptors, which /dev/null replaces: a launcher started
            # with stdin closed got its pipe as 0 (the watchdog saw an end at once, removed
            # the folder and ended, the launcher went on unguarded: a hostile review)
            read_end = fcntl.fcntl(read_end, fcntl.F_DUPFD, 3)
            null = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(null, std)
            os.closerange(3, read_end)
            os.closerange(read_end + 1, 65536)
            while os.read(read_end, 1):
                pass
            files.remove_tree(path)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(read_end)
    os.close(ready)
    try:
        up = os.read(started, 1)  # a kill of the group before its setsid took it too
    finally:
        os.close(started)
    if up != b"1":
        os.close(write_end)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise LaunchError("files: the watchdog of the private folder did not start; run again")
    _WATCHDOG_PIPES.add(write_end)
    return pid, write_end
