"""Importing code from a volume: it runs, and no plaintext source or bytecode reaches disk."""

from __future__ import annotations

import importlib
import importlib.resources
import os
import pkgutil
import runpy
import shutil
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from secfl.errors import ShieldError
from secfl.shield import Volume, VolumeImporter, encrypt_directory
from secfl.shield import _format as fmt
from tests.shield import KEY, write_tree

PACKAGE = {
    "shtask/__init__.py": b'"""A task."""\nfrom .model import train\n\nNAME = "shtask"\n',
    "shtask/model.py": (
        b"from shtask import helpers\n\n\ndef train(x):\n    return helpers.double(x) + 1\n"
    ),
    "shtask/helpers.py": b"def double(x):\n    return 2 * x\n\n\ndef boom():\n"
    b"    raise ValueError('boom from the volume')\n",
    "shtask/__main__.py": b"import shtask\nRESULT = shtask.train(20)\n",
    "shtask/data/config.txt": b"lr=0.1\n",
    "shtask/data/labels.csv": b"a,b\n",
    "shsingle.py": b"# -*- coding: latin-1 -*-\nVALUE = '\xe9t\xe9'\n",
    "README": b"not code",
}


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Volume]:
    src = write_tree(tmp_path / "src", PACKAGE)
    encrypt_directory(src, tmp_path / "code.vol", KEY, chunk_size=64)
    shutil.rmtree(src)  # the plaintext is gone: anything imported comes from the volume
    with Volume.open(tmp_path / "code.vol", KEY) as v:
        yield v


def files_below(*roots: Path) -> set[Path]:
    return {p for root in roots if root.exists() for p in root.rglob("*")}


#: Every file this process opens while recording (audit hooks cannot be removed,
#: so the hook stays, idle, once installed).
_OPENED: list[tuple[str, object, object]] | None = None
_HOOKED = False


def _audit(event: str, args: tuple) -> None:  # type: ignore[type-arg]
    if event == "open" and _OPENED is not None:
        _OPENED.append((str(args[0]), args[1], args[2]))


def _record_opens() -> list[tuple[str, object, object]]:
    global _OPENED, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True
    _OPENED = []
    return _OPENED


def _stop_recording() -> None:
    global _OPENED
    _OPENED = None


