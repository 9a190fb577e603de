"""A secret that must be a file for a moment (the SPM's TLS key, for the ssl module)
is an anonymous memory file: a process killed with SIGKILL while it exists leaves no
file behind. Found by a hostile review of the final model's staging: the SPM wrote its
TLS key into a folder in /dev/shm, removed right after loading, but a kill in between
left it there (a real process, killed while the file exists)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from secfl._internal.files import memory_file

CHILD = textwrap.dedent(
    """
    import sys, time
    from secfl._internal.files import memory_file
    with memory_file(b"-----BEGIN PRIVATE KEY----- marker-of-the-secret", "key.pem") as path:
        print(path, open(path, "rb").read().decode(), flush=True)
        time.sleep(60)
    """
)


def test_the_file_reads_back_and_is_gone_after_the_block() -> None:
    with memory_file(b"secret bytes" * 1000, "x.pem") as path:
        assert Path(path).read_bytes() == b"secret bytes" * 1000
    assert not Path(path).exists() or Path(path).read_bytes() != b"secret bytes" * 1000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd is Linux's")
@pytest.mark.timeout(60)
def test_a_sigkill_while_it_exists_leaves_no_file(tmp_path: Path) -> None:
    began = time.time() - 1
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        assert line.startswith("/proc/self/fd/") and "marker-of-the-secret" in line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    left = []
    for top in (tmp_path, Path("/dev/shm")):
        for folder, _, names in os.walk(top):
            for name in names:
                path = Path(folder, name)
                try:
                    if (
                        path.stat().st_mtime >= began
                        and b"marker-of-the-secret" in path.read_bytes()[:4096]
                    ):
                        left.append(str(path))
                except OSError:
                    continue
    assert left == []


def test_where_memfd_is_refused_a_private_file_in_ram_stands_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by review: under a seccomp filter that refuses memfd_create (ENOSYS), the
    SPM could not load its TLS key at all."""

    def refused(name: str, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", refused, raising=False)
    with memory_file(b"secret", "key.pem") as path:
        assert Path(path).read_bytes() == b"secret"
        assert (Path(path).stat().st_mode & 0o777) == 0o600
    assert not Path(path).exists()
