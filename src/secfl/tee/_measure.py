"""``secfl measure``: one deterministic SHA-384 for a workload, for policies to pin.

The digest is over a canonical manifest of the files and the command, not over
an archive, so it does not depend on where the tree lives, on timestamps, owners,
or the order a directory lists its entries in; it changes with any byte, mode,
name, folder, link target or argument.

Manifest, format ``secfl-measure/1``::

    {"format": "secfl-measure/1",
     "entries": [ ...one per folder, file and symbolic link, sorted by path... ],
     "command": ["argv0", "arg1", ...] or null}

    folder:        {"path": P, "type": "dir",     "mode": M}
    regular file:  {"path": P, "type": "file",    "mode": M, "size": N, "sha256": H}
    symbolic link: {"path": P, "type": "symlink", "target": T}

- ``P``: the path relative to the parent of the argument it came from, so the
  argument ``/srv/app`` yields ``app``, ``app/main.py``...; a file argument is
  named by its base name. "/" separates components; names are NFC-normalised
  Unicode and must be valid UTF-8. Entries are sorted by the UTF-8 bytes of ``P``.
- ``M``: the permission bits (including setuid, setgid, sticky) as 4 octal digits, "0644".
- ``H``: lowercase hex SHA-256 of the content; ``N`` its size in bytes.
- ``T``: the link's target as stored (NFC); links are never followed.
- Sockets, FIFOs and devices are refused, as is any name given twice.
- ``exclude`` (present only when given): base names left out at any depth.
- ``command``: a string is split like a POSIX shell does (:func:`shlex.split`),
  so the digest depends on the argument vector, not on spacing; a sequence is
  taken as the argument vector itself.

The digest is the lowercase hex SHA-384 of the manifest's canonical JSON (sorted
keys, no spaces, UTF-8: :func:`secfl._internal.canonical.canonical_json`, through
:func:`canonical_manifest_bytes`).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from secfl._internal.canonical import canonical_json
from secfl._internal.names import nfc_name
from secfl.errors import MeasurementError

__all__ = [
    "CHUNK_SIZE",
    "FORMAT",
    "canonical_manifest_bytes",
    "manifest",
    "measure",
]

FORMAT: Final = "secfl-measure/1"
#: Files are hashed in chunks of this size, so memory stays bounded for any file size.
CHUNK_SIZE: Final = 1 << 20

_OTHER_TYPES: Final = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def manifest(
    paths: Sequence[Path | str],
    command: Sequence[str] | str | None = None,
    *,
    exclude: Collection[str] = (),
) -> dict[str, Any]:
    """The canonical manifest of ``paths`` and ``command`` (see the module docstring).

    ``exclude`` names entries (by base name, at any depth below an argument) that
    are left out, such as ``__pycache__``; the manifest then records the list, so
    the digest says what was excluded.
    """
    entries: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    for arg in paths:
        top = Path(arg)
        name = _top_name(top)
        if name in origin:
            raise MeasurementError(
                f"measure: {origin[name]} and {top} would both be named '{name}'; "
                "measure them from different parent folders"
            )
        origin[name] = top
        for path, entry_name, st in _walk(top, name, frozenset(exclude)):
            if entry_name in entries:
                raise MeasurementError(
                    f"measure: two entries are named '{entry_name}' (the second is {path}); "
                    "names are compared after NFC normalisation"
                )
            entries[entry_name] = _entry(path, entry_name, st)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "entries": [entries[k] for k in sorted(entries, key=lambda k: k.encode())],
        "command": _argv(command),
    }
    if exclude:
        doc["exclude"] = sorted(set(exclude))
    return doc


def canonical_manifest_bytes(doc: Mapping[str, Any]) -> bytes:
    """The exact bytes that are hashed: sorted keys, no spaces, UTF-8."""
    return canonical_json(doc)


def measure(
    paths: Sequence[Path | str],
    command: Sequence[str] | str | None = None,
    *,
    exclude: Collection[str] = (),
) -> str:
    """Lowercase hex SHA-384 of the canonical manifest of ``paths`` and ``command``."""
    doc = manifest(paths, command, exclude=exclude)
    return hashlib.sha384(canonical_manifest_bytes(doc)).hexdigest()


def _nfc(name: str, path: Path | str) -> str:
    recorded = nfc_name(name)
    if recorded is None:
        raise MeasurementError(f"measure: the name of {path!r} is not valid UTF-8")
    return recorded


def _top_name(top: Path) -> str:
    # abspath, not resolve: the argument itself is named, never what a link points to
    name = os.path.basename(os.path.abspath(top))
    if not name:
        raise MeasurementError(f"measure: {top} has no name to measure it under")
    return _nfc(name, top)


def _walk(
    top: Path, name: str, exclude: frozenset[str] = frozenset()
) -> list[tuple[Path, str, os.stat_result]]:
    """Every (path, manifest name, lstat) under ``top``, ``top`` included; no link followed."""
    try:
        st = os.lstat(top)
    except OSError as exc:
        raise MeasurementError(f"measure: cannot read {top}: {_reason(exc)}") from None
    found = [(top, name, st)]
    folders = [(top, name)] if stat.S_ISDIR(st.st_mode) else []
    while folders:
        folder, folder_name = folders.pop()
        try:
            with os.scandir(folder) as listing:
                children = [(Path(e.path), e.name) for e in listing if e.name not in exclude]
        except OSError as exc:
            raise MeasurementError(f"measure: cannot list {folder}: {_reason(exc)}") from None
        for path, child in children:
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise MeasurementError(f"measure: cannot read {path}: {_reason(exc)}") from None
            child_name = f"{folder_name}/{_nfc(child, path)}"
            found.append((path, child_name, st))
            if stat.S_ISDIR(st.st_mode):
                folders.append((path, child_name))
    return found


def _entry(path: Path, name: str, st: os.stat_result) -> dict[str, Any]:
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError as exc:
            raise MeasurementError(f"measure: cannot read link {path}: {_reason(exc)}") from None
        return {"path": name, "type": "symlink", "target": _nfc(target, path)}
    if stat.S_ISDIR(st.st_mode):
        return {"path": name, "type": "dir", "mode": _mode(st)}
    if stat.S_ISREG(st.st_mode):
        size, digest, st = _hash_file(path)
        return {"path": name, "type": "file", "mode": _mode(st), "size": size, "sha256": digest}
    kind = next((k for test, k in _OTHER_TYPES if test(st.st_mode)), "special file")
    raise MeasurementError(
        f"measure: {path} is a {kind}; only files, folders and symbolic links can be measured"
    )


def _hash_file(path: Path) -> tuple[int, str, os.stat_result]:
    """(size, sha256, fstat) of a regular file, read in bounded chunks.

    Opened without following links and checked again after opening, so a file
    swapped for a link or a FIFO between listing and reading is refused, not read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise MeasurementError(f"measure: cannot read {path}: {_reason(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MeasurementError(f"measure: {path} changed type while being measured")
        sha = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as fh:
            while chunk := fh.read(CHUNK_SIZE):
                sha.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise MeasurementError(f"measure: cannot read {path}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    if size != st.st_size:
        raise MeasurementError(f"measure: {path} changed size while being measured")
    return size, sha.hexdigest(), st


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _argv(command: Sequence[str] | str | None) -> list[str] | None:
    if command is None:
        return None
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise MeasurementError(f"measure: cannot split the command: {exc}") from None
    else:
        argv = list(command)
        for arg in argv:
            if not isinstance(arg, str):
                raise MeasurementError(
                    f"measure: command arguments must be strings, not {type(arg).__name__}"
                )
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise MeasurementError(
                f"measure: command argument {arg!r} is not valid UTF-8"
            ) from None
    return argv


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
