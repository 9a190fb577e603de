"""A board reset of a run that lost its own first commits keeps ``start_from: previous``.

Found by a review: run 2 of a federation (``start_from: previous``) committed its first
model, run 1's, and that file was lost (a power loss in the fsync window, or the host
deleted it). The restart was refused as a rollback, as it must be; on the board's reset
the aggregator looked only for run 2's own checkpoints, found none, and started run 2
from the task's initial model while run 1's committed checkpoint was still in the folder
(only a log line said so). A reset now goes on from the newest checkpoint of an earlier
run that the SPM counted and that opens with the policy's key; with none left, from the
initial model, with a warning that says so. Files the SPM did not count (a fork's loser,
an uncommitted leftover, another federation's) are never taken. Real aggregators and
sites over mutual TLS (fedkit), and the choice alone on files written here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfl.errors import FlError
from secfl.fl._aggregator import Aggregator, Signer
from secfl.fl._checkpoint import write_checkpoint
from secfl.fl._checkpoint_dir import list_checkpoints
from secfl.fl._checkpoint_format import policy_of
from secfl.fl._checkpoint_names import new_request
from secfl.fl._commit import Commit, MemoryLedger
from secfl.fl._config import FederationConfig
from secfl.fl._reset import pending_reset
from secfl.fl._tensors import from_bytes, state_dict_arrays, to_bytes
from secfl.policy import load_policy
from secfl.policy._canonical import digest
from secfl.tasks._registry import get_task
from secfl.tasks._split import split
from tests.fl.fedkit import Federation
from tests.fl.test_runs import KEY, QUICK, RUN_A, RUN_B, aggregator, gates, signed_reset
from tests.policy import policy_dict, to_yaml

pytestmark = pytest.mark.timeout(300)

PREVIOUS = {"rounds": 2, "start_from": "previous"}
LOGGER = "secfl.fl._aggregator"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    report = split("digits", 3, seed=2, out=tmp_path_factory.mktemp("shards"))
    return Federation(get_task("digits"), report)


@pytest.fixture(scope="module")
def board() -> tuple[Any, str]:
    policy = load_policy(to_yaml(policy_dict()))
    return policy, digest(policy)


def _run_2_loses_its_first_commit(
    fed: Federation, directory: Path, ledger: MemoryLedger, settings: dict[str, Any], run: str
) -> dict[str, np.ndarray]:
    """Run 1 trains one round; run 2 (``run``) commits its first model at counter 3 and
    that file is lost; its restart is refused. Returns run 1's final model."""
    first = aggregator(fed, {"rounds": 1}, run=RUN_A, ledger=ledger, directory=directory)
    final = fed.run(first, range(3), gates=gates(fed, RUN_A))
    second = aggregator(fed, settings, run=run, ledger=ledger, directory=directory)
    second.server.stop(None)
    assert ledger.value == 3
    newest = list_checkpoints(directory)[0][2]
    assert policy_of(newest) == run
    newest.unlink()  # lost
    with pytest.raises(FlError, match=r"^rollback: "):
        aggregator(fed, settings, run=run, ledger=ledger, directory=directory)
    return final


def _reset(
    fed: Federation, directory: Path, ledger: MemoryLedger, settings: dict[str, Any],
    board: tuple[Any, str],
) -> Aggregator:  # fmt: skip
    """Run 2's aggregator started with the board's reset at the SPM's counter."""
    policy, pdigest = board
    path = signed_reset(directory / "reset.json", policy, pdigest, ledger.value)
    reset = pending_reset(path, policy, pdigest, "round", ledger.current())
    assert reset is not None
    again = Aggregator(
        fed.task, FederationConfig.parse({**QUICK, **settings}), fed.server([]),
        Signer(pdigest, fed.key),
        Commit(ledger, directory=directory, key=KEY, policy_digest=pdigest), reset=reset,
    )  # fmt: skip
    again.start()
    again.server.stop(None)
    assert again._start == 1 and ledger.value == 4  # its first model committed again
    assert (directory / "reset-used-c3.json").exists()  # the reset is used up
    return again


def _initial(fed: Federation) -> dict[str, np.ndarray]:
    return state_dict_arrays(fed.task.build_model(0))


