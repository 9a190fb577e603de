"""Shared fixtures: the real vendor evidence in ``../shared/testvectors``.

Tests that need it skip, saying why, where the folder is absent (a user's clone).
Under CI (the ``CI`` environment variable set to any non-empty value) they fail
instead: a CI run that silently skipped every check against real Intel and AMD
evidence would pass while proving nothing. Set ``SECFL_TESTVECTORS`` to point
elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.spm.harness import Board

# A suite started in the background of a script (``cmd &``: the shell starts it with
# SIGINT ignored) would pass that on to every process it starts: Python then raises no
# KeyboardInterrupt, and each test that presses Ctrl-C (in-process or on a process it
# started) would fail or time out. A handler, unlike "ignored", is not inherited across
# exec: children get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _heavy_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("heavy")
    if marker is None:
        return 0.0
    if len(marker.args) != 1 or marker.kwargs or not isinstance(marker.args[0], int | float):
        raise pytest.UsageError(
            f"{item.nodeid}: write the heavy mark as pytest.mark.heavy(SECONDS), "
            "a number, in the file's pytestmark"
        )
    return float(marker.args[0])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the heavy test files first, longest first, then the others with the most tests
    first. The workers take files in this order (``scripts/test.sh``), the next whenever
    one has two tests or fewer left: a heavy file taken last would run alone at the end
    while the other worker idles. A file is marked heavy with ``pytestmark =
    pytest.mark.heavy(N)``, N its seconds on one worker (a mark on one test counts for its
    whole file). A file's tests stay together and in their order."""

    def file_of(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    tests: Counter[str] = Counter()
    seconds: dict[str, float] = {}
    for item in items:
        file = file_of(item)
        tests[file] += 1
        seconds[file] = max(seconds.get(file, 0.0), _heavy_seconds(item))
    items.sort(key=lambda item: (-seconds[file_of(item)], -tests[file_of(item)], file_of(item)))


_DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "testvectors"


def in_ci() -> bool:
    """Whether this run is CI: ``CI`` is set to anything non-empty (``true``, ``1``...)."""
    return bool(os.environ.get("CI", "").strip())


def testvectors_dir() -> Path | None:
    path = Path(os.environ.get("SECFL_TESTVECTORS", _DEFAULT)).resolve()
    return path if path.is_dir() else None


def require_vectors() -> Path:
    """The testvectors folder; where absent, a skip that says why, or under CI a failure."""
    path = testvectors_dir()
    if path is None:
        where = Path(os.environ.get("SECFL_TESTVECTORS", _DEFAULT))
        if in_ci():
            pytest.fail(
                f"vectors: real vendor evidence not found at {where}, and CI must test against "
                "it (set SECFL_TESTVECTORS to the folder; unset CI only for a local run)",
                pytrace=False,
            )
        pytest.skip(f"real vendor evidence not found at {where} (set SECFL_TESTVECTORS)")
    return path


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The testvectors folder (see :func:`require_vectors` for when it is missing)."""
    return require_vectors()


def utc(text: str) -> datetime:
    """An ISO date or datetime, as an aware UTC datetime."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- a simulated TEE and a board, shared by the tests that run a real SPM ------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A simulation root (folder, root certificate PEM); a test file may define its own."""
    from tests.spm.harness import make_sim

    path = tmp_path_factory.mktemp("sim")
    return path, make_sim(path)


@pytest.fixture(scope="module")
def board() -> Board:
    """Three members, 2 of 3 (:class:`tests.spm.harness.Board`)."""
    from tests.spm.harness import Board

    return Board.create()


@pytest.fixture(autouse=True)
def _task_errors_hidden() -> Iterator[None]:
    """Each test starts as a secure workload does: task failures show no message.

    In-process tests of ``--insecure`` workloads switch the process-wide setting on
    (a real workload is one process and never switches back); without this reset a
    later test would see another test's choice.
    """
    from secfl.tasks._contract import show_task_errors

    show_task_errors(False)
    yield
    show_task_errors(False)


FLOWER_VENV = Path(__file__).resolve().parents[1] / ".venv-flwr"
FLOWER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "flwr-venv.sh"


@pytest.fixture(scope="session")
def flower_python() -> Path:
    """``.venv-flwr/bin/python`` with flwr 1.41, torch, scikit-learn and secfl, made (or
    checked) by scripts/flwr-venv.sh: the Flower apps' tests and the reference of the
    robust rules. Absent and ``CI`` not set, the tests skip and say why; under CI the
    script creates it (and a failure to do so fails them)."""
    if not os.environ.get("CI") and not FLOWER_VENV.exists():
        pytest.skip(
            "these tests need the Flower venv: run `bash scripts/flwr-venv.sh` "
            "(or set CI=1) to enable these tests"
        )
    try:
        proc = subprocess.run(
            ["bash", str(FLOWER_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail("scripts/flwr-venv.sh took more than 900 s")
    if proc.returncode != 0:
        pytest.fail(f"scripts/flwr-venv.sh failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return FLOWER_VENV / "bin" / "python"
