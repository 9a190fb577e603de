"""Calling the CLI in-process, as the command-line tests of each group do."""

from __future__ import annotations

import re

import pytest

from secfl.cli.main import main

ERROR_LINE = re.compile(r"^error: [^\n]+\n$")


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``secfl ARGS``: (exit code, stdout, stderr)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def failed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``secfl ARGS``, require exit 1 with one ``error:`` line; return it."""
    code, out, err = call(capsys, *args)
    assert code == 1 and out == "" and ERROR_LINE.match(err), (code, out, err)
    return err
