"""``secfl data split`` and ``secfl data info``: a table, the files, one-line errors."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from secfl.tasks import encode_shard
from tests import clirun


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return clirun.call(capsys, "data", *args)


def failed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    return clirun.failed(capsys, "data", *args)


def test_split_prints_a_table_and_writes_shards(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["split", "--task", "digits", "--clients", "3", "--dirichlet", "0.1", "--seed", "4"]
    code, out, err = call(capsys, *args, "-o", str(tmp_path / "a"))
    assert code == 0 and err == "", err
    for name in ("client-000.safetensors", "client-002.safetensors", "validation", "test"):
        assert name in out
    assert "dirichlet(alpha=0.1), seed 4" in out and "%" in out
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "client-000.safetensors",
        "client-001.safetensors",
        "client-002.safetensors",
        "split.json",
        "test.safetensors",
        "validation.safetensors",
    ]
    assert call(capsys, *args, "-o", str(tmp_path / "b"))[0] == 0
    for name in ("client-001.safetensors", "test.safetensors", "split.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    code, out, _ = call(capsys, "info", str(tmp_path / "a" / "client-001.safetensors"))
    assert code == 0
    assert "task:     digits" in out and "client 1 of 3" in out and "dirichlet(alpha=0.1)" in out


def test_iid_is_the_default(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = call(
        capsys, "split", "--task", "breast-cancer", "--clients", "2", "--iid", "-o", str(tmp_path)
    )
    assert code == 0 and "iid, seed 0" in out


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["split", "--clients", "2", "-o", str(tmp_path / "x")]
    assert "not both" in failed(capsys, *base, "--task", "digits", "--iid", "--dirichlet", "1")
    assert "--task: 'nope' is neither a built-in task (breast-cancer, diabetes" in failed(
        capsys, *base, "--task", "nope"
    )
    assert "alpha" in failed(capsys, *base, "--task", "digits", "--dirichlet", "-1")
    assert call(capsys, *base, "--task", "digits")[0] == 0
    assert "already holds a split" in failed(capsys, *base, "--task", "digits")
    assert "cannot read shard" in failed(capsys, "info", str(tmp_path / "missing"))
    shard = str(tmp_path / "x" / "client-000.safetensors")
    assert "not 'breast-cancer'" in failed(capsys, "info", shard, "--task", "breast-cancer")


def test_info_never_prints_a_task_name_that_rewrites_the_terminal(tmp_path: Path) -> None:
    """A shard from elsewhere whose task name holds escape sequences (a fake window
    title, a cleared screen, red text) and a right-to-left override: `data info` (a real
    process) refuses it in one line, the name escaped, nothing raw on the terminal."""
    name = "x\x1b]0;PWNED\x07\x1b[2J\x1b[31mred\u202eevil"
    meta = {"task": name, "role": "client", "index": 0, "clients": 1, "samples": 4,
            "num_classes": 2, "label_counts": [2, 2], "feature_shape": [3],
            "storage_dtype": "float32", "scaling": {"offset": [0.0], "scale": [1.0]},
            "partition": {"kind": "iid"}, "seed": 0, "split": "0" * 64}  # fmt: skip
    with mock.patch("secfl.tasks._shards._check_meta"):  # as another program would write it
        blob = encode_shard(np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1]), meta)
    (tmp_path / "evil.safetensors").write_bytes(blob)
    done = clirun.secfl("data", "info", str(tmp_path / "evil.safetensors"))
    line = clirun.one_error(done)
    assert "is not a task name" in line and "\\x1b]0;PWNED" in line, line
    assert "\x1b" not in done.stderr and "\u202e" not in done.stderr and "\x07" not in done.stderr


def test_a_path_that_cannot_be_looked_up_is_one_line(tmp_path: Path) -> None:
    """A hostile review: a path the system will not look up (a name longer than 255
    bytes here; a folder the user may not search likewise) was a traceback from
    ``Path.exists`` in ``data split -o``, ``data split --task`` and ``data info``."""
    from tests.clirun import one_error, secfl_all

    long = str(tmp_path / ("a" * 300))
    split = ["data", "split", "--clients", "2"]
    done = secfl_all(
        [*split, "--task", "digits", "-o", long],
        [*split, "--task", long, "-o", str(tmp_path / "out")],
        ["data", "info", long],
    )
    assert "File name too long" in one_error(done[0])
    assert "is neither a built-in task" in one_error(done[1])
    assert "File name too long" in one_error(done[2])
    assert list(tmp_path.iterdir()) == []


def test_a_split_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Shards are a site's data in the clear: another local user reads none of them, made
    by `secfl data split` in a process of its own under the common umask 022 (they were
    0644 in a 0755 folder: any user of the machine read a hospital's records)."""
    import subprocess
    import sys

    out = tmp_path / "shards"
    args = ["data", "split", "--task", "breast-cancer", "--clients", "2", "-o", str(out)]
    code = (
        "import os, sys; os.umask(0o022); "
        "from secfl.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o700
    written = sorted(out.iterdir())
    assert len(written) == 5
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o600, path.name


def test_info_reads_no_more_of_a_file_than_its_header_describes(tmp_path: Path) -> None:
    """A hostile review: `data info FILE` (and every reader of a shard by its path) read
    the whole file into memory before looking at its first 8 bytes, so a 20 GB file
    (sparse here) was 20 GB of memory: a MemoryError under a 4 GB limit, an OOM kill
    without one. Now at most the header is read of a file that is no shard, or of one
    longer than its tensors (in a real process, under a 4 GB address-space limit)."""
    import subprocess
    import sys

    meta = {"task": "mine", "role": "client", "index": 0, "clients": 1, "samples": 4,
            "num_classes": 2, "label_counts": [2, 2], "feature_shape": [3],
            "storage_dtype": "float32", "scaling": {"offset": [0.0], "scale": [1.0]},
            "partition": {"kind": "iid"}, "seed": 0, "split": "0" * 64}  # fmt: skip
    padded, zeros = tmp_path / "padded.safetensors", tmp_path / "zeros.safetensors"
    padded.write_bytes(encode_shard(np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1]), meta))
    os.truncate(padded, 20 << 30)
    zeros.touch()
    os.truncate(zeros, 20 << 30)

    # the child limits itself, after its imports: a ``preexec_fn`` forks this test
    # process, whose gRPC (loaded by earlier tests in the worker) can abort the fork
    # ("epoll_wait error: Bad file descriptor", seen in CI)
    entry = (
        "import resource, sys; from secfl.cli.main import main; "
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
        "sys.exit(main(sys.argv[1:]))"
    )
    lines = []
    for path in (padded, zeros):
        done = subprocess.run(
            [sys.executable, "-c", entry, "data", "info", str(path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines.append(clirun.one_error(done))
    assert "is 21474836480 bytes, its header describes 776" in lines[0], lines[0]
    assert "header is not valid JSON" in lines[1], lines[1]


def test_a_split_goes_only_where_no_other_user_can_write(tmp_path: Path) -> None:
    """A review (carried from earlier notes): ``data split -o DIR`` into an existing
    folder kept its mode, so into one every user may write (another user could swap a
    shard for data of their choosing before the site shields it) or one another user
    owns (its owner may open it up and read the shards). Both are refused in one line
    and nothing is written (real processes, as root)."""
    from tests.clirun import one_error, secfl_all

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    if os.geteuid() != 0:  # pragma: no cover - the suite runs as root in CI
        pytest.skip("needs root to make a folder another user owns")
    os.chown(theirs, 4321, 4321)
    done = secfl_all(
        *(["data", "split", "--task", "breast-cancer", "--clients", "2", "-o", str(out)]
          for out in (shared, theirs))
    )  # fmt: skip
    assert one_error(done[0]) == (
        f"error: split: '{shared}' can be written by every user (mode 0777): write the "
        "shards to a new folder (-o)"
    )
    assert one_error(done[1]) == (
        f"error: split: '{theirs}' belongs to another user (uid 4321): write the shards "
        "to a new folder (-o)"
    )
    assert list(shared.iterdir()) == [] and list(theirs.iterdir()) == []
