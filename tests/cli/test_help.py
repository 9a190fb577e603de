"""``--help`` reads like a command line's: plain metavars, nothing cut off, no markup,
the main commands first; on an 80-column terminal, for every command."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from secfl.cli._help import COMMAND_ORDER, plain_text, walk
from secfl.cli.main import command, main

#: A Python type as typer prints it (``<bool>``, ``<list[str]>``, ``<int range>``).
PYTHON_TYPE = re.compile(r"<[a-z_]+(\[[^\]]*\])?( range)?>")
RST = re.compile(r"``|:[a-z]+:`")

COMMANDS = [path for path, _ in walk(command())]


def render(capsys: pytest.CaptureFixture[str], *path: str) -> str:
    assert main([*path, "--help"]) == 0
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


def commands_listed(text: str) -> list[str]:
    """The names in the help's ``Commands:`` section, in order."""
    section = text.split("\nCommands:\n", 1)[1]
    return re.findall(r"^  (\S+)", section, flags=re.MULTILINE)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "secfl")
def test_every_help_is_plain_and_complete(
    capsys: pytest.CaptureFixture[str], path: tuple[str, ...]
) -> None:
    text = render(capsys, *path)
    assert text.startswith("Usage: secfl")
    assert not PYTHON_TYPE.search(text), text
    assert not RST.search(text), text
    assert "…" not in text
    assert "{" not in text.splitlines()[0]  # `FILE`, not typer's `{FILE}`
    assert max(map(len, text.splitlines())) <= 80, text
    # Every option is shown whole, and a flag without a metavar after it.
    cmd = dict(walk(command()))[path]
    for param in cmd.params:
        for opt in (*param.opts, *param.secondary_opts):
            if opt.startswith("-"):
                assert re.search(rf"(^|[\s,/]){re.escape(opt)}(\s|,|$)", text, re.M), (opt, text)
        if getattr(param, "is_flag", False):  # "-f, --follow  Help" or "--x / --no-x  Help"
            name = re.escape(max(param.opts, key=len))
            flag = rf"^  (\S+, )?{name}( / \S+)?(  |$)"
            assert re.search(flag, text, re.M), (param.opts, text)


def test_the_main_commands_come_first(capsys: pytest.CaptureFixture[str]) -> None:
    listed = commands_listed(render(capsys))
    assert listed[0] == "demo"
    main_commands = ["demo", "run", "aggregator", "collaborator", "policy", "spm"]
    assert [name for name in listed if name in main_commands] == main_commands
    assert listed.index("collaborator") < listed.index("measure") < listed.index("eval")
    # Named commands keep the documented order; anything added later still shows.
    known = [name for name in listed if name in COMMAND_ORDER]
    assert known == sorted(known, key=COMMAND_ORDER.index)
    assert set(listed) == set(command().commands)


def test_options_show_what_they_take(capsys: pytest.CaptureFixture[str]) -> None:
    run = render(capsys, "run")
    assert re.search(r"^  --spm URL\s", run, re.M)
    assert re.search(r"^  --volume NAME=PATH\s", run, re.M)
    assert re.search(r"^  -- PROGRAM\s", run, re.M)
    sign = render(capsys, "policy", "sign")
    assert re.search(r"^  FILE\s+The policy", sign, re.M)
    assert re.search(r"^  --key PATH\s", sign, re.M)
    assert re.search(r"^  -o, --output PATH\s", sign, re.M)
    assert re.search(r"^  --rounds INTEGER\s", render(capsys, "demo"), re.M)
    reset = render(capsys, "policy", "sign-reset")  # an option's own metavar wins
    assert re.search(r"^  --policy PATH\s", reset, re.M)


def test_docstring_markup_is_rendered_as_text() -> None:
    assert plain_text("print the ``sealed:`` value") == "print the 'sealed:' value"
    assert plain_text("see :class:`~secfl.errors.SecflError`.") == "see SecflError."
    assert plain_text("a key file (`secfl shield keygen`)") == "a key file ('secfl shield keygen')"
    assert plain_text("don't touch it's") == "don't touch it's"


def test_help_in_a_real_terminal_width() -> None:
    """The installed entry point, as a user runs it, on an 80-column terminal."""
    env = {**os.environ, "COLUMNS": "80"}
    for args in (["--help"], ["spm", "verify", "--help"], ["policy", "sign", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "secfl.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "--expect-measurement HEX" in proc.stdout or args[0] != "spm"
        assert not PYTHON_TYPE.search(proc.stdout) and "…" not in proc.stdout
        assert max(map(len, proc.stdout.splitlines())) <= 80
