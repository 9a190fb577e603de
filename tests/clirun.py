"""Calling the CLI, in-process (:func:`call`, :func:`failed`) or as a real process
(:func:`secfl`, :func:`one_error`), as the command-line tests of each group do;
running a demo federation to its end (:func:`run_to_the_end`); and the ``secfl``
commands a Markdown page shows (:func:`shell_commands`, :func:`check_parses`)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from secfl.cli.main import main

if TYPE_CHECKING:
    from secfl.demo.federation import Federation

ERROR_LINE = re.compile(r"^error: [^\n]+\n$")


def secfl(
    *args: str, timeout: float = 60, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``secfl ARGS`` in a process of its own (this Python), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=env,
    )  # fmt: skip


def secfl_all(
    *argvs: Sequence[str], timeout: float = 60, cwd: Path | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """``secfl ARGV`` for each argv, two processes at a time, results in order.

    For independent steps only (none reads what another writes): each process spends
    about a second importing on one core, and CI machines have two."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda argv: secfl(*argv, timeout=timeout, cwd=cwd), argvs))


def run_script(
    argv: Sequence[str], *, timeout: float, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A script of examples/ run to its end as a user would, its output captured, in a
    session of its own that is killed whole when it ends: past ``timeout`` (the test
    fails, with the output's end) the servers it started in the background go too,
    rather than run on and slow every later test."""
    with subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=cwd, start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(argv)}: still running after {timeout:.0f} s:\n"
                        f"{(out + err)[-6000:]}")  # fmt: skip
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it left running
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """A refusal: exit 1, nothing on stdout, one ``error:`` line and no traceback."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def run_to_the_end(fed: Federation, timeout: float = 240) -> None:
    """Wait until the federation's aggregator exits 0; fail with the log of a workload
    that failed first, or of the aggregator after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not fed.finished():
        failed = fed.failed()
        if failed is not None:
            pytest.fail(f"{failed.name} failed: {failed.tail(20)}")
        if time.monotonic() > deadline:
            pytest.fail(f"the federation did not finish in {timeout:.0f} s: "
                        f"{ {n: w.tail(5) for n, w in fed.workloads.items()} }")  # fmt: skip
        time.sleep(0.2)


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


#: Where a shell line stops being secfl's arguments.
SHELL_OPERATORS = frozenset({">", ">>", "2>", "|", "&&", "||", ";", "&"})


def shell_commands(markdown: str) -> list[list[str]]:
    """The ``secfl`` commands in ``markdown``'s ``sh`` code blocks, as argv after
    ``secfl`` (lines joined at a trailing backslash, comments dropped, a redirection
    or a following command cut off)."""
    blocks = re.findall(r"^\s*```sh\n(.*?)^\s*```", markdown, flags=re.M | re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0] == "secfl":
            cut = next((i for i, a in enumerate(argv) if a in SHELL_OPERATORS), len(argv))
            commands.append(argv[1:cut])
    return commands


def check_parses(argv: list[str]) -> None:
    """``secfl ARGV`` names a command (not a group) and its options parse as written
    (a usage error raises). A line that elides with ``...`` may leave out options the
    command requires (``--spm ...`` for ``--spm URL --spm-pin PIN``), nothing else."""
    from secfl.cli.main import command

    cmd, rest = command(), list(argv)
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]  # (typer's own click: not click.Group)
    assert not hasattr(cmd, "commands"), f"secfl {' '.join(argv)}: no such command"
    try:
        cmd.make_context("secfl", list(rest))
    except Exception as exc:
        if type(exc).__name__ != "MissingParameter" or "..." not in argv:
            raise
