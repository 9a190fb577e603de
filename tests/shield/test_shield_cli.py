"""``secfl shield``: the round trip a volume owner runs, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from secfl.shield import _format as fmt
from tests import clirun
from tests.shield import read_tree, write_tree


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return clirun.call(capsys, "shield", *args)


def failed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    return clirun.failed(capsys, "shield", *args)


def test_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = write_tree(
        tmp_path / "src",
        {"task/main.py": b"print('hi')\n", "data/x.csv": b"1,2\n" * 1000, "run": (b"#!", 0o755)},
    )
    key = tmp_path / "owner.key"
    code, out, _ = call(capsys, "keygen", "-o", str(key))
    assert code == 0 and str(key) in out
    assert key.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())

    vol = tmp_path / "code.vol"
    code, out, _ = call(
        capsys, "encrypt", str(src), "-o", str(vol), "--key-file", str(key), "--version", "3"
    )
    assert code == 0 and re.fullmatch(r"[0-9a-f]{64}\n", out)
    tag = out.strip()

    assert call(capsys, "tag", str(vol), "--key-file", str(key))[1] == tag + "\n"
    code, out, _ = call(capsys, "verify", str(vol), "--key-file", str(key), "--expect-tag", tag)
    assert code == 0
    assert out == f"verify: OK, 3 files, 4014 bytes, version 3, tag {tag}\n"
    code, out, _ = call(capsys, "ls", str(vol), "--key-hex", key.read_text().strip())
    assert code == 0 and "0755" in out and out.rstrip().endswith("task/main.py")

    code, out, _ = call(
        capsys, "decrypt", str(vol), "-o", str(tmp_path / "out"), "--key-file", str(key)
    )
    assert code == 0 and out.startswith("decrypted 3 files")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_one_line_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"f": bytes(5000)})
    key, other = tmp_path / "k", tmp_path / "other"
    call(capsys, "keygen", "-o", str(key))
    call(capsys, "keygen", "-o", str(other))
    vol = tmp_path / "v.vol"
    call(capsys, "encrypt", str(src), "-o", str(vol), "--key-file", str(key), "--chunk-kib", "1")

    assert "already exists" in failed(capsys, "keygen", "-o", str(key))
    assert "wrong key" in failed(capsys, "verify", str(vol), "--key-file", str(other))
    assert "is not the expected " + "ab" * 32 in failed(
        capsys, "verify", str(vol), "--key-file", str(key), "--expect-tag", "ab" * 32
    )
    assert "exactly one of --key-file" in failed(capsys, "tag", str(vol))
    assert "exactly one of --key-file" in failed(
        capsys, "tag", str(vol), "--key-file", str(key), "--key-hex", "00" * 32
    )
    assert "a key is 64 hex" in failed(capsys, "tag", str(vol), "--key-hex", "abc")
    assert "cannot read key file" in failed(
        capsys, "tag", str(vol), "--key-file", str(tmp_path / "no")
    )
    assert "is not a directory" in failed(
        capsys, "encrypt", str(src / "f"), "-o", str(tmp_path / "x"), "--key-file", str(key)
    )
    assert "--chunk-kib" in failed(
        capsys, "encrypt", str(src), "-o", str(tmp_path / "x"), "--key-file", str(key),
        "--chunk-kib", "0",
    )  # fmt: skip

    call(capsys, "decrypt", str(vol), "-o", str(tmp_path / "out"), "--key-file", str(key))
    assert "refusing to overwrite" in failed(
        capsys, "decrypt", str(vol), "-o", str(tmp_path / "out"), "--key-file", str(key)
    )

    data = bytearray(vol.read_bytes())
    data[fmt.HEADER_SIZE + 2 * (1024 + 16) + 5] ^= 0x40  # inside chunk 2 of file "f"
    vol.write_bytes(data)
    code, _, _ = call(capsys, "tag", str(vol), "--key-file", str(key))
    assert code == 0  # the manifest is intact; the chunk is checked when read
    err = failed(capsys, "verify", str(vol), "--key-file", str(key))
    assert "file 'f' chunk 2 failed authentication" in err
    assert "truncated" in failed(
        capsys, "verify", str(_truncated(vol, tmp_path)), "--key-file", str(key)
    )


def _truncated(vol: Path, tmp_path: Path) -> Path:
    path = tmp_path / "short.vol"
    path.write_bytes(vol.read_bytes()[:-1])
    return path


def test_force_replaces_no_device_fifo_or_folder(tmp_path: Path) -> None:
    """A hostile review: ``secfl shield encrypt SRC -o /dev/null --force`` run as root
    replaced the system's /dev/null with a regular file of mode 0600 (every other
    process writing to it failed from then on); a FIFO (here) likewise. A volume
    replaces only a file: anything else is refused in one line and left as it was."""
    from tests.clirun import one_error, secfl_all

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("data")
    key = tmp_path / "k"
    key.write_text("11" * 32)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    encrypt = ["shield", "encrypt", str(src), "--key-file", str(key), "--force", "-o"]
    done = secfl_all([*encrypt, str(fifo)], [*encrypt, str(folder)])
    assert "is a FIFO, not a volume file" in one_error(done[0])
    assert "is a folder, not a volume file" in one_error(done[1])
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and list(folder.iterdir()) == []


def test_an_empty_path_is_not_the_current_folder(tmp_path: Path) -> None:
    """A hostile review: ``-o ""`` (an unset variable in a script: ``-o "$OUT"``) was
    the current folder: ``secfl shield decrypt`` wrote the plaintext there, ``secfl
    data split`` the shards, and ``secfl shield encrypt ""`` took the current folder
    for the one to encrypt. Each is refused in one line, and nothing is written."""
    from tests.clirun import one_error

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("secret")
    key = tmp_path / "k"
    key.write_text("11" * 32)
    volume = tmp_path / "v.secfl"
    assert clirun.secfl("shield", "encrypt", str(src), "-o", str(volume),
                        "--key-file", str(key)).returncode == 0  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    done = [
        clirun.secfl(*argv, cwd=work)
        for argv in (
            ["shield", "decrypt", str(volume), "--key-file", str(key), "-o", ""],
            ["data", "split", "--task", "digits", "--clients", "2", "-o", ""],
            ["shield", "encrypt", "", "-o", str(tmp_path / "w.secfl"), "--key-file", str(key)],
        )
    ]
    assert "--output: the path is empty" in one_error(done[0])
    assert "--output: the path is empty" in one_error(done[1])
    assert "SRC_DIR: the path is empty" in one_error(done[2])
    assert list(work.iterdir()) == [] and not (tmp_path / "w.secfl").exists()


def test_decrypt_makes_no_setuid_or_setgid_file(tmp_path: Path) -> None:
    """A hostile review: a volume's manifest records each file's mode, and ``secfl
    shield decrypt`` restored all of it: a volume whose sender recorded 6755 (or
    encrypted a setuid file), decrypted by root, left a setuid-root program on disk.
    The permission bits are restored; setuid, setgid and sticky never are."""
    from secfl.shield import encrypt_files
    from tests.shield import KEY, reseal_manifest

    volume = tmp_path / "v.secfl"
    encrypt_files({"bin/tool": b"#!/bin/sh\nid\n", "notes": b"x"}, volume, KEY)
    modes = {"bin/tool": 0o6755, "notes": 0o1640}

    def setuid(plaintext: bytes) -> bytes:
        doc = json.loads(plaintext)
        for entry in doc["files"]:
            entry["mode"] = modes[entry["path"]]
        return fmt.canonical(doc)

    reseal_manifest(volume, KEY, setuid)
    key = tmp_path / "k"
    key.write_text(KEY.hex())
    out = tmp_path / "out"
    done = clirun.secfl("shield", "decrypt", str(volume), "--key-file", str(key), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert read_tree(out) == {"bin/tool": (b"#!/bin/sh\nid\n", 0o755), "notes": (b"x", 0o640)}


def test_decrypt_keeps_to_the_umask(tmp_path: Path) -> None:
    """A hostile review: the recorded mode was set whatever the umask, so a file its
    volume recorded 0666 (or 0777) was decrypted writable by every local user, even
    under umask 077 (in a real process here): decrypted code another user could then
    rewrite. The umask takes its bits away, as from any file the user makes."""
    import subprocess
    import sys

    from secfl.shield import encrypt_files
    from tests.shield import KEY, reseal_manifest

    volume = tmp_path / "v.secfl"
    encrypt_files({"run": b"#!/bin/sh\n", "shared": b"x"}, volume, KEY)
    modes = {"run": 0o777, "shared": 0o666}

    def writable(plaintext: bytes) -> bytes:
        doc = json.loads(plaintext)
        for entry in doc["files"]:
            entry["mode"] = modes[entry["path"]]
        return fmt.canonical(doc)

    reseal_manifest(volume, KEY, writable)
    key = tmp_path / "k"
    key.write_text(KEY.hex())
    code = (
        "import os, sys; os.umask(0o022); "
        "from secfl.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["shield", "decrypt", str(volume), "--key-file", str(key), "-o", str(tmp_path / "o")]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert read_tree(tmp_path / "o") == {"run": (b"#!/bin/sh\n", 0o755), "shared": (b"x", 0o644)}


def test_decrypt_writes_only_where_no_other_user_can(tmp_path: Path) -> None:
    """A review (carried from earlier notes): ``decrypt -o DIR`` wrote the plaintext
    into any folder, so into one every user may write (another user could rename what
    landed there, or plant the folders it goes into) and into a folder another user
    made below it (its owner may rename the decrypted files out, or change its mode and
    read them). Both are refused in one line, and nothing lands in either folder
    (real processes, as root: root decrypting into another user's folder is the case)."""
    from secfl.shield import encrypt_files
    from tests.clirun import one_error
    from tests.shield import KEY

    volume = tmp_path / "v.secfl"
    encrypt_files({"bin/tool": b"secret code\n", "notes": b"secret notes"}, volume, KEY)
    key = tmp_path / "k"
    key.write_text(KEY.hex())
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    planted = tmp_path / "planted"
    (planted / "bin").mkdir(parents=True)
    if os.geteuid() == 0:
        os.chown(planted / "bin", 4321, 4321)  # another user's folder, made ahead
    else:  # pragma: no cover - the suite runs as root in CI
        pytest.skip("needs root to make a folder another user owns")
    done = clirun.secfl_all(
        *(["shield", "decrypt", str(volume), "--key-file", str(key), "-o", str(out)]
          for out in (shared, planted))
    )  # fmt: skip
    assert done[0].returncode == 1, done[0].stderr
    assert one_error(done[0]) == (
        f"error: shield: '{shared}' can be written by every user (mode 0777): decrypt "
        "into a new folder of your own (-o), or one only you can write"
    )
    assert done[1].returncode == 1, done[1].stderr
    assert one_error(done[1]) == (
        f"error: shield: '{planted / 'bin'}' belongs to another user (uid 4321): decrypt "
        "into a new folder of your own (-o), or one only you can write"
    )
    assert list(shared.iterdir()) == [] and list((planted / "bin").iterdir()) == []
    assert not (planted / "notes").exists()
