"""Where an aggregator starts, and what an operator who stopped it is told.

It starts from its run's newest committed checkpoint (:meth:`Commit.resume` finds
it: the one whose counter equals the SPM's), or, for a new run, from the task's
initial model (or with ``start_from: previous`` the last run's), committed as round
0 before any round trains. A board-approved reset applies to this start only; one
that finds none of the run's own checkpoints begins it again the same way, and says
so (with ``start_from: previous``, from an earlier run's newest committed checkpoint,
or, when the folder holds none, from the initial model: a warning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secfl.errors import FlError
from secfl.fl._checkpoint import Checkpoint
from secfl.fl._commit import Commit
from secfl.fl._config import FederationConfig
from secfl.fl._reset import ApprovedReset
from secfl.fl._scoring import Scoreboard
from secfl.fl._tensors import check_like, from_bytes, state_dict_arrays, to_bytes
from secfl.fl.strategies._base import Params
from secfl.tasks._base import Task
from secfl.tasks._contract import call_task

__all__ = ["Start", "resume_or_begin", "stopped_hint"]

log = logging.getLogger("secfl.fl._aggregator")


@dataclass(frozen=True)
class Start:
    """The model to train from, its first round, and what is sealed so far."""

    params: Params
    round: int
    sealed: tuple[int, int]  # (round, counter)
    used_reset: bool  # the board's reset applied (it never applies again)


def resume_or_begin(
    commit: Commit,
    task: Task,
    config: FederationConfig,
    strategy: Any,
    scores: Scoreboard,
    reset: ApprovedReset | None,
    run_label: str,
) -> Start:
    """The model and the first round to train: this run's newest committed
    checkpoint (the strategy's and the scores' state restored from it), or for a new
    run its first model, committed as round 0."""
    previous = config.start_from == "previous"
    point = commit.resume(reset_from=None if reset is None else reset.value, previous=previous)
    initial = state_dict_arrays(call_task("build_model", task.build_model, config.seed))
    checkpoint = point.checkpoint
    if checkpoint is None:
        params, whence = initial, "the initial model"
        if reset is not None and previous:
            _reset_begins_again(point.previous, reset.value, commit.directory, run_label)
        if point.previous is not None and config.start_from == "previous":
            params = _from_previous(point.previous, initial)
            whence = f"the previous run's model ({point.previous.path.name})"
        commit.commit(0, to_bytes(params), strategy.state())
        used = _use_up(reset)
        log.info("%s starts from %s, committed at counter %d",
                 run_label, whence, commit.counter)  # fmt: skip
        return Start(params, 1, (0, commit.counter), used)
    params, _ = from_bytes(checkpoint.params_bytes)
    check_like(params, initial, what="checkpoint: the model")
    strategy.load_state(scores.restore(checkpoint.state))
    used = False
    if reset is not None:
        commit.commit(checkpoint.round, checkpoint.params_bytes, checkpoint.state)
        used = _use_up(reset)
    log.info(
        "%s resumed from %s (round %d, counter %d)",
        run_label, checkpoint.path.name, checkpoint.round, commit.counter,
    )  # fmt: skip
    return Start(params, checkpoint.round + 1, (checkpoint.round, commit.counter), used)


def stopped_hint(
    sealed: tuple[int, int] | None, directory: Path | None, rounds: int, run_label: str
) -> str:
    """One line for an operator who stopped the aggregator: what is sealed, and how
    to go on."""
    if sealed is None:
        return "nothing was sealed yet: start the aggregator again with the same command"
    round, counter = sealed
    if directory is None:
        return (
            f"round {round} was the last one finished; without checkpoints a restart "
            "begins the run again"
        )
    after = (
        "the run is complete: started again, it writes the output and ends"
        if round >= rounds
        else f"start the aggregator again with the same command: it resumes with round {round + 1}"
    )
    return (
        f"round {round} of {rounds} of {run_label} is sealed in {directory} "
        f"(counter {counter}); {after}"
    )


def _from_previous(previous: Checkpoint, initial: Params) -> Params:
    params, _ = from_bytes(previous.params_bytes)
    try:
        check_like(params, initial, what="the previous run's model")
    except FlError as exc:
        raise FlError(
            f"start_from: {exc}: the task's model changed, so set federation.start_from "
            "to 'initial' in the next policy version"
        ) from None
    return params


def _reset_begins_again(
    previous: Checkpoint | None, value: int, directory: Path | None, run_label: str
) -> None:
    """What an operator is told when a reset begins the run again (none of its own
    checkpoints the SPM counted is left) under ``start_from: previous``."""
    if previous is not None:
        log.warning(
            "reset at counter %d: %s has no committed checkpoint of its own left; it begins "
            "again from the newest committed checkpoint of an earlier run (start_from: "
            "previous): %s (run %s, round %d, counter %d)",
            value, run_label, previous.path.name, previous.policy_digest[:12],
            previous.round, previous.counter,
        )  # fmt: skip
        return
    log.warning(
        "reset at counter %d: %s has no committed checkpoint of its own left, and the "
        "checkpoint folder (%s) holds none of an earlier run either: it begins again from "
        "the task's INITIAL model, not the previous run's model its policy names "
        "(start_from: previous)",
        value, run_label, directory,
    )  # fmt: skip


def _use_up(reset: ApprovedReset | None) -> bool:
    """The counter moved past the board's reset: it never applies again."""
    if reset is None:
        return False
    reset.use_up()
    return True
