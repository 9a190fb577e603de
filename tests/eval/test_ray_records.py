"""What a Ray node sends back for a run is checked as the folder's reader checks a
record, and must be the record of the run it was sent: an answer that is not (not
JSON, NaN figures, another run's record, as another secfl on a node might send) stops
the grid in one line and is not appended (a record the reader skips ran again on every
``--resume``; a record of another run left the run it was sent for to go for ever).
Ray itself is not started: a stand-in runs the tasks in this process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secfl.errors import FlError
from secfl.eval.folder import GridFolder, load_records
from secfl.eval.options import GridOptions, assemble_grid
from secfl.eval.ray_engine import RECORDS, _stream

GOOD: dict[str, Any] = {
    "task": "digits", "partition": "iid", "malicious": 0.0, "attack": "none",
    "defence": "fedavg", "seed": 0, "error": "", "accuracy": 0.9, "seconds": 1.5,
    "rounds": [{"round": 1, "test_accuracy": 0.9}],
}  # fmt: skip


class _Ref:
    def __init__(self, value: Any) -> None:
        self.value = value


class FakeRay:
    """The part of Ray's API the engine uses; each task's answer is ``answer(payload)``."""

    class exceptions:  # (Ray's name)
        class RayError(Exception):
            pass

    def __init__(self, answer: Callable[[str], Any]) -> None:
        self.answer = answer

    def remote(self, **_: Any) -> Callable[[Any], Any]:
        outer = self

        class Task:
            def remote(self, payload: str) -> _Ref:
                return _Ref(outer.answer(payload))

        return lambda fn: Task()

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 1.0}

    def wait(self, refs: list[Any], num_returns: int = 1, timeout: float | None = None) -> Any:
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: _Ref) -> Any:
        return ref.value


def folder_of_one_run(path: Path) -> GridFolder:
    options = GridOptions(tasks="digits", clients=4, partitions="iid", malicious="0",
                          attacks="label-flip", defences="fedavg", seeds=1, rounds=1,
                          epochs=1, samples=200)  # fmt: skip
    grid, _, command = assemble_grid(options, out=str(path))
    folder = GridFolder(path, grid, command)
    folder.claim()
    return folder


ANSWERS: dict[str, Any] = {
    "accuracy-nan": json.dumps({"record": {**GOOD, "accuracy": float("nan")}}),
    "malicious-text": json.dumps({"record": {**GOOD, "malicious": "0"}}),
    "another-run": json.dumps({"record": {**GOOD, "seed": 7}}),
    "another-defence": json.dumps({"record": {**GOOD, "defence": "median"}}),
    "no-record": json.dumps({"something": 1}),
    "a-list": json.dumps([1, 2]),
    "text": json.dumps("refused"),
    "not-json": "<html>",
    "not-text": 42,
    "refused-not-text": json.dumps({"refused": {"why": 1}}),
}


@pytest.mark.parametrize("answer", list(ANSWERS.values()), ids=list(ANSWERS))
def test_a_node_s_answer_that_is_not_the_run_s_record_is_refused_not_appended(
    tmp_path: Path, answer: Any
) -> None:
    folder = folder_of_one_run(tmp_path / "grid")
    with pytest.raises(FlError) as refused:
        _stream(FakeRay(lambda payload: answer), folder, lambda i, n, label: None, 1)
    message = str(refused.value)
    assert message.startswith("--ray: run digits/iid/0%/none/fedavg/s0 (fedavg) came back")
    assert "install the same secfl on every node" in message and "\n" not in message
    assert not (folder.path / RECORDS).exists()


def test_the_run_s_own_record_is_appended(tmp_path: Path) -> None:
    folder = folder_of_one_run(tmp_path / "grid")
    answer = json.dumps({"record": GOOD})
    assert _stream(FakeRay(lambda payload: answer), folder, lambda i, n, label: None, 1) == 1
    assert load_records(folder.path) == [GOOD]
    assert folder.evaluation().pending() == []


def test_a_refusal_of_a_node_is_its_one_line(tmp_path: Path) -> None:
    folder = folder_of_one_run(tmp_path / "grid")
    answer = json.dumps({"refused": "node x builds another 'digits' model than this machine"})
    with pytest.raises(FlError, match="^--ray: node x builds another 'digits' model"):
        _stream(FakeRay(lambda payload: answer), folder, lambda i, n, label: None, 1)
