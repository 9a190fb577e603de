"""The round's own path: models kept across rounds, the phases each round records,
and the commit overlapped with the next round's start (with the order it keeps).

1. :class:`ModelSlot` trains bit for bit what a fresh model trains, puts back what
   lives outside the ``state_dict``, and builds afresh when the weights do not fit.
2. A federation builds its models once, and every round records its phases.
3. An overlapped commit: the next round's model goes out while the counter is being
   incremented, but the round is recorded only once the counter answered; a counter
   that answers wrong closes the round its models went out for; a crash in the
   middle of an overlapped commit leaves what a sequential one leaves (a real
   process, killed between the checkpoint and the increment).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from secfl.errors import FlError, TransportError
from secfl.fl import _pending
from secfl.fl._checkpoint_format import header_of
from secfl.fl._commit import Commit, MemoryLedger
from secfl.fl._model_slot import ModelSlot
from secfl.fl._tensors import load_arrays, state_dict_arrays, to_bytes
from secfl.tasks import get_task
from secfl.tasks._split import split

from .fedkit import LIMIT, Background, Federation, RawClient, site, wait_for

QUICK = {"heartbeat": 0.5, "dead_after": 5.0, "round_timeout": 30, "join_timeout": 30}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    report = split("digits", 3, seed=1, out=tmp_path_factory.mktemp("shards"))
    return Federation(get_task("digits"), report)


# --- 1. the model slot ---------------------------------------------------------------------


def test_a_kept_model_trains_what_a_fresh_one_trains(fed: Federation) -> None:
    task, data = fed.task, fed.data(0).subset(list(range(64)))
    params = state_dict_arrays(task.build_model(5))
    slot = ModelSlot(task)
    for round in range(3):
        fresh = task.build_model()
        load_arrays(fresh, params)
        task.train(fresh, data, {"epochs": 1, "seed": round})
        kept = slot.load(params)
        task.train(kept, data, {"epochs": 1, "seed": round})
        mine, theirs = state_dict_arrays(kept), state_dict_arrays(fresh)
        assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)
        params = theirs
    assert slot.builds == 1


def test_the_slot_puts_back_what_lives_outside_the_state_dict(fed: Federation) -> None:
    slot = ModelSlot(fed.task)
    params = state_dict_arrays(fed.task.build_model(1))
    model = slot.load(params)
    model.eval()
    first = next(model.parameters())
    first.requires_grad_(False)
    first.grad = torch.ones_like(first)
    again = slot.load(params)
    assert again is model and slot.builds == 1
    assert all(m.training for m in again.modules())
    assert all(p.requires_grad and p.grad is None for p in again.parameters())


class Resizable:
    """A task whose model's width can change (as a new task version's would)."""

    name = "resizable"

    def __init__(self) -> None:
        self.width = 3

    def build_model(self, seed: int | None = None) -> nn.Module:
        torch.manual_seed(seed or 0)
        return nn.Linear(2, self.width)


def test_weights_of_another_shape_get_a_fresh_model() -> None:
    task = Resizable()
    slot = ModelSlot(task)
    small = slot.load(state_dict_arrays(task.build_model()))
    task.width = 5
    wide = state_dict_arrays(task.build_model(2))
    model = slot.load(wide)
    assert model is not small and slot.builds == 2
    assert np.array_equal(state_dict_arrays(model)["weight"], wide["weight"])
    task.width = 4  # fits neither the kept model nor a fresh one: refused as before
    with pytest.raises(FlError, match="shape"):
        slot.load(state_dict_arrays(nn.Linear(2, 6)))


def test_a_model_train_changed_is_built_again() -> None:
    task = Resizable()
    slot = ModelSlot(task)
    params = state_dict_arrays(task.build_model())
    model = slot.load(params)
    model.extra = nn.Identity()  # a module added (no tensors: the weights still fit)
    assert slot.load(params) is not model and slot.builds == 2


# --- 2. a federation: models built once, phases recorded -----------------------------------

PHASES = {"start", "dispatch", "train", "upload", "fold", "collect", "aggregate", "evaluate",
          "checkpoint", "counter", "fsync", "commit", "commit_wait"}  # fmt: skip


class SlowLedger:
    """A counter outside this process (not a MemoryLedger: commits overlap); each
    increment can be held until the test releases it, or answer a wrong value."""

    def __init__(self) -> None:
        self.value = 0
        self.hold: dict[int, threading.Event] = {}
        self.held = threading.Event()
        self.answer: dict[int, int] = {}
        self.request: str | None = None

    def current(self) -> int:
        return self.value

    def committed(self) -> tuple[int, str | None]:
        return self.value, self.request

    def increment(self, expect: int | None = None, *, request: str | None = None) -> int:
        assert expect is None or expect == self.value
        target = self.value + 1
        if target in self.hold:
            self.held.set()
            assert self.hold[target].wait(LIMIT)
        self.value = self.answer.get(target, target)
        self.request = request
        return self.value


def test_models_are_built_once_and_every_round_records_its_phases(
    fed: Federation, tmp_path: Path
) -> None:
    agg = fed.aggregator(
        {"rounds": 3, "min_clients": 2, "train": {"epochs": 1}, **QUICK},
        ledger=SlowLedger(), directory=tmp_path,
    )  # fmt: skip
    collaborators = [fed.collaborator(agg.port, i) for i in range(2)]
    threads = [Background(c.run, f"c{i}") for i, c in enumerate(collaborators)]
    for thread in threads:
        thread.start()
    try:
        agg.run()
        for thread in threads:
            thread.outcome()
    finally:
        agg.rounds.finish()
        agg.server.stop(None)
    assert [e["round"] for e in agg.history] == [1, 2, 3]
    assert [e["counter"] for e in agg.history] == [2, 3, 4]
    for entry in agg.history:
        assert set(entry["phases_ms"]) == PHASES
        assert all(v >= 0 for v in entry["phases_ms"].values())
    assert agg._scorer.builds == 1
    assert [c._slot.builds for c in collaborators] == [1, 1]


# --- 3. the commit overlapped with the next round ------------------------------------------


def run_in_background(fed: Federation, agg: Any, names: list[str]) -> tuple[Background, dict]:
    """The aggregator running; hand-driven collaborators ``names`` joined."""
    raws = {name: RawClient(fed, agg.port, name) for name in names}
    for raw in raws.values():
        raw.join()
    runner = Background(agg.run, "aggregator")
    runner.start()
    return runner, raws


def train_round(raws: dict[str, RawClient]) -> list[Any]:
    """Each collaborator takes the round's model and sends it back; the envelopes."""
    envelopes = []
    for raw in raws.values():
        header, params, envelope = raw.train()
        assert raw.submit(header["round"], header["attempt"], to_bytes(params))["kind"] == (
            "accepted"
        )
        envelopes.append(envelope)
    return envelopes


