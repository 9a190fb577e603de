"""An output name seen as a FIFO is written only if it still is one when opened.

``write_output`` (and ``bench --out``) write a pipe or a device in place; a FIFO another
user put at an output's name in a folder both may write in was checked by ``lstat``
and then opened by its name, following links, with ``O_CREAT | O_TRUNC``: swapped for
a link in between, the file the link led to (root's, when root ran the command) was
truncated and written (a hostile review of files.write_stream).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from secfl._internal import files
from secfl.cli import _common
from secfl.errors import UsageError


def test_a_fifo_swapped_for_a_link_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's own file\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    out = shared / "alice.pub"
    os.mkfifo(out)
    seen = _common.is_stream

    def race(path: str) -> bool:  # the other user's swap, right after the check
        answer = seen(path)
        if answer and Path(path) == out:
            out.unlink()
            out.symlink_to(victim)
        return answer

    monkeypatch.setattr(_common, "is_stream", race)
    with pytest.raises(UsageError):
        _common.write_output(b"public key\n", str(out))
    assert victim.read_bytes() == b"root's own file\n"


def test_a_fifo_with_a_reader_and_own_streams_are_still_written(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    for _ in range(200):  # the reader has it open: written in place
        try:
            _common.write_output(b"to the pipe\n", str(fifo))
            break
        except UsageError:
            threading.Event().wait(0.05)
    reader.join(10)
    assert got == [b"to the pipe\n"]

    read_end, write_end = os.pipe()
    try:  # a process's own stream name (``>(...)``: /dev/fd/N) is followed where it leads
        files.write_stream(f"/dev/fd/{write_end}", b"own stream\n")
        assert os.read(read_end, 100) == b"own stream\n"
    finally:
        os.close(read_end)
        os.close(write_end)
    redirected = tmp_path / "stdout.txt"
    fd = os.open(redirected, os.O_WRONLY | os.O_CREAT, 0o600)
    try:  # a redirected stdout (a regular file) is written as it is
        files.write_stream(f"/proc/self/fd/{fd}", b"redirected\n")
    finally:
        os.close(fd)
    assert redirected.read_bytes() == b"redirected\n"