def test_a_reset_of_a_new_runs_lost_first_commit_keeps_start_from_previous(
    fed: Federation, tmp_path: Path, board: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    directory, ledger = tmp_path / "checkpoints", MemoryLedger()
    final = _run_2_loses_its_first_commit(fed, directory, ledger, PREVIOUS, board[1])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = _reset(fed, directory, ledger, PREVIOUS, board)
    for name, array in final.items():
        assert np.array_equal(again._params[name], array), f"{name}: not run 1's model"
    assert "begins again from the newest committed checkpoint of an earlier run" in caplog.text
    assert f"run {RUN_A[:12]}, round 1, counter 2" in caplog.text
    assert "INITIAL" not in caplog.text


def test_a_reset_of_a_new_run_without_start_from_previous_starts_from_the_initial_model(
    fed: Federation, tmp_path: Path, board: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    directory, ledger = tmp_path / "checkpoints", MemoryLedger()
    settings = {"rounds": 2}
    final = _run_2_loses_its_first_commit(fed, directory, ledger, settings, board[1])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = _reset(fed, directory, ledger, settings, board)
    initial = _initial(fed)
    assert all(np.array_equal(again._params[n], initial[n]) for n in initial)
    assert not all(np.array_equal(again._params[n], final[n]) for n in final)
    assert "starts from the initial model" in caplog.text
    assert "earlier run" not in caplog.text


def test_a_reset_that_finds_no_earlier_run_left_starts_from_the_initial_model_and_warns(
    fed: Federation, tmp_path: Path, board: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Run 1's files are gone too. The board's reset is its decision to go on after the
    loss, and nothing else would ever be found: the run begins again from the initial
    model (which the host cannot choose), and the operator is told so at once."""
    directory, ledger = tmp_path / "checkpoints", MemoryLedger()
    _run_2_loses_its_first_commit(fed, directory, ledger, PREVIOUS, board[1])
    for _, _, path in list_checkpoints(directory):
        assert policy_of(path) == RUN_A
        path.unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = _reset(fed, directory, ledger, PREVIOUS, board)
    initial = _initial(fed)
    assert all(np.array_equal(again._params[n], initial[n]) for n in initial)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "reset at counter 3" in r.getMessage()
        and "holds none of an earlier run" in r.getMessage()
        and "INITIAL model" in r.getMessage()
        and "start_from: previous" in r.getMessage()
        for r in warned
    ), caplog.text


# --- the choice alone: only what the SPM counted --------------------------------------------


def _write(directory: Path, round: int, counter: int, run: str, request: str | None,
           value: float, key: bytes = KEY) -> Path:  # fmt: skip
    return write_checkpoint(
        directory, key=key, policy_digest=run, round=round, counter=counter,
        params_bytes=to_bytes({"w": np.full(3, value, np.float32)}), state={}, request=request,
    )  # fmt: skip


def _w(checkpoint: Any) -> list[float]:
    return from_bytes(checkpoint.params_bytes)[0]["w"].tolist()  # type: ignore[no-any-return]


def test_a_reset_takes_no_earlier_file_the_spm_did_not_count(tmp_path: Path) -> None:
    """Run A committed 1 and 2 (2's file lost, a fork's loser left there), run B's first
    commit at 3 was lost, and the host planted files: another federation's (another key)
    and a leftover of run A above what the SPM counted. The reset goes on from 1."""
    ledger = MemoryLedger()
    committed = [new_request() for _ in range(3)]
    for value, request in enumerate(committed):
        ledger.increment(value, request=request)
    _write(tmp_path, 0, 1, RUN_A, committed[0], 1.0)
    _write(tmp_path, 1, 2, RUN_A, new_request(), 666.0)  # a fork's loser at 2
    _write(tmp_path, 1, 3, RUN_A, new_request(), 667.0)  # a leftover of run A at 3
    _write(tmp_path, 5, 2, "c" * 64, new_request(), 668.0, key=b"x" * 32)  # not ours
    _write(tmp_path, 9, 4, RUN_A, new_request(), 669.0)  # above the SPM's counter
    commit = Commit(ledger, directory=tmp_path, key=KEY, policy_digest=RUN_B)
    point = commit.resume(reset_from=3, previous=True)
    assert point.checkpoint is None and point.previous is not None
    assert point.previous.request == committed[0] and _w(point.previous) == [1.0] * 3
    # without start_from: previous, nothing of run A is looked at
    assert commit.resume(reset_from=3).previous is None
    # a file of run B itself the SPM counted is resumed, whatever the setting
    _write(tmp_path, 0, 3, RUN_B, committed[2], 3.0)
    point = commit.resume(reset_from=3, previous=True)
    assert point.checkpoint is not None and _w(point.checkpoint) == [3.0] * 3


def test_an_earlier_runs_counted_file_that_does_not_open_is_refused(tmp_path: Path) -> None:
    """The file the SPM counted does not open (torn, or sealed with another key): an
    error that says what to do, never a reason to go on from an older one."""
    ledger = MemoryLedger()
    committed = [new_request() for _ in range(3)]
    for value, request in enumerate(committed):
        ledger.increment(value, request=request)
    _write(tmp_path, 0, 1, RUN_A, committed[0], 1.0)
    torn = _write(tmp_path, 1, 2, RUN_A, committed[1], 2.0)
    torn.write_bytes(torn.read_bytes()[:-7])
    commit = Commit(ledger, directory=tmp_path, key=KEY, policy_digest=RUN_B)
    with pytest.raises(FlError, match=r"^integrity: .*newest checkpoint of an earlier run the "
                       r"SPM counted.*restore it, or set it aside"):  # fmt: skip
        commit.resume(reset_from=3, previous=True)
    torn.unlink()  # set aside: the reset goes on from the one before it
    point = commit.resume(reset_from=3, previous=True)
    assert point.previous is not None and _w(point.previous) == [1.0] * 3
