"""Under `secfl run` the host reads the workloads' logs and error lines, and sets
their log level (`SECFL_LOG_LEVEL`, not measured): whatever it sets, a task that
fails shows the host neither its message (often data) nor its code. Real
processes: an SPM, and the aggregator and a collaborator each under `secfl run` in
the simulated TEE, all at DEBUG; the task's `train` warns and then raises with a
"patient row" in the text."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from secfl.demo.federation import DemoSettings, Federation

pytestmark = pytest.mark.timeout(300)

SECRET = "PATIENT-4711"
TASK = f'''"""diabetes, whose train fails on a confidential row."""

import warnings

from secfl.tasks import get_task

_diabetes = get_task("diabetes")
name = "diabetes"
build_model = _diabetes.build_model
load_data = _diabetes.load_data
evaluate = _diabetes.evaluate


def train(model, data, config):
    warnings.warn(f"odd row {SECRET} (warned)")  # confidential warning line
    raise RuntimeError(f"row: {SECRET} age 52, n={{len(data)}}")  # confidential code line
'''


def test_a_failing_task_shows_the_host_neither_its_message_nor_its_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECFL_LOG_LEVEL", "DEBUG")
    code = tmp_path / "code"
    code.mkdir()
    (code / "task.py").write_text(TASK)
    fed = Federation(
        tmp_path / "fed", DemoSettings(task="diabetes", clients=1, rounds=1, code=code)
    )
    try:
        fed.start_spm()
        fed.prepare_data()
        fed.submit_policy()
        fed.start_aggregator()
        fed.start_collaborators()
        deadline = time.monotonic() + 240
        while fed.failed() is None:
            assert time.monotonic() < deadline, {n: w.tail(5) for n, w in fed.workloads.items()}
            time.sleep(0.2)
        site = fed.workloads["site-1"]
        assert fed.failed() is site, {n: w.tail(5) for n, w in fed.workloads.items()}
    finally:
        fed.stop()
    logs = {path.name: path.read_text(errors="replace") for path in fed.logs.glob("*.log")}
    for name, text in logs.items():
        assert SECRET not in text, (name, text[-3000:])
        assert "confidential" not in text, (name, text[-3000:])  # no source line either
        assert "Traceback" not in text, (name, text[-3000:])
    last = logs["site-1.log"].strip().splitlines()[-1]
    # the place, by the file's number in the volume, never its name (a review)
    last_ok = "error: train: the task raised RuntimeError at task file #1 of 1, line 16 ("
    assert last.startswith(last_ok), last
    assert "secfl simulate" in last
    assert "task file #1 of 1, line 15: UserWarning (its text is not shown)" in logs["site-1.log"]
