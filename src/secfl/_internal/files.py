"""Writing files that must never be seen half-written, or by anyone else.

- :func:`atomic_write`: a reader sees the old file or the whole new one, never a
  torn write (a file with no name in the same folder, named only once whole, then
  ``rename``); with ``replace=False`` an existing file is never replaced
  (``FileExistsError``). :func:`atomic_open` is the same for data written piece by
  piece. A process killed while writing leaves nothing behind.
- :func:`write_private`: the same, with the file created 0600 from its first byte,
  nameless or under a fresh name (``O_CREAT | O_EXCL | O_NOFOLLOW``), so that nothing
  planted at the path (a symbolic link, a hard link to another file, a file others can read)
  ever receives a key.
- :func:`memory_file`: a secret that must be a file for a moment (a TLS key for a
  library that reads only paths) as a file with no name on any file system (Linux's
  ``memfd``), which a SIGKILL cannot leave behind; elsewhere, a file in
  :func:`ram_tempdir`, a private (0700) folder in RAM when the system has one.

- :func:`remove_tree`: a private folder removed whole, even where its program left
  folders read-only (``shutil.rmtree`` alone leaves their files, plaintext say, behind).

- :func:`keep_out`: a folder no later write of this process may land in (a
  workload's private folder, where its keys are). :func:`atomic_open` and
  :func:`append` check where each file they write really is, by its descriptor,
  before the first byte: a host that swapped a folder on a path it chose for a
  symbolic link into the private folder, after the start-up checks, gets a refusal.
  Neither follows a symbolic link at the name itself, nor does :func:`write_stream`,
  but for this process's own streams (:func:`own_stream`: ``/dev/stdout``...).

Errors are ``OSError`` for the caller to word in its own terms.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: A folder held for the names made in it (O_PATH: no read permission needed, as in a
#: drop box; where the system lacks it, a folder this process can read).
_FOLDER = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
#: Folders (resolved, with a final "/") no write may land in: see :func:`keep_out`.
_KEPT_OUT: list[str] = []
_FD_LINKS = Path("/proc/self/fd")
_TMPFILE = getattr(os, "O_TMPFILE", 0)
_SHM = Path("/dev/shm")  # noqa: S108 - only ever used through mkdtemp (a 0700 folder)
#: The names of this process's own streams (``/dev/stdout``, ``/dev/fd/63`` of
#: ``>(...)``, ``/proc/self/fd/1``...): written in place by :func:`write_stream`, never
#: replaced by :func:`atomic_open`.
OWN_STREAM = re.compile(r"/dev/(stdout|stderr|fd/[0-9]{1,6})|/proc/self/fd/[0-9]{1,6}")


def atomic_write(
    path: Path | str, data: bytes, *, mode: int = 0o644, fsync: bool = True, replace: bool = True
) -> Path:
    """Replace ``path`` by ``data`` atomically (created with ``mode``): see :func:`atomic_open`."""
    with atomic_open(path, mode=mode, fsync=fsync, replace=replace) as fh:
        fh.write(data)
    return Path(path)


@contextmanager
def atomic_open(
    path: Path | str,
    *,
    mode: int = 0o644,
    fsync: bool = True,
    replace: bool = True,
    folder_fd: int | None = None,
) -> Iterator[BinaryIO]:
    """A new file to write that appears at ``path`` whole when the block ends, or never.

    For data too large to hold in memory (a shielded volume). The file is created in
    the same folder with ``mode``, with no name until it is whole (``O_TMPFILE``) where
    Linux can, else under a fresh name (``O_CREAT | O_EXCL | O_NOFOLLOW``).
    On a clean exit it is flushed (and fsynced) and renamed over ``path``; with
    ``replace=False`` it is hard-linked to ``path`` instead, which raises
    ``FileExistsError`` if anything is there (even a dangling symbolic link) and
    leaves that as it was. A symbolic link at ``path`` is replaced, never followed; a
    device, FIFO or socket never, nor this process's own stream names such as
    ``/dev/stdout`` (``OSError``).
    With ``fsync`` the folder is fsynced too, so the new name survives a power loss
    once the block has ended. On any error the temporary file is removed.

    ``folder_fd``: the folder to write in, open (a caller that reached it one name
    at a time, following no link); ``path`` is then a name in it, for messages too.
    """
    target = Path(path)
    if folder_fd is None and own_stream(target):
        # /dev/stdout is a link in /dev: run as root, a whole-file output given it
        # (`secfl simulate -o /dev/stdout`) replaced the machine's /dev/stdout with a
        # regular file holding the model (the review of the /dev/null fix)
        raise OSError(errno.EINVAL, "this process's stream, not a file to replace", str(path))
    name, tmp = target.name, f".{target.name}.{os.urandom(8).hex()}.tmp"
    # the folder, held open: every step below happens in it, wherever its path leads
    # later (a host that swaps it for a link mid-write moves nothing into the link)
    parent = os.open(target.parent, _FOLDER) if folder_fd is None else os.dup(folder_fd)
    try:
        check_outside(parent, target.parent)
        if replace:
            _check_replaceable(parent, name)
        folder = _open_folder(".", parent) if fsync else None  # before the rename: see below
        try:
            fd, named = _new_file(parent, tmp, mode)
        except BaseException:
            if folder is not None:
                os.close(folder)
            raise
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
                if not named:  # whole now: give it a name (a file no name held until here)
                    try:
                        _link_fd(fd, tmp if replace else name, parent)
                    except FileExistsError:
                        raise
                    except OSError:  # /proc of another pid namespace, a sandbox: a copy
                        _copy_named(fd, tmp, parent, mode, fsync=fsync)
                        named = True
                    else:
                        named = replace
            if named and replace:
                os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            elif named:
                os.link(tmp, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
                os.unlink(tmp, dir_fd=parent)
            if folder is not None:
                _fsync_folder(folder)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent)
            raise
        finally:
            if folder is not None:
                os.close(folder)
    finally:
        os.close(parent)


def _check_replaceable(parent: int, name: str) -> None:
    """``OSError`` if a device, a FIFO or a socket is at ``name`` in ``parent``: no file
    replaces one (``secfl simulate -o /dev/null``, or ``policy init -o /dev/null
    --force``, run as root replaced the system's /dev/null with a regular file: found by
    a review). A regular file or a symbolic link (never followed) is replaced."""
    try:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
        raise OSError(
            errno.EINVAL, "a device, FIFO or socket is there, not a file to replace", name
        )


def _new_file(parent: int, tmp: str, mode: int) -> tuple[int, bool]:
    """A new file in the folder ``parent`` and whether it has a name (``tmp``).

    Where Linux can (``O_TMPFILE``, with ``/proc`` to link it by), the file has no
    name until it is whole: a process killed while writing (SIGKILL, the OOM killer)
    leaves nothing behind, not a half-written key or plaintext under a temporary
    name. Elsewhere it is created under ``tmp``, removed on any error we see."""
    if _TMPFILE and _FD_LINKS.is_dir():
        try:
            return os.open(".", _TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode, dir_fd=parent), False
        except OSError as exc:  # a file system without it: a named temporary file
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    return os.open(tmp, _FLAGS, mode, dir_fd=parent), True


def _copy_named(fd: int, tmp: str, parent: int, mode: int, *, fsync: bool) -> None:
    """The whole nameless file ``fd`` copied into a new file ``tmp`` in ``parent``,
    where it cannot be linked by its descriptor, with ``fd``'s permissions as they are
    now (a caller may have changed them from ``mode``: a decrypted file's own)."""
    out = os.open(tmp, _FLAGS, mode, dir_fd=parent)
    try:
        os.fchmod(out, stat.S_IMODE(os.fstat(fd).st_mode))
        offset = 0
        while data := os.pread(fd, 1 << 20, offset):
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
            offset += len(data)
        if fsync:
            os.fsync(out)
    finally:
        os.close(out)


def _link_fd(fd: int, name: str, parent: int) -> None:
    """Give the unnamed file ``fd`` the name ``name`` in ``parent`` (fails if taken)."""
    os.link(f"{_FD_LINKS}/{fd}", name, dst_dir_fd=parent, follow_symlinks=True)


def keep_out(folder: Path | str) -> None:
    """From now on, refuse any write of this process that lands in ``folder``."""
    resolved = os.path.join(os.path.realpath(folder), "")
    if resolved not in _KEPT_OUT:
        _KEPT_OUT.append(resolved)


def check_outside(fd: int, name: Path | str) -> None:
    """``PermissionError`` if the file open at ``fd`` lies in a folder :func:`keep_out`
    named. Where the system shows no descriptor's path (no ``/proc``), the checks at
    start-up stand alone; where it does but this one cannot be read, it is refused."""
    if not _KEPT_OUT or not _FD_LINKS.is_dir():
        return
    try:
        where = os.readlink(_FD_LINKS / str(fd))
    except OSError:
        where = ""
    if where and not where.startswith("/"):
        return  # a pipe or a socket ("pipe:[…]"): in no folder
    if not where or any(os.path.join(where, "").startswith(kept) for kept in _KEPT_OUT):
        raise PermissionError(
            errno.EPERM, "it leads into the workload's private folder (a link swapped in?)",
            str(name),
        )  # fmt: skip
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:  # a hard link's other name may
        raise PermissionError(  # be in the private folder, which no path shows
            errno.EPERM, "the file has other names (hard links): give a file of its own",
            str(name),
        )  # fmt: skip


def own_stream(path: Path | str) -> bool:
    """Whether ``path`` names this process's own stream (:data:`OWN_STREAM`): the one
    kind of name a write follows where it leads (a link in ``/dev``, a magic link in
    ``/proc``); every other name is opened with ``O_NOFOLLOW``, or replaced."""
    return OWN_STREAM.fullmatch(os.path.normpath(os.path.abspath(path))) is not None


def _open_writer(path: Path | str, flags: int, mode: int) -> int:
    """``os.open(path, flags | O_NONBLOCK, mode)``, through no symbolic link at the
    name unless it is this process's own stream (:func:`own_stream`): a FIFO nobody
    reads is an OSError at once (:data:`_NO_READER`), not a writer blocked for ever."""
    flags |= os.O_NONBLOCK | os.O_CLOEXEC | (0 if own_stream(path) else os.O_NOFOLLOW)
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ENXIO and _is_fifo(path):
            raise OSError(exc.errno, _NO_READER, str(path)) from None
        raise


def append(path: Path | str, data: bytes) -> None:
    """Append ``data`` to ``path`` (made 0644 if missing), in one write, unless the file
    really open lies in a folder :func:`keep_out` named. A pipe with a reader is
    written to (``--metrics /dev/stdout | ...``); a FIFO nobody reads, which someone
    put at ``path``, is an OSError at once, not a writer blocked for ever. A symbolic
    link at ``path`` is not followed (``ELOOP``): one planted at a metrics file's name
    had every round appended to the file it named (found by a review)."""
    fd = _open_writer(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.set_blocking(fd, True)
        check_outside(fd, path)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


_NO_READER = "a FIFO nobody reads (it would block the writer)"


def write_stream(path: Path | str, data: bytes) -> None:
    """Write ``data`` to the stream ``path`` in place (a pipe, a terminal, this process's
    ``/dev/stdout``), as ``open(path, "wb")`` would, but a FIFO nobody reads is an
    OSError at once: one that another user put at an output's name in a folder both may
    write in blocked the writer for ever (found by a review).

    Only this process's own stream names (:data:`OWN_STREAM`) are followed where they
    lead (a redirected stdout is written as it is); any other name must still be a
    FIFO or a device, and is opened neither through a link nor with ``O_CREAT`` or
    ``O_TRUNC``: a FIFO seen at the name, swapped for a link to another file before
    it was opened, had that file truncated and written (the review of the fix)."""
    own = own_stream(path)
    fd = _open_writer(path, os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if own else 0), 0o666)
    try:
        if not own and not _is_pipe_or_device(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "no longer a FIFO or a device: not written", str(path))
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _is_pipe_or_device(mode: int) -> bool:
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _is_fifo(path: Path | str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _open_folder(folder: Path | str, dir_fd: int | None = None) -> int | None:
    """A descriptor of ``folder`` to fsync, or None where it cannot be read (a drop box
    such as mode 1733): a write that succeeded is not reported as failed for that."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    except (PermissionError, FileNotFoundError):
        return None


def _fsync_folder(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:  # a file system that cannot fsync a folder at all
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise


def fsync_directory(folder: Path | str) -> None:
    """Make the names in ``folder`` durable (a rename or link in it survives a power
    loss); a folder this process cannot read, or a file system that cannot fsync one,
    is left as it is."""
    fd = _open_folder(folder)
    if fd is None:
        return
    try:
        _fsync_folder(fd)
    finally:
        os.close(fd)


def write_private(
    path: Path | str, data: bytes, *, fsync: bool = True, replace: bool = True
) -> Path:
    """:func:`atomic_write` with mode 0600: a key file, readable by its owner only."""
    return atomic_write(path, data, mode=0o600, fsync=fsync, replace=replace)


def ram_base() -> str | None:
    """``/dev/shm`` when it exists and is writable, else None (the system's temp folder)."""
    return str(_SHM) if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None


@contextmanager
def ram_tempdir(prefix: str) -> Iterator[Path]:
    """A private folder in RAM (mode 0700), removed with its contents on exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=ram_base()))
    try:
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: Path | str) -> bool:
    """Remove the folder ``path`` and all it holds; True if nothing is left.

    A program may leave folders read-only (``cp -r`` or ``tar x`` of a read-only tree,
    a module cache), or nest them thousands deep: ``shutil.rmtree`` cannot empty the
    first without root's override, and recurses once per level (a ``RecursionError``
    past about a thousand). Here each folder is given back its owner's rights (0700)
    through a descriptor of the folder itself, never a name a link could be swapped
    into, and the tree is flattened as it goes: each folder found is moved up into
    ``path`` and emptied in turn, so no path grows long and no recursion deepens. Only
    what another user owns (or an immutable file) can stay."""
    name = os.fspath(path)
    try:
        if not stat.S_ISDIR(os.lstat(name).st_mode):
            os.unlink(name)
            return True
        _grant(None, name)
        top = os.open(name, _DIR_FLAGS)
    except FileNotFoundError:
        return True
    except OSError:
        return not os.path.lexists(name)
    try:
        _flatten(top)
    finally:
        os.close(top)
    with suppress(OSError):
        os.rmdir(name)
    return not os.path.lexists(name)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HANDLE_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
#: How long :func:`remove_tree` goes on (a program still running could make new
#: folders for ever); what is left then is reported, not waited for.
_MAX_SECONDS = 30.0


def _flatten(top: int) -> None:
    """Empty the folder ``top`` (a descriptor), folders moved up into it first."""
    queue: list[str | None] = [None]  # None: ``top`` itself
    give_up = time.monotonic() + _MAX_SECONDS
    while queue and time.monotonic() < give_up:
        name = queue.pop()
        try:
            fd = os.dup(top) if name is None else os.open(name, _DIR_FLAGS, dir_fd=top)
        except OSError:  # a link or a file swapped in for it: removed as such
            with suppress(OSError):
                os.unlink(name or "", dir_fd=top)
            continue
        try:
            with os.scandir(fd) as entries:
                found = list(entries)
            for entry in found:
                if not entry.is_dir(follow_symlinks=False):
                    with suppress(OSError):
                        os.unlink(entry.name, dir_fd=fd)
                    continue
                _grant(fd, entry.name)
                if name is None:
                    queue.append(entry.name)
                    continue
                up = _move_up(fd, entry.name, top)
                if up is not None:
                    queue.append(up)
        except OSError:
            pass
        finally:
            os.close(fd)
        if name is not None:
            with suppress(OSError):
                os.rmdir(name, dir_fd=top)


def _move_up(fd: int, name: str, top: int) -> str | None:
    """Move the folder ``name`` (in ``fd``) into ``top`` under a fresh random name (a
    name the program could guess, and take first, kept its folder where it was: a
    review); None if it cannot be moved. Moving a folder needs write access to it:
    :func:`_grant` gave it."""
    for _ in range(8):
        up = f".secfl-removed-{secrets.token_hex(8)}"
        try:
            os.rename(name, up, src_dir_fd=fd, dst_dir_fd=top)
            return up
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                return None
    return None


def _grant(dir_fd: int | None, name: str) -> None:
    """Give the folder ``name`` (in ``dir_fd``) back its owner's rights, by a
    descriptor of the folder itself: a link swapped in at the name is not followed."""
    try:
        fd = os.open(name, _HANDLE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if (
            stat.S_ISDIR(info.st_mode)
            and info.st_uid == os.geteuid()
            and info.st_mode & 0o700 != 0o700
        ):
            os.chmod(f"/proc/self/fd/{fd}", 0o700)  # the folder held, not a name
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def memory_file(data: bytes, name: str) -> Iterator[str]:
    """A path from which ``data`` can be read until the block ends: an anonymous memory
    file (``/proc/self/fd/N`` of a ``memfd``) on Linux, gone with its descriptor or the
    process whatever kills it; elsewhere, or where a sandbox refuses ``memfd_create``,
    a 0600 file in :func:`ram_tempdir`."""
    create = getattr(os, "memfd_create", None)
    fd = -1
    if create is not None and Path("/proc/self/fd").is_dir():
        with suppress(OSError):  # refused by a sandbox (seccomp: ENOSYS, EPERM)
            fd = create(name, getattr(os, "MFD_CLOEXEC", 0))
    if fd >= 0:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with ram_tempdir("secfl-") as folder:
        path = folder / name
        fd = os.open(path, _FLAGS, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield str(path)


class TooLarge(ValueError):
    """A file is larger than its reader allows (see :func:`read_bounded`)."""


def open_regular(path: Path | str, *, follow: bool = True) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file: a FIFO or a device planted
    there is an ``OSError``, not a hang or an endless read (it is opened without
    blocking and checked before any read). ``follow=False``: not through a symbolic
    link either."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = open_regular_fd(path, flags)
    try:
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_regular_fd(path: Path | str, flags: int, mode: int = 0o600) -> int:
    """``os.open(path, flags, mode)``, if what it opened is a regular file; otherwise
    ``OSError`` (EINVAL), the descriptor closed. Pass ``O_NONBLOCK`` so that a FIFO
    is refused rather than waited on."""
    fd = os.open(path, flags, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(
    path: Path | str, max_bytes: int, *, untrusted: bool = False, regular: bool = False
) -> bytes:
    """The bytes of ``path``, reading at most ``max_bytes + 1`` of them: a file the
    caller did not write (a key file, a settings file) cannot make it read gigabytes.
    ``regular`` (a file on the host's disk): a regular file only, opened without
    blocking, so that a FIFO or a link to ``/dev/zero`` planted there is an error, not
    a hang or a flood. ``untrusted`` (a cache others can write): the same, and not
    reached through a symbolic link. Raises ``OSError``, or :class:`TooLarge` past
    ``max_bytes``."""
    if untrusted or regular:
        with open_regular(path, follow=not untrusted) as fh:
            data = fh.read(max_bytes + 1)
    else:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"{path} is larger than {max_bytes} bytes")
    return data