def test_the_next_model_goes_out_before_the_counter_answers_and_the_round_waits_for_it(
    fed: Federation,
) -> None:
    ledger = SlowLedger()
    ledger.hold[2] = threading.Event()  # round 1's increment (round 0 committed at start)
    agg = fed.aggregator({"rounds": 2, "min_clients": 2, **QUICK}, ledger=ledger)
    runner, raws = run_in_background(fed, agg, [site(0), site(1)])
    try:
        train_round(raws)
        assert ledger.held.wait(LIMIT)
        # round 2's models reach both collaborators while round 1's increment is held
        models = [raw.train() for raw in raws.values()]
        assert [(e.round, e.counter) for _, _, e in models] == [(1, 2), (1, 2)]
        assert ledger.value == 1 and agg.history == [] and agg.sealed == (0, 1)
        ledger.hold[2].set()
        wait_for(lambda: len(agg.history) == 1, "round 1 recorded")
        assert agg.history[0]["counter"] == 2 and agg.sealed == (1, 2)
        for raw, (header, params, _) in zip(raws.values(), models, strict=True):
            raw.submit(header["round"], header["attempt"], to_bytes(params))
        assert [raw.next()[0]["kind"] for raw in raws.values()] == ["done", "done"]
        runner.outcome()
    finally:
        agg.rounds.finish()
        agg.server.stop(None)
    assert [(e["round"], e["counter"]) for e in agg.history] == [(1, 2), (2, 3)]
    # done: the commit's threads end (a process making many aggregators keeps none)
    workers = (agg.commit._worker, agg.commit._syncer)
    wait_for(lambda: all(w._thread is None for w in workers), "the commit's threads ended")


