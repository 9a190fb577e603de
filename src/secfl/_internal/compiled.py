"""Compiled Python code: files Python runs in place of, or beside, a module's source.

Python's file finder imports a compiled extension module (``NAME.cpython-311-x86_64-
linux-gnu.so``, ``NAME.so``) before ``NAME.py`` of the same folder, a sourceless
``NAME.pyc`` when there is no ``NAME.py``, and the loader of ``NAME.py`` runs
``__pycache__/NAME.cpython-3XX.pyc`` instead when that bytecode says so (compiled
"unchecked-hash", it is never compared with the source; a "checked-hash" one is
compared only by the hash its header claims). Reviewers who read the sources see none
of it: secfl refuses such files where code is shipped (a FAB, ``secfl shield encrypt``)
unless told that they are meant to be there.
"""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import PurePosixPath

__all__ = ["COMPILED_SUFFIXES", "first_compiled", "is_compiled"]

#: Files Python would run in place of, or beside, a module's source.
COMPILED_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", *importlib.machinery.EXTENSION_SUFFIXES)


def is_compiled(path: str) -> bool:
    """Whether ``path`` (``/``-separated, relative) is bytecode (below a
    ``__pycache__`` folder, or ``.pyc``/``.pyo``) or a compiled extension module."""
    return "__pycache__" in PurePosixPath(path).parts or path.lower().endswith(COMPILED_SUFFIXES)


def first_compiled(top: str | os.PathLike[str]) -> str | None:
    """The first file below the folder ``top`` (in sorted order, symbolic links not
    followed) that :func:`is_compiled`, as a ``/``-separated path relative to ``top``;
    None if there is none. A folder it cannot list is passed over (the caller that
    reads the folder then says why it cannot)."""
    for directory, folders, files in os.walk(top, followlinks=False):
        folders.sort()
        below = os.path.relpath(directory, top)
        for name in sorted(files):
            rel = name if below == "." else f"{below}/{name}".replace(os.sep, "/")
            if is_compiled(rel):
                return rel
    return None
