"""``secfl eval robustness`` refuses an unknown task, attack or defence at once, listing
the names it knows (a typo once ran hundreds of runs before failing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from secfl.errors import FlError
from secfl.eval.attacks import available_attacks
from secfl.eval.grid import QUICK, defence_names
from secfl.eval.options import check_names
from secfl.tasks import task_names
from tests.clirun import failed


@pytest.mark.parametrize(
    ("option", "value", "known"),
    [
        ("--attacks", "label-flip,labelflip", available_attacks()),
        ("--defences", "fedavgg", defence_names()),
        ("--tasks", "digit", task_names()),
    ],
)
def test_an_unknown_name_is_one_line_listing_the_known_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str, value: str, known: list[str]
) -> None:
    out = tmp_path / "report"
    line = failed(capsys, "eval", "robustness", "--quick", option, value, "-o", str(out))
    bad = value.split(",")[-1]
    assert line.startswith(f"error: {option}: unknown '{bad}' (known: {', '.join(known)})")
    assert not out.exists()  # refused before the grid's folder is claimed


def test_attacks_are_needed_only_with_attackers(capsys: pytest.CaptureFixture[str]) -> None:
    line = failed(capsys, "eval", "robustness", "--quick", "--attacks", ",", "-o", "x")
    assert line.startswith("error: --attacks: no name given (known: ")
    check_names(dataclasses.replace(QUICK, malicious=[0.0], attacks=[]))  # no attacker: fine
    with pytest.raises(FlError, match=r"^--defences: no name given"):
        check_names(dataclasses.replace(QUICK, defences=[]))
