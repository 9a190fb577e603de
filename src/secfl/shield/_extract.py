"""Decrypting an open volume's files into a folder (``secfl decrypt``, the owner side).

:func:`extract` writes every file of a volume below a folder only this user can write
in, one name at a time following no link, each file nameless until it is whole and
authenticated, with its recorded permission bits less the umask (never setuid, setgid
or sticky). :meth:`secfl.shield.Volume.extract` is its public face.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from secfl._internal import files
from secfl._internal.ownership import foreign_writer
from secfl.errors import ShieldError
from secfl.shield._chunk_source import ChunkSource, FileEntry
from secfl.shield._reader import VolumeFile

__all__ = ["extract"]

#: A folder held to decrypt files into (O_PATH: no read permission needed).
_FOLDER = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
#: The mode bits a decrypted file gets from its manifest entry (no setuid, setgid, sticky).
_PERMISSIONS = 0o777


def extract(source: ChunkSource, entries: list[FileEntry], chunk_size: int, dest: Path) -> None:
    """Decrypt every file of ``entries`` (read through ``source``) below ``dest``.

    ``dest`` may exist; no existing file is overwritten (all targets are checked
    first) and no symbolic link is followed below it. A file appears under its name
    only once it is whole and authenticated, with its recorded mode: one whose chunk
    fails authentication, or a decryption killed half-way, leaves nothing under that
    name."""
    for index, entry in enumerate(entries):
        target = dest.joinpath(*entry.path.split("/"))
        if os.path.lexists(target):
            raise ShieldError(
                f"shield: refusing to overwrite {_target(source, dest, index, entry)}: decrypt "
                "into a new or empty folder (-o)"
            )
    try:
        dest.mkdir(parents=True, exist_ok=True)
        top = os.open(dest, _FOLDER)
    except OSError as exc:
        raise ShieldError(f"shield: cannot create '{dest}': {exc.strerror or exc}") from None
    try:
        _only_ours(top, f"'{dest}'")
        buffer = bytearray(max(1, min(chunk_size, 1 << 24)))
        for index, entry in enumerate(entries):
            _extract_one(source, top, dest, index, entry, buffer)
    finally:
        os.close(top)


def _only_ours(folder: int, shown: str) -> None:
    """Refuse to decrypt into ``folder`` unless only this user can write in it (found
    by a review: plaintext was written into a world-writable or another user's folder)."""
    if (why := foreign_writer(folder)) is not None:
        raise ShieldError(
            f"shield: {shown} {why}: decrypt into a new folder of your own (-o), or one "
            "only you can write"
        )


def _target(source: ChunkSource, dest: Path, index: int, entry: FileEntry) -> str:
    """Where file ``index`` goes below ``dest``, as a refusal shows it."""
    if source.reveal_names:
        return f"'{dest / entry.path}'"
    return f"{source.label(index, entry)} below '{dest}'"


def _extract_one(
    source: ChunkSource, top: int, dest: Path, index: int, entry: FileEntry, buffer: bytearray
) -> None:
    parts = entry.path.split("/")
    where = _target(source, dest, index, entry)
    # each folder below ``dest`` is made and opened one name at a time, following no
    # link: one checked by its path, then opened by it, was swapped for a link in
    # between by a user who may write in ``dest``, and the plaintext was written
    # where the link led (found by a review)
    folder = top
    try:
        for depth, part in enumerate(parts[:-1], 1):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=folder)
            try:
                below = os.open(part, _FOLDER | os.O_NOFOLLOW, dir_fd=folder)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                shown = (
                    f"'{dest.joinpath(*parts[:depth])}'"
                    if source.reveal_names
                    else f"a folder of {where}"
                )
                raise ShieldError(f"shield: {shown} exists and is not a folder") from None
            if folder != top:
                os.close(folder)
            folder = below
            _only_ours(
                folder,
                f"'{dest.joinpath(*parts[:depth])}'"
                if source.reveal_names
                else f"a folder of {where}",
            )
        _write_one(source, folder, parts[-1], index, entry, buffer, where)
    except OSError as exc:
        raise ShieldError(f"shield: cannot write {where}: {exc.strerror or exc}") from None
    finally:
        if folder != top:
            os.close(folder)


def _write_one(
    source: ChunkSource,
    folder: int,
    name: str,
    index: int,
    entry: FileEntry,
    buffer: bytearray,
    where: str,
) -> None:
    """File ``index`` decrypted into a new file ``name`` of the open ``folder``."""
    # nameless until whole and authenticated (files.atomic_open): a file cut short
    # (a kill, a full disk, a chunk that fails authentication) never appears under
    # its name, where it looked complete
    try:
        with (
            files.atomic_open(
                name, mode=0o600, fsync=False, replace=False, folder_fd=folder
            ) as sink,
            VolumeFile(source, index, entry) as raw,
        ):
            while n := raw.readinto(buffer):
                sink.write(memoryview(buffer)[:n])
            # never setuid or setgid (nor sticky): a volume's manifest, made by
            # whoever sent it, recorded 6755 and `decrypt` run as root made a
            # setuid-root program of its file (found by a review); nor what the
            # umask takes away (a file recorded 0666 was writable by every user)
            os.fchmod(sink.fileno(), entry.mode & _PERMISSIONS & ~_umask())
    except FileExistsError:
        raise ShieldError(f"shield: refusing to overwrite {where}") from None
    except OSError as exc:
        raise ShieldError(f"shield: cannot write {where}: {exc.strerror or exc}") from None


def _umask() -> int:
    """This process's umask (set to 077 for a moment to read it: a file another thread
    makes meanwhile is only more private)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
