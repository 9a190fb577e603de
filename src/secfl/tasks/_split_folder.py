"""The output folder of ``secfl data split``: checked, staged into, the earlier split cleared.

A split's shards are a site's data in the clear, before ``shield encrypt``: the folder
must be one only this user can write in (:func:`only_ours`), an earlier split in it is
refused unless overwritten (:func:`check_folder`), every shard is staged under a hidden
name (:func:`stage`) before any earlier file changes, and the earlier split's files the
new one does not replace are removed, the manifest first (:func:`prepare`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from secfl._internal.ownership import foreign_writer
from secfl.errors import TaskError

__all__ = [
    "MANIFEST",
    "SHARD_MODE",
    "check_folder",
    "only_ours",
    "prepare",
    "remove_staged_leftovers",
    "split_files",
    "stage",
]

MANIFEST = "split.json"
# A site's shards are its data in the clear, before `shield encrypt`: readable by their
# owner only, whatever the umask (0644 let every local user read a hospital's records)
SHARD_MODE = 0o600

_STAGED = re.compile(r"\.(client-\d+|validation|test)\.safetensors\.[0-9a-f]{16}\.tmp")


def remove_staged_leftovers(folder: Path) -> None:
    """Delete the shards a split killed while staging left (this user's files only)."""
    for path in folder.iterdir():
        if _STAGED.fullmatch(path.name) and path.lstat().st_uid == os.geteuid():
            path.unlink(missing_ok=True)


def stage(path: Path, blob: bytes) -> Path:
    """``blob`` in a new file beside ``path`` under a fresh hidden name, to be renamed
    over ``path`` once every shard is staged."""
    temporary = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(temporary, flags, SHARD_MODE), "wb") as fh:
        fh.write(blob)
    return temporary


def only_ours(folder: Path) -> None:
    """Refuse a folder another user owns or may write in: the shards are the site's
    data in the clear, before `shield encrypt`, and such a user could read them (owning
    the folder) or swap one for data of their choosing (found by a review)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        why = foreign_writer(fd)
    finally:
        os.close(fd)
    if why is not None:
        raise TaskError(f"split: '{folder}' {why}: write the shards to a new folder (-o)")


def check_folder(folder: Path, overwrite: bool) -> None:
    """Refuse an output that is not a folder, or holds a split and no ``overwrite``."""
    try:  # (`Path.exists` raised on a name too long or a folder not searchable: a traceback)
        is_dir = stat.S_ISDIR(os.stat(folder).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        is_dir = None  # a new folder (made below, or refused in one line there)
    except OSError as exc:
        raise TaskError(f"output '{folder}': {exc.strerror or exc}") from None
    if is_dir is False:
        raise TaskError(f"output '{folder}' exists and is not a folder")
    stale = split_files(folder) if is_dir else []
    if stale and not overwrite:
        raise TaskError(
            f"'{folder}' already holds a split ({stale[0].name}); choose an empty folder "
            "or overwrite it"
        )
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            raise TaskError(f"'{path}' is not a file; move it out of '{folder}' first")


def split_files(folder: Path) -> list[Path]:
    try:
        names = sorted(folder.iterdir())
    except OSError as exc:
        raise TaskError(f"cannot read '{folder}': {exc.strerror or exc}") from None
    return [
        p
        for p in names
        if p.name in (MANIFEST, "validation.safetensors", "test.safetensors")
        or (p.name.startswith("client-") and p.name.endswith(".safetensors"))
    ]


def prepare(folder: Path, keep: set[str]) -> None:
    """Remove the earlier split's files (``overwrite`` was checked) that the new one does
    not replace, the manifest first: a folder caught half-way never describes shards it
    does not hold."""
    for path in sorted(split_files(folder), key=lambda p: p.name != MANIFEST):
        if path.name not in keep or path.name == MANIFEST:
            path.unlink()
