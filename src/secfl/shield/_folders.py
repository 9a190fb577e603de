"""The folders a volume's file paths imply, looked up in its sorted paths.

A volume lists files only; ``a/b/c.csv`` implies the folders ``a`` and ``a/b``. An
index keyed by every folder's full path held each path's every prefix: a manifest
of deep paths (127 levels, 4 KiB each) took about 74 times its size in memory at
every open (found by a hostile review). The paths, sorted once, answer both
questions by binary search: a folder exists when a path starts with it and a slash,
and its entries are the next names of the paths in that range.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

__all__ = ["Folders"]


class Folders:
    """The folders implied by ``paths`` (``/``-separated, relative, no empty part)."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._paths = sorted(paths)

    def is_dir(self, path: object) -> bool:
        """True for a folder ("" is the root)."""
        if not isinstance(path, str):
            return False
        if path == "":
            return True
        prefix = path + "/"
        at = bisect.bisect_left(self._paths, prefix)
        return at < len(self._paths) and self._paths[at].startswith(prefix)

    def entries(self, path: str) -> list[str] | None:
        """The names directly inside folder ``path``, sorted; None if it is no folder."""
        if not self.is_dir(path):
            return None
        prefix = f"{path}/" if path else ""
        names: set[str] = set()
        at = bisect.bisect_left(self._paths, prefix)
        while at < len(self._paths) and self._paths[at].startswith(prefix):
            name, inside, _ = self._paths[at][len(prefix) :].partition("/")
            names.add(name)
            if not inside:  # a file: the next path may be a sibling ("a" then "a.csv")
                at += 1
                continue
            # a folder: past every path in it at once ("0" is the character after "/"),
            # one step per entry listed (a review: skipping to "name/\U0010ffff" also
            # skipped the siblings that sort between, "model" and "model.json")
            at = bisect.bisect_left(self._paths, f"{prefix}{name}0", at + 1)
        return sorted(names)
