"""The test suite's own rules, proven on real pytest runs.

- Under CI (``CI`` set to anything non-empty), missing vendor evidence fails the
  tests that need it instead of skipping them, and ``SECFL_SKIP_POSTGRES=1`` fails
  the PostgreSQL tests instead of skipping them: a CI run that silently skipped
  them would pass while proving nothing. Elsewhere both skip and say why.
- A hung test fails alone (pytest-timeout, signal method): the run goes on.
- A run started with SIGINT ignored (in the background of a script, under nohup) still
  lets its tests press Ctrl-C, on themselves and on the processes they start.
- The files marked heavy are collected first, the longest first, each file whole (the
  workers take them in that order: ``scripts/test.sh``).

Each case runs pytest as a subprocess on a tiny test file, with the project's
configuration (``pyproject.toml``) and the fixtures of ``tests/conftest.py`` or
``tests/spm/conftest.py`` loaded as plugins.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
Run = subprocess.CompletedProcess[str]


def run_pytest(
    tmp_path: Path,
    source: str | dict[str, str],
    env: dict[str, str | None],
    *args: str,
    sigint_ignored: bool = False,
) -> Run:
    """pytest on ``source`` (one test file, or test files by name) in a fresh process;
    ``env`` changes the environment (``None`` removes a variable); ``sigint_ignored``
    starts it as a background job of a script would be (an ignored signal stays ignored
    across exec)."""
    files = source if isinstance(source, dict) else {"test_tiny.py": source}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    target = tmp_path / "test_tiny.py" if isinstance(source, str) else tmp_path
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # only the plugins these rules rest on: the installed ones (hypothesis, schemathesis)
    # took 3 s of each run's start, a minute of the suite
    environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    for key, value in env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    config = ["-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path)]
    plugins = ["-p", "pytest_timeout", "-p", "no:cacheprovider"]
    command = [sys.executable, "-m", "pytest", *config, *plugins, *args]
    command.append(str(target))
    if sigint_ignored:
        command = [sys.executable, "-c", _EXEC_IGNORING_SIGINT, *command]
    return subprocess.run(
        command,
        cwd=REPO, env=environ, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


_EXEC_IGNORING_SIGINT = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)

USES_VECTORS = "def test_needs_vectors(vectors):\n    assert vectors.is_dir()\n"


def without_vectors(tmp_path: Path, ci: str | None) -> tuple[Path, Run]:
    """A test that needs the vectors, run with SECFL_TESTVECTORS naming a missing folder."""
    missing = tmp_path / "no-such-folder"
    env = {"CI": ci, "SECFL_TESTVECTORS": str(missing)}
    return missing, run_pytest(tmp_path, USES_VECTORS, env, "-p", "tests.conftest")


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_missing_vectors_fail_under_ci(tmp_path: Path, ci: str) -> None:
    missing, done = without_vectors(tmp_path, ci)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert f"vectors: real vendor evidence not found at {missing}" in out
    assert "1 error" in out and "skipped" not in out


@pytest.mark.parametrize("ci", [None, ""])
def test_missing_vectors_skip_with_the_reason_elsewhere(tmp_path: Path, ci: str | None) -> None:
    missing, done = without_vectors(tmp_path, ci)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 skipped" in out
    assert f"real vendor evidence not found at {missing} (set SECFL_TESTVECTORS)" in out


USES_POSTGRES = "def test_needs_postgres(pg_url):\n    assert pg_url\n"


def test_skip_postgres_is_refused_under_ci(tmp_path: Path) -> None:
    done = run_pytest(
        tmp_path,
        USES_POSTGRES,
        {"CI": "true", "SECFL_SKIP_POSTGRES": "1"},
        "-p",
        "tests.spm.conftest",
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "postgres: SECFL_SKIP_POSTGRES=1 is refused under CI" in out
    assert "1 error" in out and "skipped" not in out


def test_skip_postgres_skips_outside_ci(tmp_path: Path) -> None:
    done = run_pytest(
        tmp_path,
        USES_POSTGRES,
        {"CI": None, "SECFL_SKIP_POSTGRES": "1"},
        "-p",
        "tests.spm.conftest",
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 skipped" in out and "SECFL_SKIP_POSTGRES=1" in out


# --- a hang fails one test, not the run ------------------------------------------------

HANGS = """\
import time

