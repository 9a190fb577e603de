"""A committed round survives the aggregator being killed (kill -9) at any step of
its overlapped commit (:mod:`secfl.fl._commit`: the checkpoint written and renamed,
then the counter moved while it is fsynced, then the round recorded).

The aggregator's commit runs in a separate process that SIGKILLs itself inside the
counter stand-in (a counter in a file, fsynced: the SPM's part), either just before
or just after it moves the counter for round ``K``; this test process then resumes
as a restarted aggregator does (:meth:`Commit.resume`) and must find exactly the
newest round whose counter moved, with its model. A commit that moved the counter
before the checkpoint was in place under its name would leave the counter at a
value no checkpoint has, and the resume would refuse it as a rollback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from secfl.fl._commit import Commit
from secfl.fl._tensors import from_bytes

KEY = b"c" * 32
RUN = "d" * 64
KILLED_AT = 4  # the counter value whose increment is cut short

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path

    from secfl._internal.files import write_private
    from secfl.fl._commit import Commit
    from secfl.fl._tensors import state_dict_arrays, to_bytes
    from secfl.tasks._registry import get_task

    folder, when, killed_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    counter_file = folder / "counter.json"

    class FileLedger:  # the SPM's counter, in a file that outlives the process
        def current(self):
            return json.loads(counter_file.read_text())["value"]

        def committed(self):
            doc = json.loads(counter_file.read_text())
            return doc["value"], doc.get("request")

        def increment(self, expect=None, *, request=None):
            assert expect is None or expect == self.current()
            value = self.current() + 1
            if value == killed_at and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            doc = {"value": value, "request": request}
            write_private(counter_file, json.dumps(doc).encode())
            if value == killed_at and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return value

    write_private(counter_file, json.dumps({"value": 0}).encode())
    commit = Commit(FileLedger(), directory=folder / "ckpt", key=b"c" * 32,
                    policy_digest="d" * 64, overlap=True)
    commit.resume()
    base = state_dict_arrays(get_task("digits").build_model(0))
    for round in range(0, 10):  # round r is committed at counter r + 1
        params = {k: v + round for k, v in base.items()}
        commit.begin(round, to_bytes(params), {"round_seen": round})
        commit.settle()
        print("recorded", round, flush=True)
    commit.drain()
    """
)


class FileLedger:
    """The counter the child left behind."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def current(self) -> int:
        return int(json.loads(self.path.read_text())["value"])

    def committed(self) -> tuple[int, str | None]:
        doc = json.loads(self.path.read_text())
        return int(doc["value"]), doc.get("request")

    def increment(  # pragma: no cover - never called
        self, expect: int | None = None, *, request: str | None = None
    ) -> int:
        raise AssertionError("not used")


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_9_during_the_counter_resumes_from_the_newest_committed_round(
    tmp_path: Path, when: str
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), when, str(KILLED_AT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    recorded = [int(line.split()[1]) for line in proc.stdout.splitlines()]
    # rounds are recorded only once their counter moved: never ahead of the counter
    counter = FileLedger(tmp_path / "counter.json").current()
    assert counter == (KILLED_AT if when == "after" else KILLED_AT - 1)
    assert recorded == list(range(KILLED_AT - 1))  # round 3, at counter 4, never recorded

    restarted = Commit(
        FileLedger(tmp_path / "counter.json"), directory=tmp_path / "ckpt", key=KEY,
        policy_digest=RUN,
    )  # fmt: skip
    point = restarted.resume()
    assert point.checkpoint is not None
    # the newest round whose counter moved, whether or not it was recorded yet
    assert (point.checkpoint.round, point.checkpoint.counter) == (counter - 1, counter)
    assert point.checkpoint.state["round_seen"] == counter - 1
    params, _ = from_bytes(point.checkpoint.params_bytes)
    first = restarted_first_params()
    for name, value in params.items():
        np.testing.assert_array_equal(value, first[name] + (counter - 1))


def restarted_first_params() -> dict[str, np.ndarray]:
    from secfl.fl._tensors import state_dict_arrays
    from secfl.tasks._registry import get_task

    return state_dict_arrays(get_task("digits").build_model(0))


def test_the_child_runs_to_the_end_when_nothing_kills_it(tmp_path: Path) -> None:
    """The harness itself: without a kill every round is recorded and resumes."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "never", "0"],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    point = Commit(
        FileLedger(tmp_path / "counter.json"), directory=tmp_path / "ckpt", key=KEY,
        policy_digest=RUN,
    ).resume()  # fmt: skip
    assert point.checkpoint is not None and point.checkpoint.round == 9
    assert len(list((tmp_path / "ckpt").glob("checkpoint-*.secfl"))) == 2  # pruned
