"""Import Python code straight from an open volume: plaintext source never touches disk.

:class:`VolumeImporter` is a meta-path finder and loader. Installed, it serves the
``.py`` modules and ``__init__.py`` packages of a volume: it reads a module's
chunks (each authenticated, the file's SHA-256 checked), decodes the source and
compiles it in memory with ``compile(source, virtual_path, "exec")``. It never
writes bytecode or source anywhere, whatever ``sys.dont_write_bytecode`` says:
there is no ``set_data`` and no cache. Modules get a virtual ``__file__`` such as
``<secfl-volume 0123abcd…>/mytask.py`` that does not exist on disk; tracebacks
still show source lines (through ``get_source``). Package data is readable with
``importlib.resources.files(pkg)`` and ``pkgutil.get_data`` (but
``importlib.resources.as_file`` would write a temporary copy to disk: avoid it for
confidential data).

Folders of code without an ``__init__.py`` are namespace packages of the volume
alone. It is inserted first in ``sys.meta_path`` so that a module in the volume cannot be
shadowed by a file a host plants on ``sys.path``, and a submodule of a volume
package that is not in the volume is refused (ModuleNotFoundError) rather than
looked up elsewhere. A module already in ``sys.modules`` is not re-imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import io
import linecache
import sys
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from importlib.resources.abc import Traversable, TraversableResources
from types import CodeType, ModuleType, TracebackType
from typing import Any, Self

from secfl.errors import ShieldError
from secfl.shield import _format as fmt
from secfl.shield._volume import Volume

__all__ = [
    "VolumeImporter",
    "VolumePath",
]


class VolumeImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serve the modules found below ``prefix`` (a folder of the volume, "" = its root)."""

    def __init__(self, volume: Volume, *, prefix: str = "") -> None:
        prefix = prefix.strip("/")
        if prefix:
            fmt.check_path(prefix, "importer prefix")
            if not volume.is_dir(prefix):
                raise ShieldError(f"shield: the volume has no folder {prefix!r} to import from")
        self._volume = volume
        self._prefix = prefix + "/" if prefix else ""
        self._root = f"<secfl-volume {volume.tag[:16]}>"
        self._loaded: set[str] = set()

    @property
    def root(self) -> str:
        """The virtual folder that ``__file__`` of served modules starts with."""
        return self._root

    # -- installation -----------------------------------------------------------

    def install(self) -> Self:
        """Put this finder first in ``sys.meta_path`` (idempotent)."""
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        return self

    def uninstall(self) -> None:
        """Remove the finder, forget the modules it loaded and their cached source lines."""
        while self in sys.meta_path:
            sys.meta_path.remove(self)
        for name in sorted(self._loaded, reverse=True):
            module = sys.modules.get(name)
            if module is not None and getattr(module.__spec__, "loader", None) is self:
                del sys.modules[name]
        self._loaded.clear()
        for filename in [f for f in linecache.cache if f.startswith(self._root + "/")]:
            linecache.cache.pop(filename, None)

    def __enter__(self) -> Self:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    # -- finding ----------------------------------------------------------------

    def _virtual(self, path: str) -> str:
        return f"{self._root}/{path}" if path else self._root

    def _locate(self, fullname: str) -> tuple[str, bool] | None:
        """(volume path of the module's source, is it a package) or None."""
        parts = fullname.split(".")
        if not all(p.isidentifier() for p in parts):
            return None
        base = self._prefix + "/".join(parts)
        if f"{base}/__init__.py" in self._volume:
            return f"{base}/__init__.py", True
        if f"{base}.py" in self._volume:
            return f"{base}.py", False
        return None

    def _namespace(self, fullname: str) -> str | None:
        """The volume folder of namespace package ``fullname``: a folder holding
        Python code (in it or below) and no ``__init__.py``."""
        parts = fullname.split(".")
        base = self._prefix + "/".join(parts)
        if not all(p.isidentifier() for p in parts) or not self._volume.is_dir(base):
            return None
        inside = base + "/"
        if any(e.path.startswith(inside) and e.path.endswith(".py") for e in self._volume.files):
            return base
        return None

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        parent = fullname.rpartition(".")[0]
        if parent:
            parent_dir = self._virtual(self._prefix + parent.replace(".", "/"))
            if path is None or parent_dir not in list(path):
                return None  # not a package of this volume
        found = self._locate(fullname)
        if found is None and (folder := self._namespace(fullname)) is not None:
            # a folder of the volume's code without __init__.py: served from the volume
            # alone (else the import fell through to sys.path, where a planted package
            # of that name would be imported instead), unless another code volume has
            # a module or package of that name, which wins as it would on sys.path
            if any(
                isinstance(finder, VolumeImporter) and finder is not self
                and finder._locate(fullname) is not None
                for finder in sys.meta_path
            ):  # fmt: skip
                return None
            spec = ModuleSpec(fullname, self, is_package=True)
            spec.submodule_search_locations = [self._virtual(folder)]
            return spec
        if found is None:
            if parent:
                raise ModuleNotFoundError(
                    f"No module named {fullname!r} in volume {self._volume.tag[:16]}…",
                    name=fullname,
                )
            return None
        source, is_package = found
        spec = ModuleSpec(
            fullname,
            self,
            origin=self._virtual(source),
            loader_state=source,
            is_package=is_package,
        )
        if is_package:
            spec.submodule_search_locations = [self._virtual(source.rpartition("/")[0])]
        spec.has_location = True
        return spec

    def invalidate_caches(self) -> None:
        pass

    # -- loading ----------------------------------------------------------------

    def _require(self, fullname: str) -> tuple[str, bool]:
        found = self._locate(fullname)
        if found is None:
            raise ImportError(
                f"module {fullname!r} is not in volume {self._volume.tag[:16]}…", name=fullname
            )
        return found

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        if module.__spec__ is not None and module.__spec__.loader_state is None:
            self._loaded.add(module.__name__)  # a namespace package: no code of its own
            return
        code = self.get_code(module.__name__)
        self._loaded.add(module.__name__)
        exec(code, module.__dict__)  # noqa: S102 - the volume's authenticated code

    def get_source(self, fullname: str) -> str:
        source, _ = self._require(fullname)
        return importlib.util.decode_source(self._volume.read_bytes(source))

    def get_code(self, fullname: str) -> CodeType:
        source, _ = self._require(fullname)
        text = self.get_source(fullname)
        return compile(text, self._virtual(source), "exec", dont_inherit=True)

    def is_package(self, fullname: str) -> bool:
        return self._require(fullname)[1]

    def get_filename(self, fullname: str) -> str:
        return self._virtual(self._require(fullname)[0])

    def get_data(self, path: str) -> bytes:
        """The bytes of a volume file named by its virtual path (``pkgutil.get_data``)."""
        inside = str(path).removeprefix(self._root + "/")
        if inside == str(path) or inside not in self._volume:
            raise FileNotFoundError(f"{path!r} is not a file of volume {self._volume.tag[:16]}…")
        return self._volume.read_bytes(inside)

    def get_resource_reader(self, fullname: str) -> TraversableResources | None:
        found = self._locate(fullname)
        if found is None or not found[1]:
            return None
        return _Resources(self._volume, found[0].rpartition("/")[0], self._root)