def test_package_imports_and_runs_from_memory(
    volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # the loader itself writes nothing
    monkeypatch.chdir(tmp_path)
    before = files_below(tmp_path)
    opened = _record_opens()
    try:
        _import_and_check(volume)
        (tmp_path / "probe").write_bytes(b"")  # proves that the recording sees writes
    finally:
        _stop_recording()
    (tmp_path / "probe").unlink()
    assert files_below(tmp_path) == before  # no source, no __pycache__
    # Nothing was opened for writing, and no file named like the modules was opened at all.
    writes = [o[0] for o in opened if o[1] not in (None, "r", "rb") or (o[2] or 0) & 3]
    assert writes == [str(tmp_path / "probe")], writes
    assert [o for o in opened if "shtask" in o[0] or "shsingle" in o[0]] == []
    assert "shtask" not in sys.modules and "shsingle" not in sys.modules
    assert not any(isinstance(f, VolumeImporter) for f in sys.meta_path)


def _import_and_check(volume: Volume) -> None:
    with VolumeImporter(volume) as importer:
        import shtask  # type: ignore[import-not-found]
        import shtask.helpers  # type: ignore[import-not-found]

        assert shtask.train(20) == 41 and shtask.NAME == "shtask"
        assert sys.meta_path[0] is importer
        for module in (shtask, shtask.model, shtask.helpers):
            assert module.__file__.startswith(f"<secfl-volume {volume.tag[:16]}>/shtask/")
            assert not os.path.exists(module.__file__)
            assert module.__spec__.loader is importer
        assert shtask.__file__ == f"{importer.root}/shtask/__init__.py"
        assert shtask.__path__ == [f"{importer.root}/shtask"]
        single = importlib.import_module("shsingle")
        assert single.VALUE == "\u00e9t\u00e9"  # the coding declaration is honoured


def test_tracebacks_show_volume_source(volume: Volume) -> None:
    with VolumeImporter(volume):
        import shtask.helpers  # type: ignore[import-not-found]

        with pytest.raises(ValueError, match="boom from the volume") as info:
            shtask.helpers.boom()
        text = "".join(traceback.format_exception(info.value))
        assert "shtask/helpers.py" in text and "raise ValueError('boom from the volume')" in text


def test_resources_and_get_data(volume: Volume) -> None:
    with VolumeImporter(volume):
        import shtask  # type: ignore[import-not-found]

        files = importlib.resources.files(shtask)
        assert (files / "data" / "config.txt").read_text() == "lr=0.1\n"
        assert files.joinpath("data", "labels.csv").read_bytes() == b"a,b\n"
        assert sorted(p.name for p in files.joinpath("data").iterdir()) == [
            "config.txt",
            "labels.csv",
        ]
        assert files.joinpath("model.py").is_file() and files.joinpath("data").is_dir()
        with files.joinpath("data/config.txt").open() as f:
            assert f.read() == "lr=0.1\n"
        with pytest.raises(FileNotFoundError):
            files.joinpath("missing.txt").read_bytes()
        assert pkgutil.get_data("shtask", "data/config.txt") == b"lr=0.1\n"
        with pytest.raises(FileNotFoundError):
            pkgutil.get_data("shtask", "data/missing")


def test_run_module_and_loader_queries(volume: Volume) -> None:
    with VolumeImporter(volume) as importer:
        result = runpy.run_module("shtask", run_name="__main__")
        assert result["RESULT"] == 41
        assert importer.is_package("shtask") and not importer.is_package("shtask.model")
        assert "def train" in importer.get_source("shtask.model")
        assert importer.get_filename("shsingle").endswith("/shsingle.py")
        for query in (importer.get_source, importer.is_package, importer.get_code):
            with pytest.raises(ImportError, match="is not in volume"):
                query("README")


def test_modules_outside_the_volume_are_refused(
    volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host cannot shadow volume modules or add submodules to volume packages."""
    planted = write_tree(
        tmp_path / "planted",
        {"shtask/__init__.py": b"raise SystemExit('host code ran')\n", "shother.py": b"X = 1\n"},
    )
    monkeypatch.syspath_prepend(str(planted))
    monkeypatch.chdir(tmp_path)
    importer = VolumeImporter(volume)
    write_tree(tmp_path / importer.root / "shtask", {"evil.py": b"raise SystemExit('evil')\n"})
    with importer:
        import shtask  # type: ignore[import-not-found]

        assert shtask.train(1) == 3  # the volume's, not the planted one
        with pytest.raises(ModuleNotFoundError, match=r"No module named 'shtask\.evil' in volume"):
            import shtask.evil  # type: ignore[import-not-found]
        import shother  # type: ignore[import-not-found]  # other modules still import normally

        assert shother.X == 1
    sys.modules.pop("shother", None)
    with pytest.raises(ModuleNotFoundError):
        import shnothing  # type: ignore[import-not-found]  # noqa: F401


def test_prefix(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"code/shpref.py": b"X = 'prefixed'\n", "shpref.py": b""})
    encrypt_directory(src, tmp_path / "v.vol", KEY)
    with Volume.open(tmp_path / "v.vol", KEY) as volume:
        with VolumeImporter(volume, prefix="code/"):
            import shpref  # type: ignore[import-not-found]

            assert shpref.X == "prefixed"
            assert shpref.__file__.endswith(">/code/shpref.py")
        with pytest.raises(ShieldError, match="no folder 'nope' to import from"):
            VolumeImporter(volume, prefix="nope")


def test_tampered_module_is_refused_on_import(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"shbad.py": b"X = 1\n" * 50})
    encrypt_directory(src, tmp_path / "v.vol", KEY, chunk_size=64)
    data = bytearray((tmp_path / "v.vol").read_bytes())
    data[fmt.HEADER_SIZE + 4] ^= 1
    (tmp_path / "v.vol").write_bytes(data)
    with (
        Volume.open(tmp_path / "v.vol", KEY) as volume,
        VolumeImporter(volume),
        pytest.raises(ShieldError, match="file 'shbad.py' chunk 0 failed authentication"),
    ):
        import shbad  # type: ignore[import-not-found]  # noqa: F401
    assert "shbad" not in sys.modules


def test_a_namespace_folder_is_served_from_the_volume_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile review: a folder of code without ``__init__.py`` fell through
    to sys.path, where a package the host planted under that name was imported instead
    of the volume's measured code (and, with none planted, the import failed)."""
    src = write_tree(tmp_path / "src", {
        "nstask.py": b"import nshelpers.util\nRESULT = nshelpers.util.WHO\n",
        "nshelpers/util.py": b"WHO = 'the volume'\n",
        "nshelpers/deep/more.py": b"X = 1\n",
    })  # fmt: skip
    encrypt_directory(src, tmp_path / "code.vol", KEY)
    shutil.rmtree(src)
    planted = write_tree(tmp_path / "host", {
        "nshelpers/__init__.py": b"", "nshelpers/util.py": b"WHO = 'the host'\n",
    })  # fmt: skip
    monkeypatch.syspath_prepend(str(planted))
    names = ("nstask", "nshelpers", "nshelpers.util", "nshelpers.deep", "nshelpers.deep.more")
    try:
        with Volume.open(tmp_path / "code.vol", KEY) as v, VolumeImporter(v):
            assert importlib.import_module("nstask").RESULT == "the volume"
            assert importlib.import_module("nshelpers.deep.more").X == 1
            with pytest.raises(ModuleNotFoundError, match="in volume"):
                importlib.import_module("nshelpers.absent")
        assert not any(name in sys.modules for name in names)  # forgotten on uninstall
    finally:
        for name in names:
            sys.modules.pop(name, None)


def test_a_module_of_another_code_volume_beats_a_namespace_folder(tmp_path: Path) -> None:
    """The review's review: a folder of scripts without ``__init__.py`` in the task's
    volume hid a library volume's ``helpers.py``, as it would not on sys.path."""
    from secfl.launcher._in_process import _installed

    task = b"import helpers\nRESULT = helpers.double(21)\n"
    first = write_tree(tmp_path / "a", {"mtask.py": task, "helpers/notes.py": b"# a script\n"})
    second = write_tree(tmp_path / "b", {"helpers.py": b"def double(x):\n    return 2 * x\n"})
    encrypt_directory(first, tmp_path / "a.vol", KEY)
    encrypt_directory(second, tmp_path / "b.vol", KEY)
    try:
        with (
            Volume.open(tmp_path / "a.vol", KEY) as a,
            Volume.open(tmp_path / "b.vol", KEY) as b,
            _installed([VolumeImporter(a), VolumeImporter(b)]),  # as run_module does
        ):
            assert importlib.import_module("mtask").RESULT == 42
    finally:
        for name in ("mtask", "helpers"):
            sys.modules.pop(name, None)
