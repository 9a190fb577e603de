"""``secfl shield encrypt`` refuses compiled Python code unless told to take it.

Python runs ``__pycache__/NAME.cpython-3XX.pyc`` compiled "unchecked-hash" in place of
``NAME.py`` (never comparing the two), and a compiled ``NAME.so`` before it; a program
``secfl run`` starts with its code volume on ``sys.path`` did so, under the tag the
board approved after reading the sources. ``shield ls`` marks such files."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import py_compile
import subprocess
import sys
from pathlib import Path

from tests.clirun import one_error, secfl


def _code_folder(tmp_path: Path) -> Path:
    """A task folder whose ``mod.py`` prints SOURCE, with bytecode beside it that
    prints BYTECODE instead (as a volume's author can plant it)."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "mod.py").write_text('print("SOURCE")\n')
    other = tmp_path / "other.py"
    other.write_text('print("BYTECODE")\n')
    cached = importlib.util.cache_from_source(str(code / "mod.py"))
    py_compile.compile(
        str(other), cfile=cached, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )
    return code


def test_bytecode_is_refused_in_one_line_and_no_volume_is_written(tmp_path: Path) -> None:
    code, key, vol = _code_folder(tmp_path), tmp_path / "k.key", tmp_path / "code.secfl"
    assert secfl("shield", "keygen", "-o", str(key)).returncode == 0
    line = one_error(secfl("shield", "encrypt", str(code), "-o", str(vol), "--key-file", str(key)))
    pyc = Path(importlib.util.cache_from_source("mod.py")).as_posix()
    assert f"'{pyc}' is compiled Python code" in line and "--allow-compiled" in line
    assert not vol.exists()


def test_a_compiled_module_is_refused(tmp_path: Path) -> None:
    code, key = tmp_path / "code", tmp_path / "k.key"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "mod.py").write_text("x = 1\n")
    (code / "pkg" / f"mod{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"\x7fELF")
    assert secfl("shield", "keygen", "-o", str(key)).returncode == 0
    line = one_error(secfl("shield", "encrypt", str(code), "-o", str(tmp_path / "v"),
                           "--key-file", str(key)))  # fmt: skip
    assert f"'pkg/mod{importlib.machinery.EXTENSION_SUFFIXES[0]}' is compiled" in line


def test_allowed_bytecode_is_shipped_runs_and_is_marked(tmp_path: Path) -> None:
    """Why the refusal: the shipped bytecode, not the source, runs from the volume's
    plaintext (as ``secfl run`` gives an external program, bytecode writing off);
    ``shield ls`` and ``shield decrypt`` show it to whoever reviews the volume."""
    code, key, vol = _code_folder(tmp_path), tmp_path / "k.key", tmp_path / "code.secfl"
    assert secfl("shield", "keygen", "-o", str(key)).returncode == 0
    done = secfl("shield", "encrypt", str(code), "-o", str(vol), "--key-file", str(key),
                 "--allow-compiled")  # fmt: skip
    assert done.returncode == 0, done.stderr
    plain = tmp_path / "plain"
    pyc = Path(importlib.util.cache_from_source("mod.py")).as_posix()
    opened = secfl("shield", "decrypt", str(vol), "-o", str(plain), "--key-file", str(key))
    assert opened.returncode == 0, opened.stderr
    assert f"1 compiled file(s), the first '{pyc}'" in opened.stderr
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(plain)}
    ran = subprocess.run([sys.executable, "-c", "import mod"], capture_output=True, text=True,
                         env=env, timeout=60, check=True)  # fmt: skip
    assert ran.stdout == "BYTECODE\n"
    listed = secfl("shield", "ls", str(vol), "--key-file", str(key))
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert any(r.endswith(f" {pyc}  (compiled)") for r in rows), rows
    assert any(r.endswith(" mod.py") for r in rows), rows
    assert "1 compiled file(s)" in listed.stderr