def test_a_rounds_evaluation_waits_for_the_next_rounds_models(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1's evaluation (and so its commit) starts once round 2's models are out,
    and its scores are in the round's record: held, it does not hold the models back."""
    monkeypatch.setattr(_pending, "DISPATCH_GRACE", LIMIT)  # only the models release it
    agg = fed.aggregator({"rounds": 2, "min_clients": 2, **QUICK}, ledger=SlowLedger())
    release, scored = threading.Event(), []
    score = agg._score

    def held_score(round: int, params: Any, entry: dict[str, Any]) -> None:
        attempt = agg.rounds.attempt
        scored.append((round, None if attempt is None else sorted(attempt.sent)))
        if round == 1:
            assert release.wait(LIMIT)
        score(round, params, entry)

    monkeypatch.setattr(agg, "_score", held_score)
    runner, raws = run_in_background(fed, agg, [site(0), site(1)])
    try:
        train_round(raws)
        # round 2's models reach both collaborators while round 1's evaluation is held
        models = [raw.train() for raw in raws.values()]
        assert [header["round"] for header, _, _ in models] == [2, 2]
        wait_for(lambda: scored, "round 1's evaluation")
        assert agg.history == []  # not recorded before its scores
        release.set()
        wait_for(lambda: len(agg.history) == 1, "round 1 recorded")
        assert "val_loss" in agg.history[0] and agg.history[0]["counter"] == 2
        for raw, (header, params, _) in zip(raws.values(), models, strict=True):
            raw.submit(header["round"], header["attempt"], to_bytes(params))
        assert [raw.next()[0]["kind"] for raw in raws.values()] == ["done", "done"]
        runner.outcome()
    finally:
        release.set()
        agg.rounds.finish()
        agg.server.stop(None)
    assert scored == [(1, [site(0), site(1)]), (2, None)]
    assert all("val_loss" in e and "evaluate" in e["phases_ms"] for e in agg.history)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "in-place"])
def test_an_evaluation_that_fails_stops_the_run_and_records_nothing_of_its_round(
    fed: Federation,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    overlap: bool,
) -> None:
    """A failing evaluation (in the commit's thread, or in its own call without
    overlap) stops the run with its own error, before the round's checkpoint or
    counter; no round is left waiting to be recorded on the way out (without overlap
    one was: a spurious warning, and under ``python -O`` a record with no counter)."""
    ledger = SlowLedger() if overlap else MemoryLedger()
    agg = fed.aggregator({"rounds": 3, "min_clients": 2, **QUICK}, ledger=ledger)
    assert agg.commit.overlap is overlap

    def broken(round: int, params: Any, entry: dict[str, Any]) -> None:
        raise FlError("evaluate: the task's evaluate failed")

    monkeypatch.setattr(agg, "_score", broken)
    runner, raws = run_in_background(fed, agg, [site(0), site(1)])
    try:
        with caplog.at_level(logging.WARNING, logger="secfl.fl._aggregator"):
            train_round(raws)
            with pytest.raises(FlError, match=r"evaluate: the task's evaluate failed"):
                runner.outcome()
        assert agg.history == [] and agg.sealed == (0, 1) and ledger.current() == 1
        assert not [r for r in caplog.records if "not committed" in r.getMessage()]
    finally:
        agg.rounds.finish(timeout=0)
        agg.server.stop(None)
        for raw in raws.values():
            raw.close()


def test_a_counter_that_answers_wrong_closes_the_round_its_model_went_out_for(
    fed: Federation,
) -> None:
    ledger = SlowLedger()
    ledger.hold[2] = threading.Event()
    ledger.answer[2] = 7  # another aggregator of the policy moved the counter meanwhile
    agg = fed.aggregator({"rounds": 3, "min_clients": 2, **QUICK}, ledger=ledger)
    runner, raws = run_in_background(fed, agg, [site(0), site(1)])
    try:
        train_round(raws)
        assert ledger.held.wait(LIMIT)
        models = [raw.train() for raw in raws.values()]
        ledger.hold[2].set()
        with pytest.raises(FlError, match=r"counter: the SPM answered 7, expected 2"):
            runner.outcome()
        assert agg.history == [] and agg.sealed == (0, 1)  # round 1 never recorded
        header, params, _ = models[0]
        with pytest.raises(TransportError, match=r"protocol: no open round 2 attempt 1"):
            raws[site(0)].submit(header["round"], header["attempt"], to_bytes(params))
    finally:
        agg.rounds.finish(timeout=0)
        agg.server.stop(None)
        for raw in raws.values():
            raw.close()


CRASH = textwrap.dedent(
    """
    import os, sys, threading
    from pathlib import Path
    import numpy as np
    from secfl.fl._commit import Commit, MemoryLedger
    from secfl.fl._tensors import to_bytes

    printed = threading.Event()  # the commit thread may reach the increment first

    class Crashing(MemoryLedger):
        def increment(self, expect=None, *, request=None):
            if self.value == 1:
                printed.wait(30)
                os._exit(3)  # killed between round 1's checkpoint and its increment
            return super().increment(expect, request=request)

    commit = Commit(Crashing(), directory=Path(sys.argv[1]), key=b"k" * 32,
                    policy_digest="d" * 64, overlap=True)
    commit.resume()
    model = lambda v: to_bytes({"w": np.full(3, v, dtype=np.float32)})
    commit.commit(0, model(0), {})
    commit.begin(1, model(1), {})
    print("promised", commit.promised, flush=True)
    printed.set()
    commit.settle()
    """
)


