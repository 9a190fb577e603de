"""Runs and resets in one process: a new policy version is a new run (no reset), a
run resumes only from the checkpoint its counter names, a used reset never blocks,
a collaborator waits for a late aggregator, and repeated log lines are held back.

Federations here are real gRPC over mutual TLS on loopback with real training; the
same paths as separate processes under `secfl run` are in ``test_runs_e2e``.
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfl._internal.logfilter import RepeatFilter
from secfl.errors import FlError
from secfl.fl._aggregator import Aggregator, Signer
from secfl.fl._checkpoint import write_checkpoint
from secfl.fl._checkpoint_dir import list_checkpoints
from secfl.fl._collaborator import ModelGate
from secfl.fl._commit import Commit, MemoryLedger
from secfl.fl._config import FederationConfig
from secfl.fl._reset import pending_reset, reset_statement, sign_reset
from secfl.fl._runs import find_resume_point
from secfl.fl._tensors import state_dict_arrays, to_bytes
from secfl.policy import load_policy
from secfl.policy._canonical import digest
from secfl.tasks._registry import get_task
from secfl.tasks._split import split
from tests.fl.fedkit import Background, Federation, site, wait_for
from tests.policy import member_keys, policy_dict, to_yaml

KEY = b"k" * 32
RUN_A = "a" * 64
RUN_B = "b" * 64
QUICK = {"heartbeat": 0.2, "dead_after": 1.0, "round_timeout": 30, "join_timeout": 30}
HINT = r"sign-reset --policy POLICY\.yaml --value {} --key KEY --member NAME -o .*reset\.json"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    report = split("digits", 3, seed=2, out=tmp_path_factory.mktemp("shards"))
    return Federation(get_task("digits"), report)


def aggregator(
    fed: Federation, settings: dict[str, Any], *, run: str, ledger: MemoryLedger, directory: Path
) -> Aggregator:
    """An aggregator of the run ``run`` (a policy digest), listening on loopback."""
    agg = Aggregator(
        fed.task,
        FederationConfig.parse({**QUICK, "min_clients": 3, **settings}),
        fed.server([site(i) for i in range(3)]),
        Signer(run, fed.key),
        Commit(ledger, directory=directory, key=KEY, policy_digest=run),
        validation=fed.validation(),
    )
    agg.start()
    return agg


def gates(fed: Federation, run: str) -> list[ModelGate]:
    return [ModelGate(fed.key.public_key(), run) for _ in range(3)]


def write(directory: Path, round: int, counter: int, run: str, key: bytes = KEY) -> Path:
    return write_checkpoint(
        directory, key=key, policy_digest=run, round=round, counter=counter,
        params_bytes=to_bytes({"w": np.full(3, float(round), np.float32)}), state={},
    )  # fmt: skip


# --- a new policy version is a new run ----------------------------------------------------


def test_a_new_policy_version_starts_a_new_run_without_a_reset(
    fed: Federation, tmp_path: Path
) -> None:
    directory, ledger = tmp_path / "checkpoints", MemoryLedger()
    first = aggregator(fed, {"rounds": 2}, run=RUN_A, ledger=ledger, directory=directory)
    final = fed.run(first, range(3), gates=gates(fed, RUN_A))
    assert ledger.value == 3  # the initial model, then rounds 1 and 2

    # version 2 changes a setting: a run of its own, from the initial model
    second = aggregator(fed, {"rounds": 3}, run=RUN_B, ledger=ledger, directory=directory)
    assert second._start == 1 and ledger.value == 4  # its round 0 committed at once
    initial = state_dict_arrays(fed.task.build_model(0))
    assert all(np.array_equal(second._params[n], initial[n]) for n in initial)
    assert not all(np.array_equal(second._params[n], final[n]) for n in final)
    fed.run(second, range(3), gates=gates(fed, RUN_B))
    assert [(e["round"], e["counter"]) for e in second.history] == [(1, 5), (2, 6), (3, 7)]

    # a restart of version 2 goes on with its own run, never the first one's
    again = aggregator(fed, {"rounds": 3}, run=RUN_B, ledger=ledger, directory=directory)
    assert again._start == 4 and again.sealed == (3, 7)
    again.server.stop(None)
    assert "run 1" in again.resume_hint() and "the run is complete" in again.resume_hint()


def test_start_from_previous_continues_from_the_last_run_s_model(
    fed: Federation, tmp_path: Path
) -> None:
    directory, ledger = tmp_path / "checkpoints", MemoryLedger()
    first = aggregator(fed, {"rounds": 1}, run=RUN_A, ledger=ledger, directory=directory)
    final = fed.run(first, range(3), gates=gates(fed, RUN_A))
    settings = {"rounds": 1, "start_from": "previous"}
    second = aggregator(fed, settings, run=RUN_B, ledger=ledger, directory=directory)
    second.server.stop(None)
    assert second._start == 1
    for name, array in final.items():
        assert np.array_equal(second._params[name], array), name


# --- resuming within a run ----------------------------------------------------------------


def test_a_replayed_older_checkpoint_of_the_same_run_is_refused(tmp_path: Path) -> None:
    write(tmp_path, 1, 2, RUN_A)
    newest = write(tmp_path, 2, 3, RUN_A)
    found = find_resume_point(tmp_path, key=KEY, run=RUN_A, counter=3).checkpoint
    assert found is not None and found.round == 2
    newest.unlink()  # the host withholds the newest: the older one is a rollback
    with pytest.raises(FlError, match=r"^rollback: the newest checkpoint .* has counter 2, the "
                       r"SPM's counter is 3: .*" + HINT.format(3)) as info:  # fmt: skip
        find_resume_point(tmp_path, key=KEY, run=RUN_A, counter=3)
    assert "\n" not in str(info.value)
    # nor can the older one pose as another run's newest to start this run over
    write(tmp_path, 7, 3, RUN_B)
    with pytest.raises(FlError, match=r"^rollback: .* of another run, yet this run has older"):
        find_resume_point(tmp_path, key=KEY, run=RUN_A, counter=3)


def test_another_run_s_checkpoint_must_open_before_a_new_run_starts(tmp_path: Path) -> None:
    write(tmp_path, 4, 5, RUN_A, key=b"x" * 32)  # not sealed with this policy's key
    with pytest.raises(FlError, match=r"^integrity: .* does not open.*" + HINT.format(5)):
        find_resume_point(tmp_path, key=KEY, run=RUN_B, counter=5)
    write(tmp_path, 4, 5, RUN_A)
    point = find_resume_point(tmp_path, key=KEY, run=RUN_B, counter=5)
    assert point.new_run and point.previous is not None and point.previous.round == 4
    assert find_resume_point(tmp_path / "none", key=KEY, run=RUN_B, counter=0).new_run
    with pytest.raises(FlError, match=r"^rollback: no checkpoint in .*counter is 5: "):
        find_resume_point(tmp_path / "none", key=KEY, run=RUN_B, counter=5)


def test_uncommitted_checkpoints_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, 3, 4, RUN_A)
    write(tmp_path, 4, 5, RUN_A)  # written, then the aggregator died before the increment
    point = find_resume_point(tmp_path, key=KEY, run=RUN_A, counter=4)
    assert point.checkpoint is not None and point.checkpoint.round == 3


# --- resets are used up -------------------------------------------------------------------


@pytest.fixture(scope="module")
def board() -> tuple[Any, str]:
    policy = load_policy(to_yaml(policy_dict()))
    return policy, digest(policy)


def signed_reset(path: Path, policy: Any, pdigest: str, value: int) -> Path:
    statement = reset_statement(policy.name, pdigest, "round", value, "lost")
    for member in ("alice", "carol"):
        sign_reset(path, statement, member_keys()[member][0], member)
    return path


def test_an_applied_reset_is_used_up_and_never_blocks_a_start(
    fed: Federation, tmp_path: Path, board: tuple[Any, str]
) -> None:
    policy, pdigest = board
    directory, ledger = tmp_path / "checkpoints", MemoryLedger()
    first = aggregator(fed, {"rounds": 2}, run=pdigest, ledger=ledger, directory=directory)
    fed.run(first, range(3), gates=gates(fed, pdigest))
    list_checkpoints(directory)[0][2].unlink()  # the newest is lost: refused
    with pytest.raises(FlError, match=r"^rollback: .*" + HINT.format(3)):
        aggregator(fed, {"rounds": 2}, run=pdigest, ledger=ledger, directory=directory)

    path = signed_reset(directory / "reset.json", policy, pdigest, 3)
    reset = pending_reset(path, policy, pdigest, "round", ledger.current())
    assert reset is not None and reset.value == 3
    resumed = Aggregator(
        fed.task, FederationConfig.parse({**QUICK, "rounds": 2}), fed.server([]),
        Signer(pdigest, fed.key), Commit(ledger, directory=directory, key=KEY,
                                         policy_digest=pdigest), reset=reset,
    )  # fmt: skip
    resumed.start()
    resumed.server.stop(None)
    assert resumed._start == 2 and ledger.value == 4  # round 1 again, committed at 4
    used = directory / "reset-used-c3.json"
    assert used.exists() and not path.exists()  # used up: set aside

    # the operator puts it back (or the host does): it can never apply again
    shutil.copy(used, path)
    assert pending_reset(path, policy, pdigest, "round", ledger.current()) is None
    assert not path.exists()
    again = aggregator(fed, {"rounds": 2}, run=pdigest, ledger=ledger, directory=directory)
    again.server.stop(None)
    assert again._start == 2


def test_a_reset_ahead_of_the_counter_says_which_value_to_sign(
    tmp_path: Path, board: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    policy, pdigest = board
    path = signed_reset(tmp_path / "reset.json", policy, pdigest, 9)
    with pytest.raises(FlError, match=r"^reset: .* at counter 9, the SPM's counter is 7: have "
                       r"the board sign a new reset with --value 7$"):  # fmt: skip
        pending_reset(path, policy, pdigest, "round", 7)
    # another version's (found by a walk through the docs: signed with an old policy.yaml,
    # it was set aside as "used" with no word of which version to sign)
    with caplog.at_level("WARNING", logger="secfl.fl"):
        assert pending_reset(path, policy, "c" * 64, "round", 7) is None
    assert (tmp_path / "reset-other-c9.json").exists()
    assert f"not this run's version {policy.version} (digest cccccccccccccccc...)" in caplog.text
    assert f"sign the reset again with version {policy.version}'s policy file" in caplog.text
    forged = tmp_path / "forged.json"
    forged.write_text((tmp_path / "reset-other-c9.json").read_text().replace('"lost"', '"x"'))
    with pytest.raises(FlError, match=r"^reset: .*signature.*; collect the signatures"):
        pending_reset(forged, policy, pdigest, "round", 9)


# --- collaborators wait for the aggregator ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_collaborator_started_first_joins_soon_after_the_aggregator_is_up(
    fed: Federation, tmp_path: Path
) -> None:
    port = free_port()
    collab = fed.collaborator(port, 0)
    collab.patience = FederationConfig().join_patience  # the policy's default: an hour
    thread = Background(collab.run, "early")
    thread.start()
    time.sleep(6.0)  # long enough for gRPC's own reconnect backoff to grow past 4 s
    assert thread.is_alive()
    agg = Aggregator(
        fed.task, FederationConfig.parse({**QUICK, "rounds": 1, "min_clients": 1}),
        fed.server([site(0)]), Signer("d" * 64, fed.key),
        Commit(MemoryLedger(), directory=None, key=None, policy_digest="d" * 64),
    )  # fmt: skip
    agg.start(f"127.0.0.1:{port}")
    up = time.monotonic()
    try:
        wait_for(lambda: site(0) in agg.rounds.participants, "the early collaborator", 10)
        assert time.monotonic() - up < 3.0
    finally:
        collab.patience = 0.0  # it gives up at once once the aggregator is gone
        agg.rounds.finish(timeout=0)
        agg.server.stop(None)
        thread.join(60)  # (10 s was too short on a loaded CI machine)
    assert not thread.is_alive()


# --- repeated log lines -------------------------------------------------------------------


def test_repeated_lines_are_shown_once_per_interval_with_a_count() -> None:
    now = [0.0]
    shown: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: shown.append(record.getMessage())  # type: ignore[method-assign]
    handler.addFilter(RepeatFilter(30, clock=lambda: now[0], capacity=2))
    log = logging.getLogger("secfl.test-repeat")
    log.addHandler(handler)
    log.propagate, level = False, log.level
    log.setLevel(logging.INFO)
    try:
        for _ in range(187):  # one every second: 3 minutes of "has not joined"
            log.warning("refused a request: protocol: '%s' has not joined", "site-1")
            log.info("another line")
            now[0] += 1.0
        log.warning("something else")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    joined = [s for s in shown if "has not joined" in s]
    assert len(joined) == 7  # at 0, 30, ..., 180 s
    assert joined[0] == "refused a request: protocol: 'site-1' has not joined"
    assert joined[1].endswith("has not joined (repeated 29 times since it was last shown)")
    assert len([s for s in shown if s.startswith("another line")]) == 7
    assert shown[-1] == "something else"


def test_an_aggregator_that_finds_the_counter_moved_stops_without_burning_a_value(
    tmp_path: Path,
) -> None:
    """The old version's aggregator, still running when the new one began: it stops,
    and the new run's checkpoint stays the newest committed state."""
    ledger = MemoryLedger(4)
    old = Commit(ledger, directory=tmp_path, key=KEY, policy_digest=RUN_A)
    write(tmp_path, 3, 4, RUN_A)
    assert old.resume().checkpoint is not None
    new = Commit(ledger, directory=tmp_path, key=KEY, policy_digest=RUN_B)
    assert new.resume().new_run
    new.commit(0, to_bytes({"w": np.zeros(3, np.float32)}), {})
    moved = r"^counter: the SPM's counter is 5, this aggregator committed 4 last: .* round 4 "
    with pytest.raises(FlError, match=moved + r"is not committed; stop the other"):
        old.commit(4, to_bytes({"w": np.ones(3, np.float32)}), {})
    assert ledger.value == 5  # not burnt: the new run resumes where it was
    value, request = ledger.committed()  # the old one's checkpoint at 5 was never committed
    point = find_resume_point(tmp_path, key=KEY, run=RUN_B, counter=value, request=request)
    assert point.checkpoint is not None and point.checkpoint.round == 0
