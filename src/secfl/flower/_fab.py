"""What a board-approved FAB (a Flower app's zip) may hold: only files its manifest
lists, and no compiled code.

Flower installs every member of a FAB, but checks only the files its manifest
(``.info/CONTENT``) lists, and then imports the app as Python does: a module's
``__pycache__`` bytecode runs instead of its source when the bytecode says so
("unchecked-hash", or a "checked-hash" one carrying the source's hash over other
code), and a compiled module (``client_app.cpython-311-x86_64-linux-gnu.so``) before
``client_app.py``. So a FAB whose listed sources its reviewers read, with such a file
added beside them, ran other code under the approved digest (found by a hostile
review). ``flwr build`` puts neither in a FAB (only ``*.py``, ``*.toml``, ``*.md``,
``*.yaml``, ``*.json``... each listed): a FAB holding one is refused
(:func:`check_fab`), by the SuperLink's wrapper before it submits it and by every
app process before Flower installs it. Needs no Flower (both venvs import it).
"""

from __future__ import annotations

import io
import zipfile
import zlib

from secfl._internal.compiled import is_compiled
from secfl.errors import FlowerError

__all__ = ["MANIFEST", "MAX_MEMBERS", "check_fab"]

#: The FAB's manifest: ``path,sha256,size`` per file (Flower's ``.info/CONTENT``).
MANIFEST = ".info/CONTENT"
#: The most members a FAB may have (an app is tens of files), and its manifest's size.
MAX_MEMBERS = 10_000
_MAX_MANIFEST = 4 << 20


def check_fab(fab: bytes) -> None:
    """Refuse (:class:`FlowerError`, one line) a FAB that is not a zip with a manifest,
    holds a file its manifest does not list, or holds bytecode or a compiled module."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            members = archive.infolist()
            if len(members) > MAX_MEMBERS:
                raise FlowerError(f"fab: {len(members)} files, more than {MAX_MEMBERS}")
            listed = _listed(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, OSError,
            NotImplementedError):  # fmt: skip
        raise FlowerError("fab: not a readable zip (a FAB is one)") from None
    for member in members:
        name = member.filename
        if member.is_dir() or name == MANIFEST:
            continue
        shown = repr(name[:120])
        if is_compiled(name):
            raise FlowerError(
                f"fab: it holds {shown}, compiled code Python would run in place of the "
                "source its reviewers read (`flwr build` puts none in a FAB)"
            )
        if name not in listed:
            raise FlowerError(
                f"fab: it holds {shown}, which its manifest ({MANIFEST}) does not list: "
                "Flower would install it unchecked (`flwr build` lists every file)"
            )


def _listed(archive: zipfile.ZipFile) -> set[str]:
    """The paths the manifest lists."""
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise FlowerError(f"fab: no manifest ({MANIFEST}); build it with `flwr build`") from None
    if info.file_size > _MAX_MANIFEST:
        raise FlowerError(f"fab: its manifest is larger than {_MAX_MANIFEST} bytes")
    with archive.open(info) as fh:
        text = fh.read(_MAX_MANIFEST + 1).decode("utf-8", errors="replace")
    return {line.split(",", 1)[0] for line in text.splitlines() if line.strip()}
