"""Ctrl-C never separates a committed round from its record.

A real aggregator process, under the workload's SIGINT handler
(:func:`secfl._internal.interrupts.interrupt_once`), gets a real SIGINT at the worst
moment: just after round ``K``'s counter committed and before the round was written to
the metrics. A restart resumes after the newest sealed round, so that round must be in
the metrics, or the record of the run lacks it for good (it happened: the owner's
walkthrough lost round 3 of 30 once). The rules of :func:`held` are checked in a real
process too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

COMMON = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path
    from secfl._internal.interrupts import interrupt_once
    from secfl.fl._commit import Commit
    from secfl.tasks import get_task
    from secfl.tasks._split import split
    from tests.fl.fedkit import DIGEST, Background, Federation

    class Ledger:  # a counter outside the process: commits overlap the next round
        value = 0
        request = None
        def current(self):
            return self.value
        def committed(self):
            return self.value, self.request
        def increment(self, expect=None, *, request=None):
            self.value += 1
            self.request = request
            return self.value

    def aggregator(folder, rounds, commit=Commit):
        fed = Federation(get_task("digits"), split("digits", 2, seed=1, out=folder / "shards"))
        settings = {"rounds": rounds, "min_clients": 2, "train": {"epochs": 1},
                    "heartbeat": 0.5, "dead_after": 5.0, "round_timeout": 30,
                    "join_timeout": 30}
        agg = fed.aggregator(settings, start=False)
        agg.commit = commit(Ledger(), directory=folder / "ckpt", key=b"k" * 32,
                            policy_digest=DIGEST)
        agg.metrics_path = folder / "metrics.jsonl"
        agg.metrics_path.touch()
        return fed, agg

    def run(fed, agg, more=lambda agg: {}):
        agg.start()
        for i in range(2):
            Background(fed.collaborator(agg.port, i).run, f"site-{i}").start()
        outcome = "finished"
        with interrupt_once():
            try:
                agg.run()
            except KeyboardInterrupt:
                outcome = "interrupted"
        lines = agg.metrics_path.read_text().splitlines()
        print(json.dumps({"outcome": outcome, "sealed": agg.sealed, **more(agg),
                          "rounds": [json.loads(line)["round"] for line in lines]}), flush=True)
        os._exit(0)  # the collaborators' threads (and a hung evaluation) are left
    """
)

AGGREGATOR = COMMON + textwrap.dedent(
    """
    folder, stop_at = Path(sys.argv[1]), int(sys.argv[2])

    class Interrupted(Commit):
        # SIGINT once round `stop_at`'s counter is in, as the aggregator reads the phases
        begun = -1
        def begin(self, round, *args, **kwargs):
            self.begun = round
            return super().begin(round, *args, **kwargs)
        @property
        def phases(self):
            if self.begun == stop_at and not getattr(self, "sent", False):
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            return self._phases
        @phases.setter
        def phases(self, value):
            self._phases = value

    run(*aggregator(folder, 6, Interrupted))
    """
)


@pytest.mark.timeout(180)
def test_a_ctrl_c_just_after_a_commit_still_records_the_round(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", AGGREGATOR, str(tmp_path), "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["outcome"] == "interrupted"
    round, _ = seen["sealed"]
    assert round == 2
    assert seen["rounds"] == list(range(1, round + 1))  # the sealed round is recorded


HUNG = COMMON + textwrap.dedent(
    """
    folder, mode = Path(sys.argv[1]), sys.argv[2]
    from secfl.fl import _pending
    _pending.STOP_GRACE = 2.0
    fed, agg = aggregator(folder, 4)
    score = agg._score

    def evaluate(round, params, entry):  # Ctrl-C during round 1's evaluation, which...
        if mode == "elsewhere":  # taken by this thread (the kernel may give it to any)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        else:
            os.kill(os.getpid(), signal.SIGINT)
        if mode != "slow":
            threading.Event().wait()  # ...never returns
        time.sleep(0.5)  # ...takes a while
        score(round, params, entry)

    agg._score = evaluate
    run(fed, agg, lambda agg: {
        "hint": agg.resume_hint(),
        "checkpoints": sorted(p.name for p in (folder / "ckpt").glob("checkpoint-*")),
    })
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["slow", "hung", "elsewhere"])
def test_a_ctrl_c_during_an_evaluation_commits_its_round_or_gives_it_up_after_a_grace(
    tmp_path: Path, mode: str
) -> None:
    """The round's evaluation (task code) runs before its commit, in the commit's
    thread, once the next round's models are out. A Ctrl-C there waits for it at most
    ``STOP_GRACE``: a slow one ends and its round is committed (the collaborators
    took its counter as their floor, and a restart sends them the same model); a hung
    one is given up, before its checkpoint or counter, and the aggregator stops; so
    also when the signal is taken by the evaluation's thread, which wakes no wait of
    the main thread's (the main thread waited on, without a limit, now and then)."""
    done = subprocess.run(
        [sys.executable, "-c", HUNG, str(tmp_path), mode],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["outcome"] == "interrupted"
    if mode == "slow":
        assert seen["sealed"] == [1, 2] and seen["rounds"] == [1]
        assert seen["checkpoints"][-1].startswith("checkpoint-r00000001-c0000000002-")
        assert "round 1 of 4" in seen["hint"]
    else:
        assert seen["sealed"] == [0, 1] and seen["rounds"] == []
        assert [n[:33] for n in seen["checkpoints"]] == ["checkpoint-r00000000-c0000000001-"]
        assert "round 0 of 4" in seen["hint"]
        assert "its evaluation did not end within 2 s of the stop" in done.stderr


HELD = textwrap.dedent(
    """
    import os, signal
    from secfl._internal.interrupts import held, interrupt_once

    steps = []
    with interrupt_once():
        try:
            with held():
                os.kill(os.getpid(), signal.SIGINT)
                for i in range(3):
                    steps.append(i)
            steps.append("after")  # never: the held Ctrl-C is raised as the block ends
        except KeyboardInterrupt:
            steps.append("interrupted")
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C is ignored
        steps.append("went on")
        try:
            with held():
                raise ValueError("the block's own error")
        except ValueError as exc:
            steps.append(str(exc))
    print(steps)
    """
)


def test_held_defers_a_ctrl_c_to_the_end_of_the_block_and_a_second_is_ignored() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELD], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([0, 1, 2, "interrupted", "went on", "the block's own error"])
