"""A name the command line does not know is one error line that lists the names it
does know, said before anything starts."""

from __future__ import annotations

from typing import Any

import pytest

from secfl.demo import federation
from secfl.fl.strategies import available_strategies
from secfl.tasks import task_names
from tests.clirun import call, failed


@pytest.fixture
def no_federation(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record any demo federation made: a refused name must stop the demo before."""
    made: list[Any] = []
    monkeypatch.setattr(federation, "Federation", lambda *args: made.append(args))
    return made


def test_demo_refuses_an_unknown_task_before_starting(
    capsys: pytest.CaptureFixture[str], no_federation: list[Any]
) -> None:
    line = failed(capsys, "demo", "--task", "digit", "--rounds", "1")
    assert f"'digit' (built in: {', '.join(task_names())})" in line
    assert no_federation == []


def test_demo_refuses_an_unknown_defence_before_starting(
    capsys: pytest.CaptureFixture[str], no_federation: list[Any]
) -> None:
    line = failed(capsys, "demo", "--defence", "fedavgg")
    assert line.startswith("error: strategy: unknown strategy 'fedavgg' (known: ")
    assert all(name in line for name in available_strategies())
    assert no_federation == []


def test_an_unknown_task_source_lists_the_built_in_tasks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = call(capsys, "aggregator", "--task", "digit", "--insecure")
    assert code == 1 and out == ""
    line = err.splitlines()[-1]  # after the --insecure warning
    assert line.startswith("error: source: 'digit' is neither a built-in task (")
    assert ", ".join(task_names()) in line and "volume:NAME" in line