import pytest


{marker}
def test_hangs():
    time.sleep(120)


def test_runs_after_the_hang():
    assert time.monotonic() > 0  # it runs at all: the hang above did not stop the run
"""


def test_project_sets_a_global_timeout() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]
    assert (options["ini_options"]["timeout"], options["ini_options"]["timeout_method"]) == (
        300,
        "signal",
    )
    test_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("pytest-timeout") for d in test_extra["optional-dependencies"]["test"])


@pytest.mark.parametrize(
    ("marker", "args"),
    [("@pytest.mark.timeout(1)", ()), ("", ("-o", "timeout=1"))],
    ids=["marker", "ini"],
)
def test_a_hang_fails_one_test_and_the_run_goes_on(
    tmp_path: Path, marker: str, args: tuple[str, ...]
) -> None:
    start = time.monotonic()
    done = run_pytest(tmp_path, HANGS.format(marker=marker), {}, *args)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "1 failed, 1 passed" in out
    assert "Timeout" in out and "test_hangs" in out
    assert time.monotonic() - start < 60


# --- Ctrl-C works in a run started with SIGINT ignored ----------------------------------

PRESSES_CTRL_C = """\
import os
import signal
import subprocess
import sys
import time

import pytest

CHILD = (
    "import sys, time\\n"
    "try:\\n"
    "    print('ready', flush=True)\\n"
    "    time.sleep(10)\\n"
    "except KeyboardInterrupt:\\n"
    "    sys.exit(7)\\n"
)


def test_ctrl_c_on_this_process():
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)


def test_ctrl_c_on_a_process_it_starts():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\\n"
    child.send_signal(signal.SIGINT)
    assert child.wait(30) == 7
"""


def test_a_run_started_with_sigint_ignored_still_delivers_ctrl_c(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, PRESSES_CTRL_C, {}, "-p", "tests.conftest", sigint_ignored=True)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "2 passed" in out


# --- heavy files first ------------------------------------------------------------------


def test_heavy_files_are_collected_first_longest_first_each_file_whole(tmp_path: Path) -> None:
    files = {
        "test_a.py": "def test_1(): pass\ndef test_2(): pass\ndef test_3(): pass\n",
        "test_b.py": "import pytest\npytestmark = pytest.mark.heavy(5)\ndef test_1(): pass\n",
        "test_c.py": "def test_1(): pass\ndef test_2(): pass\n",
        "test_d.py": "import pytest\npytestmark = pytest.mark.heavy(50)\n"
        "def test_2(): pass\ndef test_1(): pass\n",
    }
    done = run_pytest(tmp_path, files, {}, "-p", "tests.conftest", "--collect-only", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    order = [line for line in done.stdout.splitlines() if "::" in line]
    assert order == [
        "test_d.py::test_2", "test_d.py::test_1",  # heavy, the longest first
        "test_b.py::test_1",
        "test_a.py::test_1", "test_a.py::test_2", "test_a.py::test_3",  # then most tests first
        "test_c.py::test_1", "test_c.py::test_2",
    ]  # fmt: skip


def test_the_suite_runs_the_files_in_that_order() -> None:
    # xdist's own order (--loadscope-reorder, its default) puts the files with the most
    # tests first whatever the collection says, the heavy single-test files last
    command = (REPO / "scripts" / "test.sh").read_text().split("exec ", 1)[1]
    assert "--dist loadfile" in command and "--no-loadscope-reorder" in command


def test_a_heavy_mark_without_its_seconds_is_one_usage_error(tmp_path: Path) -> None:
    source = "import pytest\npytestmark = pytest.mark.heavy\ndef test_1(): pass\n"
    done = run_pytest(tmp_path, source, {}, "-p", "tests.conftest", "--collect-only", "-q")
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "pytest.mark.heavy(SECONDS)" in out and "Traceback" not in out