def test_a_crash_inside_an_overlapped_commit_leaves_what_a_sequential_one_leaves(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CRASH, str(tmp_path)], capture_output=True, text=True,
        timeout=LIMIT,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == ["promised", "2"]
    # the checkpoint was durable before the increment was tried...
    names = sorted(p.name[:32] for p in tmp_path.glob("checkpoint-*"))  # then -REQUEST.secfl
    assert names == ["checkpoint-r00000000-c0000000001", "checkpoint-r00000001-c0000000002"]
    # ...and, never committed, it is skipped: the run resumes after round 0
    first = next(tmp_path.glob("checkpoint-r00000000-c0000000001-*"))
    committed = header_of(first)  # the SPM, at 1, names the increment that took it there
    assert committed is not None
    restarted = Commit(MemoryLedger(1, committed["request"]), directory=tmp_path, key=b"k" * 32,
                       policy_digest="d" * 64)  # fmt: skip
    point = restarted.resume()
    assert point.checkpoint is not None and point.checkpoint.round == 0
    assert restarted.counter == 1


def test_without_overlap_the_commit_happens_in_place() -> None:
    commit = Commit(MemoryLedger(), directory=None, key=None, policy_digest="d" * 64)
    assert commit.overlap is False
    commit.begin(1, b"", {})
    assert commit.counter == 1 and commit.promised == 1
    assert commit.settle() == 1 and commit.settle() is None


def test_envelopes_name_the_promised_counter(fed: Federation) -> None:
    ledger = SlowLedger()
    agg = fed.aggregator({"rounds": 2, "min_clients": 1, **QUICK}, ledger=ledger)
    runner, raws = run_in_background(fed, agg, [site(2)])
    try:
        seen = [train_round(raws)[0] for _ in range(2)]
        assert raws[site(2)].next()[0]["kind"] == "done"
        runner.outcome()
    finally:
        agg.rounds.finish()
        agg.server.stop(None)
    assert [(e.round, e.counter) for e in seen] == [(0, 1), (1, 2)]


def test_a_ctrl_c_while_waiting_for_the_commit_leaves_it_to_be_waited_for_again(
    tmp_path: Path,
) -> None:
    """Ctrl-C lands while the round loop waits for an overlapped commit: the commit goes
    on, and the next wait (the aggregator's way out) gets its counter, so the round is
    recorded before the process stops. (Waiting with Thread.join, a join cut short by
    KeyboardInterrupt could later return at once while the commit still ran: the round
    was committed but never recorded, and its metrics line was lost.)"""
    ledger = SlowLedger()
    ledger.hold[1] = threading.Event()
    commit = Commit(ledger, directory=tmp_path, key=b"k" * 32, policy_digest="d" * 64)
    assert commit.overlap
    commit.begin(1, b"model", {})
    assert ledger.held.wait(LIMIT)
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            commit.settle()  # interrupted while the increment is held
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    threading.Timer(0.3, ledger.hold[1].set).start()
    assert commit.settle() == 1  # waits for the commit, then answers its counter
    assert commit.counter == 1


def test_the_round_hook_runs_beside_the_rounds_and_all_its_calls_end_before_run_returns(
    fed: Federation, tmp_path: Path
) -> None:
    """The committed round's hook (the SPM's round event in production) is not on the
    round loop's path: while the hook still holds round 1, rounds 2 and 3 are trained
    and recorded; every round's call is made, in order, before ``run`` returns. (Called
    in the round loop, a hook that blocks holds every later round: round 2 is never
    recorded while round 1's hook waits.)"""
    agg = fed.aggregator(
        {"rounds": 3, "min_clients": 2, "train": {"epochs": 1}, **QUICK},
        ledger=SlowLedger(), directory=tmp_path,
    )  # fmt: skip
    release = threading.Event()
    calls: list[int] = []
    saw_all_recorded: list[bool] = []

    def hook(entry: dict[str, Any]) -> None:
        if entry["round"] == 1:
            release.wait(LIMIT)
        calls.append(entry["round"])

    def watch() -> None:
        try:
            wait_for(lambda: len(agg.history) == 3, "rounds 2 and 3 recorded")
            saw_all_recorded.append(True)
        except AssertionError:
            saw_all_recorded.append(False)
        release.set()

    agg.on_round = hook
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = [Background(fed.collaborator(agg.port, i).run, f"c{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        agg.run()
        for thread in threads:
            thread.outcome()
    finally:
        release.set()
        agg.rounds.finish()
        agg.server.stop(None)
    watcher.join(LIMIT)
    assert saw_all_recorded == [True]  # rounds 2 and 3 recorded while round 1's hook held
    assert calls == [1, 2, 3]  # each round's hook, in order, all made before run returned
