"""The checkpoint folder is the host's: what it plants there must not stop the
aggregator with an OSError, and a commit must not delete another federation's
checkpoints beside its own (found by a hostile review). Real aggregators and sites
over mutual TLS on loopback (fedkit), as test_runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfl.errors import FlError
from secfl.fl._checkpoint_dir import list_checkpoints
from secfl.fl._commit import MemoryLedger
from secfl.tasks._registry import get_task
from secfl.tasks._split import split
from tests.fl.fedkit import Federation
from tests.fl.test_runs import RUN_A, RUN_B, aggregator, gates

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    report = split("digits", 3, seed=2, out=tmp_path_factory.mktemp("shards"))
    return Federation(get_task("digits"), report)


@pytest.fixture(scope="module")
def board() -> tuple[Any, str]:
    from secfl.policy import load_policy
    from secfl.policy._canonical import digest
    from tests.policy import policy_dict, to_yaml

    policy = load_policy(to_yaml(policy_dict()))
    return policy, digest(policy)


def plant_link(directory: Path, counter: int = 1) -> Path:
    """A symbolic link under a checkpoint's name whose target cannot be stat'ed
    (ENAMETOOLONG): the host's disk, the host's names."""
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / f"checkpoint-r00000000-c{counter:010d}.secfl"
    os.symlink("x" * 300, link)
    return link


# --- an entry the host plants stopped the aggregator with an OSError ---------------------


def test_a_planted_link_is_passed_over_on_resume(fed: Federation, tmp_path: Path) -> None:
    directory, ledger = tmp_path / "checkpoints", MemoryLedger()
    first = aggregator(fed, {"rounds": 1}, run=RUN_A, ledger=ledger, directory=directory)
    fed.run(first, range(3), gates=gates(fed, RUN_A))
    assert ledger.value == 2
    plant_link(directory, counter=1)
    # a restart: the committed checkpoint at 2 is there, untouched (an OSError before)
    again = aggregator(fed, {"rounds": 1}, run=RUN_A, ledger=ledger, directory=directory)
    again.server.stop(None)
    assert again._start == 2


def test_a_planted_link_never_fails_a_start_after_the_counter_moved(
    fed: Federation, tmp_path: Path
) -> None:
    """A fresh federation (counter 0): the first model is committed (the counter moves),
    then the prune after it lists the folder and raises; every later start raises
    too, and a board reset cannot help (it lists the same folder)."""
    directory, ledger = tmp_path / "checkpoints", MemoryLedger()
    plant_link(directory, counter=5)  # above any value: the resume alone never lists it
    agg = aggregator(fed, {"rounds": 1}, run=RUN_A, ledger=ledger, directory=directory)
    agg.server.stop(None)  # (an OSError before, after the counter had moved to 1)
    assert ledger.value == 1


def test_a_planted_reset_link_is_a_one_line_refusal(tmp_path: Path, board: tuple[Any, str]) -> None:
    from secfl.fl._startup import AggregatorOptions, _pending_reset

    policy, pdigest = board
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    os.symlink("x" * 300, directory / "reset.json")
    opts = AggregatorOptions(task="digits", checkpoints=directory)
    with pytest.raises(FlError, match=r"^reset: cannot read .*reset\.json: File name too long; "):
        _pending_reset(opts, policy, pdigest, "round", MemoryLedger(3))  # type: ignore[arg-type]


# --- a commit pruned another federation's checkpoints -------------------------------------


def test_a_commit_never_deletes_another_federations_checkpoints(
    fed: Federation, tmp_path: Path, board: tuple[Any, str]
) -> None:
    """Two federations (two policies, two counters) whose aggregators share a checkpoint
    folder (the default ``checkpoints`` of one working folder): B trains one round
    and stops; A trains three. A's pruning deleted B's committed checkpoints: B could
    not resume, and the board's reset could only start B over from its initial model."""
    directory = tmp_path / "checkpoints"
    ledger_a, ledger_b = MemoryLedger(), MemoryLedger()
    b = aggregator(fed, {"rounds": 1}, run=RUN_B, ledger=ledger_b, directory=directory)
    trained_b = fed.run(b, range(3), gates=gates(fed, RUN_B))
    assert ledger_b.value == 2
    mine = {p.name for _, _, p in list_checkpoints(directory)}
    a = aggregator(fed, {"rounds": 3}, run=RUN_A, ledger=ledger_a, directory=directory)
    fed.run(a, range(3), gates=gates(fed, RUN_A))
    assert ledger_a.value == 4
    left = {p.name for _, _, p in list_checkpoints(directory)}
    assert mine <= left, f"A deleted B's checkpoints: {sorted(mine - left)}"
    # and B goes on from its own round 1
    again = aggregator(fed, {"rounds": 2}, run=RUN_B, ledger=ledger_b, directory=directory)
    again.server.stop(None)
    assert again._start == 2
    for name, array in trained_b.items():
        assert np.array_equal(again._params[name], array), name


def test_names_the_writer_never_makes_are_not_checkpoints() -> None:
    """The host's names with a trailing newline or non-ASCII digits (which `$` and `\\d`
    let through) are not checkpoints: a refusal listing them broke across lines."""
    from secfl.fl._checkpoint_names import checkpoint_name, parse_checkpoint_name

    genuine = checkpoint_name(1, 1, "0123456789abcdef" * 2)
    assert parse_checkpoint_name(genuine) == (1, 1)
    for planted in (
        genuine + "\n",
        genuine.replace("r00000001", "r\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0661"),
        genuine.replace("c0000000001", "c000000000\uff11"),
    ):
        assert parse_checkpoint_name(planted) is None, planted
