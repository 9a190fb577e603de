"""``shield encrypt -o KEYFILE --key-file KEYFILE`` once destroyed the key.

An existing output is replaced only with ``--force``, and the key file never, by
whatever name it is reached (the same path, a symbolic link, a hard link).
``decrypt`` and ``keygen`` never replace a file at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from secfl.errors import ShieldError
from secfl.shield import encrypt_directory
from tests import clirun
from tests.shield import KEY, write_tree


def failed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    return clirun.failed(capsys, "shield", *args)


@pytest.fixture
def owner(tmp_path: Path) -> tuple[Path, Path]:
    """A folder to encrypt and a key file: (src, key)."""
    src = write_tree(tmp_path / "src", {"a.txt": b"hello\n"})
    key = tmp_path / "owner.key"
    key.write_text(KEY.hex() + "\n")
    return src, key


def test_the_key_file_is_never_the_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, owner: tuple[Path, Path]
) -> None:
    src, key = owner
    before = key.read_bytes()
    symlink, hardlink = tmp_path / "via-symlink", tmp_path / "via-hardlink"
    symlink.symlink_to(key)
    os.link(key, hardlink)
    for output in (key, symlink, hardlink):
        for force in ([], ["--force"]):
            message = failed(
                capsys, "encrypt", str(src), "-o", str(output), "--key-file", str(key), *force
            )
            assert message.startswith(f"error: --output: '{output}' is the key file"), message
            assert key.read_bytes() == before
    assert symlink.is_symlink() and hardlink.read_bytes() == before


def test_the_key_file_survives_as_a_real_process(tmp_path: Path, owner: tuple[Path, Path]) -> None:
    src, key = owner
    before = key.read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "shield", "encrypt", str(src),
         "-o", str(key), "--key-file", str(key)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert key.read_bytes() == before


def test_an_existing_output_needs_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, owner: tuple[Path, Path]
) -> None:
    src, key = owner
    vol = tmp_path / "v.vol"
    vol.write_bytes(b"precious")
    message = failed(capsys, "encrypt", str(src), "-o", str(vol), "--key-file", str(key))
    assert message == f"error: --output: '{vol}' exists; use --force to replace it\n"
    assert vol.read_bytes() == b"precious"
    code, _, _ = clirun.call(
        capsys, "shield", "encrypt", str(src), "-o", str(vol), "--key-file", str(key), "--force"
    )
    assert code == 0 and vol.read_bytes() != b"precious"


def test_the_library_refuses_to_replace_when_told(tmp_path: Path, owner: tuple[Path, Path]) -> None:
    src, _ = owner
    vol = tmp_path / "v.vol"
    vol.write_bytes(b"precious")
    with pytest.raises(ShieldError, match="^shield: '.*v.vol' exists; not replacing it"):
        encrypt_directory(src, vol, KEY, overwrite=False)
    assert vol.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".v.vol")] == []
    encrypt_directory(src, tmp_path / "new.vol", KEY, overwrite=False)
    assert (tmp_path / "new.vol").stat().st_size > 0


def test_decrypt_and_keygen_never_replace_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, owner: tuple[Path, Path]
) -> None:
    src, key = owner
    before = key.read_bytes()
    assert "already exists" in failed(capsys, "keygen", "-o", str(key))
    vol = tmp_path / "v.vol"
    write_tree(src, {key.name: b"not the key"})
    clirun.call(capsys, "shield", "encrypt", str(src), "-o", str(vol), "--key-file", str(key))
    assert "refusing to overwrite" in failed(
        capsys, "decrypt", str(vol), "-o", str(key.parent), "--key-file", str(key)
    )
    assert "cannot create" in failed(
        capsys, "decrypt", str(vol), "-o", str(key), "--key-file", str(key)
    )
    assert key.read_bytes() == before


def test_a_decryption_killed_half_way_leaves_no_file_that_looks_whole(
    tmp_path: Path, owner: tuple[Path, Path]
) -> None:
    """From a review: `decrypt` wrote each file under its final name as it went, so one
    killed half-way (SIGKILL, the OOM killer) left a truncated file that looked whole,
    and the next run refused to overwrite it. A real process, killed while it writes."""
    import signal
    import time

    _, key = owner
    big = write_tree(tmp_path / "big", {"model.bin": os.urandom(1 << 20) * 96})
    volume = tmp_path / "big.secfl"
    encrypt_directory(big, volume, KEY)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "secfl.cli.main", "shield", "decrypt", str(volume),
            "-o", str(out), "--key-file", str(key)]  # fmt: skip
    # killed as soon as it wrote 8 MiB of the 96 (its written bytes polled without a
    # pause: it writes them in well under a second)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    written = 0
    deadline = time.monotonic() + 60
    while written < (8 << 20) and proc.poll() is None and time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/io") as io:
            written = int(next(x for x in io if x.startswith("wchar:")).split()[1])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "it finished before it was killed"
    assert written >= 8 << 20
    assert [p.name for p in out.iterdir()] == []  # nothing half-written under any name
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (out / "model.bin").read_bytes() == (big / "model.bin").read_bytes()


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
@pytest.mark.parametrize("key_by", ["file", "hex"])
def test_an_output_that_is_a_link_loop_or_a_name_too_long_is_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    owner: tuple[Path, Path],
    force: list[str],
    key_by: str,
) -> None:
    """Found by a review: `Path.resolve` raises RuntimeError on a link loop and
    `Path.is_symlink` raises on a name too long (Python 3.11): both were tracebacks."""
    src, key = owner
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    keys = ["--key-file", str(key)] if key_by == "file" else ["--key-hex", KEY.hex()]
    for output in (loop, loop / "out.vol", tmp_path / ("a" * 300)):
        message = failed(capsys, "encrypt", str(src), "-o", str(output), *keys, *force)
        assert message.startswith("error: "), message
        assert "Traceback" not in message and "\n" not in message.strip(), message
    assert os.readlink(loop) == "loop"
