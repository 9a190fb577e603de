"""Files on the aggregator's disk: signing the board's reset never loses the other
members' signatures, and reading it never hangs on what the host planted there. Found
by a hostile review; real processes, a real EFBIG from RLIMIT_FSIZE as a full disk
would give ENOSPC, a real FIFO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

SIGN = r"""
import sys
from pathlib import Path
from secfl.errors import FlError
from secfl.fl._reset import sign_reset
from secfl.policy import _keys as keys
doc = {"policy": "p", "policy_digest": "0" * 64, "counter": "rounds", "value": 3,
       "reason": "checkpoint lost"}
private, _ = keys.generate()
if sys.argv[3] != "-":  # the disk's space, as a limit on the size of any file written
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a signal, as ENOSPC would
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
try:
    print(sign_reset(Path(sys.argv[1]), doc, private, sys.argv[2]))
except FlError as exc:
    print("refused:", exc)
"""


def _sign(path: Path, member: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    # The child sets the limit itself, after its imports: a ``preexec_fn`` forks this
    # test process, whose gRPC (loaded by earlier tests in the worker) aborted the fork's
    # child in CI ("epoll_wait error: Bad file descriptor") before it ran anything. No
    # bytecode written either: under RLIMIT_FSIZE, Python's own .pyc write is cut short
    # and left in place, and the next process fails to import that module.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    size = "-" if limit is None else str(limit)
    return subprocess.run([sys.executable, "-c", SIGN, str(path), member, size], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_a_signature_that_fails_to_write_keeps_the_others(tmp_path: Path) -> None:
    """`sign-reset` rewrote the file in place: a write cut short truncated it, and the
    signatures the other members had added were lost."""
    reset = tmp_path / "reset.json"
    first = _sign(reset, "alice")
    assert first.stdout.strip() == "1", first.stderr[-3000:]
    before = reset.read_bytes()
    failed = _sign(reset, "bob", limit=len(before))  # the longer file cannot be written
    assert failed.stdout.startswith("refused: reset: cannot write "), failed.stdout
    assert reset.read_bytes() == before
    assert [s["member"] for s in json.loads(before)["signatures"]] == ["alice"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reset.json"]  # no temp file left
    assert _sign(reset, "bob").stdout.strip() == "2"


PENDING = r"""
import sys
from pathlib import Path
from secfl.errors import FlError
from secfl.fl._reset import pending_reset
try:
    pending_reset(Path(sys.argv[1]), None, "0" * 64, "rounds", 0)
except FlError as exc:
    print("refused:", exc)
"""


def test_a_fifo_at_reset_json_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO the host planted at checkpoints/reset.json blocked the aggregator's start
    for ever."""
    fifo = tmp_path / "checkpoints" / "reset.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-c", PENDING, str(fifo)], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.stdout.startswith("refused: reset: cannot read "), done.stdout + done.stderr
    assert "not a regular file" in done.stdout


CHECKPOINT = r"""
import sys
from pathlib import Path
from secfl.errors import FlError
from secfl.fl._checkpoint import load_checkpoint
from secfl.fl._checkpoint_format import header_of
path = Path(sys.argv[1])
print("header:", header_of(path))
try:
    load_checkpoint(path, key=bytes(32), policy_digest="0" * 64, expected_counter=1)
except FlError as exc:
    print("refused:", exc)
"""


def test_a_fifo_in_place_of_a_checkpoint_is_refused_not_waited_on(tmp_path: Path) -> None:
    """The same for a checkpoint the host swaps for a FIFO after the folder was listed."""
    fifo = tmp_path / "checkpoint-r00000001-c0000000001.secfl"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-c", CHECKPOINT, str(fifo)], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.stdout.splitlines() == [
        "header: None",
        f"refused: checkpoint: cannot open {fifo}: not a regular file",
    ], done.stdout + done.stderr


def test_a_fifo_renamed_over_a_fresh_checkpoint_does_not_hang_its_sync(tmp_path: Path) -> None:
    """The review of the fix: the commit's fsync step opened the path blocking."""
    from secfl.errors import FlError
    from secfl.fl._checkpoint import sync_checkpoint, write_checkpoint

    path = write_checkpoint(tmp_path, key=bytes(32), policy_digest="0" * 64, round=1, counter=1,
                            params_bytes=b"\0" * 16, state={}, durable=False)  # fmt: skip
    fifo = tmp_path / "planted"
    os.mkfifo(fifo)
    os.replace(fifo, path)  # the host, between the write and the fsync
    with pytest.raises(FlError, match="cannot sync .*: not a regular file"):
        sync_checkpoint(path)


def test_the_operators_own_settings_may_come_from_a_pipe() -> None:
    """The review of the fix: refusing what is not a regular file broke `secfl simulate
    --settings <(...)` and `--settings /dev/stdin`, the operator's own input."""
    code = (
        "from pathlib import Path\n"
        "from secfl.fl._startup import read_settings\n"
        "print(read_settings(Path('/dev/stdin')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], input="rounds: 3\n",
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-500:]
    assert "'rounds': 3" in done.stdout
