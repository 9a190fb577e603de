"""The task contract: what the runtime checks of a task's answers, in one line each."""

from __future__ import annotations

import logging
import types
import warnings

import numpy as np
import pytest
import torch

from secfl.errors import SecflError, TaskError
from secfl.tasks import (
    SplittableTask,
    Task,
    as_task,
    call_task,
    check_metrics,
    get_task,
    sample_count,
    task_names,
)
from secfl.tasks._contract import MAX_METRICS, show_task_errors, task_errors_shown


def test_numbers_of_every_kind_pass_as_floats() -> None:
    got = check_metrics(
        {"loss": np.float32(0.5), "n": 12, "r2": np.float64(-0.25), "acc.top-1": 1},
        "evaluate",
    )
    assert got == {"loss": 0.5, "n": 12.0, "r2": -0.25, "acc.top-1": 1.0}
    assert all(type(v) is float for v in got.values())


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (float("nan"), "'loss' is not a finite number (nan)"),
        (float("inf"), "'loss' is not a finite number (inf)"),
        (10**400, "'loss' is not a finite number (an integer of 401 digits)"),
        pytest.param(
            10**5000, "'loss' is not a finite number (an integer of 16610 bits)", id="10**5000"
        ),
        (-(10**400), "'loss' is not a finite number (an integer of 401 digits)"),
        (np.float64("nan"), "'loss' is not a finite number (nan)"),
        (float("-inf"), "'loss' is not a finite number (-inf)"),
        (True, "'loss' is a bool, not a number"),
        ("0.5", "'loss' is a str, not a number"),
        (torch.tensor(0.5), "'loss' is a Tensor, not a number"),
        (None, "'loss' is a NoneType, not a number"),
    ],
)
def test_a_metric_that_is_not_a_finite_number_is_refused_by_name(value: object, shown: str) -> None:
    with pytest.raises(TaskError) as info:
        check_metrics({"n": 3, "loss": value}, "train")
    text = str(info.value)
    assert text.startswith(f"train: metric {shown}") and "\n" not in text


def test_names_count_and_shape_are_bounded() -> None:
    with pytest.raises(TaskError, match=r"^evaluate: returned a list, not a mapping"):
        check_metrics([("loss", 1.0)], "evaluate")
    with pytest.raises(TaskError, match=rf"at most {MAX_METRICS}$"):
        check_metrics({f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}, "evaluate")
    for name in ("", "x" * 65, "val loss", "line\nbreak", 7):
        with pytest.raises(TaskError, match=r"^evaluate: metric name .* is not 1 to 64"):
            check_metrics({name: 1.0}, "evaluate")
    assert check_metrics({"x" * 64: 1.0}, "evaluate") == {"x" * 64: 1.0}


def test_a_required_metric_must_be_there() -> None:
    with pytest.raises(TaskError) as info:
        check_metrics({"mae": 1.0, "n": 4}, "train", required="loss")
    assert str(info.value) == "train: returned no 'loss' (it returned: mae, n)"


def test_sample_count_needs_len_and_samples() -> None:
    assert sample_count([1, 2, 3], "load_data") == 3
    with pytest.raises(TaskError, match=r"^load_data: returned a generator, which has no len\(\)"):
        sample_count((i for i in range(3)), "load_data")
    with pytest.raises(TaskError, match=r"^load_data: the data has no samples \(len\(\) is 0\)$"):
        sample_count([], "load_data")

    class Broken:
        def __len__(self) -> int:
            raise RuntimeError("no rows yet")

    with (
        task_errors_shown(),
        pytest.raises(
            TaskError, match=r"^load_data: len\(\) of the data failed: RuntimeError: no rows yet$"
        ),
    ):
        sample_count(Broken(), "load_data")
    with pytest.raises(TaskError) as hidden:  # a secure workload's: no message
        sample_count(Broken(), "load_data")
    assert str(hidden.value).startswith(
        "load_data: len() of the data failed: RuntimeError at test_contract.py, line "
    )
    assert "no rows" not in str(hidden.value)


def test_a_task_raising_anything_is_one_line_naming_the_call() -> None:
    def train(model: object, data: object, config: object) -> None:
        raise ValueError("could not convert\nstring to float: 'abc'")

    with task_errors_shown(), pytest.raises(TaskError) as info:
        call_task("train", train, None, None, {})
    assert str(info.value) == (
        "train: the task raised ValueError: could not convert string to float: 'abc'"
    )
    refusal = TaskError("training config: lr must be a number")
    with pytest.raises(TaskError) as again:
        call_task("train", lambda: (_ for _ in ()).throw(refusal))
    assert again.value is refusal  # the runtime's own errors pass unchanged
    assert isinstance(again.value, SecflError)


def test_built_in_tasks_and_modules_meet_the_protocol() -> None:
    for name in task_names():
        task = get_task(name)
        assert isinstance(task, Task) and isinstance(task, SplittableTask)
    module = types.ModuleType("user_task")
    module.name = "user"  # type: ignore[attr-defined]
    for attr in ("build_model", "load_data", "train", "evaluate"):
        setattr(module, attr, lambda *a: None)
    assert isinstance(as_task(module), Task)
    assert not isinstance(module, SplittableTask)  # load_pool is optional


def test_by_default_a_task_failure_shows_neither_its_message_nor_its_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A secure workload's: the host reads its log, at whatever level it sets."""
    caplog.set_level(logging.DEBUG)

    def train(model: object, data: object, config: object) -> None:
        raise RuntimeError("row: PATIENT-4711")  # a confidential line

    with pytest.raises(TaskError) as info:
        call_task("train", train, None, None, {})
    text = str(info.value)
    assert text.startswith("train: the task raised RuntimeError at test_contract.py, line ")
    assert "PATIENT" not in text and info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert "PATIENT" not in caplog.text and "confidential" not in caplog.text
    original = warnings.formatwarning
    show_task_errors(False)  # what a secure workload does at start: warnings lose their text
    try:
        shown = warnings.formatwarning("row PATIENT-4711", UserWarning, __file__, 7, "code")
        assert shown == "test_contract.py, line 7: UserWarning (its text is not shown)\n"
        with task_errors_shown():
            assert "PATIENT" in warnings.formatwarning("row PATIENT-4711", UserWarning, __file__, 7)
        assert "PATIENT" not in warnings.formatwarning("row PATIENT-4711", UserWarning, "x", 7)
    finally:
        warnings.formatwarning = original
