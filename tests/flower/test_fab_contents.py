"""A board-approved FAB runs the sources its reviewers read, nothing shielded beside them.

Flower installs every member of a FAB but checks only those its manifest lists, and
Python then runs a module's ``__pycache__`` bytecode ("unchecked-hash": never
compared with the source) or a compiled ``.so`` of its name instead of the source.
A FAB of listed, reviewed sources plus such a file ran other code under the approved
digest (found by a hostile review): the SuperLink's wrapper refuses to submit it, and
an app process refuses to install it. No Flower needed: the FABs are made here as
``flwr build`` makes them (a zip with ``.info/CONTENT``: ``path,sha256,size`` a line).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import py_compile
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from secfl.errors import FlowerError
from secfl.flower._app_process import FAB_REFUSED, _pin_fab
from secfl.flower._superlink import load_fab

SOURCES = {
    "pyproject.toml": b'[project]\nname = "app"\nversion = "1.0.0"\n',
    "app/__init__.py": b"",
    "app/client_app.py": b"WHO = 'the reviewed source'\n",
}


def fab(extra: dict[str, bytes] | None = None, *, listed: bool = False) -> bytes:
    """The FAB of :data:`SOURCES` (each listed), with ``extra`` files (listed too if
    ``listed``: a manifest written by hand)."""
    files = {**SOURCES, **(extra or {})}
    manifest = files if listed else SOURCES
    content = "".join(
        f"{name},{hashlib.sha256(data).hexdigest()},{len(data)}\n"
        for name, data in manifest.items()
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(".info/CONTENT", content)
    return out.getvalue()


def bytecode(tmp_path: Path, source: str) -> bytes:
    """``source`` compiled as a ``__pycache__`` file Python runs without a look at the
    module's source."""
    (tmp_path / "other.py").write_text(source)
    mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
    py_compile.compile(str(tmp_path / "other.py"), cfile=str(tmp_path / "other.pyc"),
                       invalidation_mode=mode, doraise=True)  # fmt: skip
    return (tmp_path / "other.pyc").read_bytes()


def hidden_fabs(tmp_path: Path) -> dict[str, bytes]:
    pyc = bytecode(tmp_path, "WHO = 'other code'\n")
    cached = importlib.util.cache_from_source("app/client_app.py")
    so = f"app/client_app{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    return {
        "bytecode": fab({cached: pyc}),
        "bytecode, listed": fab({cached: pyc}, listed=True),
        "a compiled module": fab({so: b"\x7fELF"}, listed=True),
        "an unlisted file": fab({"app/extra.py": b"import os\n"}),
    }


def load(env: dict[str, str], data: bytes) -> bytes:
    path = Path(env["SECFL_FILES"]) / "volumes" / "app" / "app.fab"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return load_fab("$SECFL_VOLUMES/app/app.fab", hashlib.sha256(data).hexdigest(), env)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    files = tmp_path / "files"
    return {"SECFL_FILES": str(files), "SECFL_VOLUMES": str(files / "volumes")}


def test_the_superlink_submits_no_fab_with_code_beside_its_sources(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert load(env, fab()) == fab()  # as `flwr build` makes it
    for what, data in hidden_fabs(tmp_path).items():
        with pytest.raises(FlowerError) as info:
            load(env, data)  # its digest is the approved one
        message = str(info.value)
        assert message.startswith("fab: it holds 'app/") and "\n" not in message, what
    for data in (b"not a zip", fab()[:-30]):
        with pytest.raises(FlowerError, match="^fab: not a readable zip"):
            load(env, data)


def test_an_app_process_installs_no_fab_with_code_beside_its_sources(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    installed: list[bytes] = []

    def flower_install(data: bytes, *args: Any, **kwargs: Any) -> str:
        installed.append(data)
        return "installed"

    fabs = hidden_fabs(tmp_path)
    runtime = SimpleNamespace(install_from_fab=flower_install)
    approved = frozenset(hashlib.sha256(d).hexdigest() for d in [fab(), *fabs.values()])
    _pin_fab(runtime, approved)
    assert runtime.install_from_fab(fab()) == "installed"
    for what, data in fabs.items():
        with pytest.raises(SystemExit) as info:
            runtime.install_from_fab(data)
        assert info.value.code == FAB_REFUSED, what
        line = capfd.readouterr().err
        assert line.startswith("error: secfl: fab: it holds") and line.count("\n") == 1
    assert installed == [fab()]