class _Resources(TraversableResources):
    def __init__(self, volume: Volume, folder: str, root: str) -> None:
        self._files = VolumePath(volume, folder, root)

    def files(self) -> VolumePath:
        return self._files


class VolumePath(Traversable):
    """A file or folder of a volume, as ``importlib.resources`` sees it."""

    def __init__(self, volume: Volume, path: str, root: str | None = None) -> None:
        self._volume = volume
        self._path = path
        self._root = root or f"<secfl-volume {volume.tag[:16]}>"

    @property
    def name(self) -> str:
        return self._path.rpartition("/")[2]

    def is_file(self) -> bool:
        return self._path in self._volume

    def is_dir(self) -> bool:
        return self._volume.is_dir(self._path)

    def iterdir(self) -> Iterator[VolumePath]:
        if not self.is_dir():
            raise NotADirectoryError(str(self))
        for name in self._volume.listdir(self._path):
            yield self._child(name)

    def _child(self, name: str) -> VolumePath:
        return VolumePath(self._volume, f"{self._path}/{name}" if self._path else name, self._root)

    def joinpath(self, *descendants: Any) -> VolumePath:
        parts = [p for p in self._path.split("/") if p]
        for descendant in descendants:
            for part in str(descendant).replace("\\", "/").split("/"):
                if part in ("", "."):
                    continue
                if part == "..":
                    if parts:
                        parts.pop()
                    continue
                parts.append(part)
        return VolumePath(self._volume, "/".join(parts), self._root)

    def __truediv__(self, child: Any) -> VolumePath:
        return self.joinpath(child)

    def open(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode not in ("r", "rb"):
            raise ValueError(f"volume files are read-only; mode {mode!r} is not supported")
        if not self.is_file():
            raise FileNotFoundError(str(self))
        stream = self._volume.open_file(self._path, check_digest=True)
        return stream if mode == "rb" else io.TextIOWrapper(stream, *args, **kwargs)

    def read_bytes(self) -> bytes:
        if not self.is_file():
            raise FileNotFoundError(str(self))
        return self._volume.read_bytes(self._path)

    def read_text(self, encoding: str | None = None) -> str:
        return self.read_bytes().decode(encoding or "utf-8")

    def __str__(self) -> str:
        return f"{self._root}/{self._path}" if self._path else self._root

    def __repr__(self) -> str:
        return f"VolumePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, VolumePath)
            and other._volume is self._volume
            and other._path == self._path
        )

    def __hash__(self) -> int:
        return hash((id(self._volume), self._path))
