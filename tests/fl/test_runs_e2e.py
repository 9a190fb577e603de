"""Runs as an operator lives them, with real processes: an SPM, and the aggregator
and two collaborators each under `secfl run` in the simulated TEE.

Collaborators started before the aggregator wait and join within seconds of it
coming up; a Ctrl-C on the aggregator says what is sealed and a restart resumes
from there (an old board reset in the folder is set aside, not a reason to
refuse); a new policy version stops the old run and starts a new one, without
any reset; and a withheld newest checkpoint is still refused as a rollback, with
the next step in the one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from secfl.demo._processes import Workload
from secfl.demo.federation import DemoSettings, Federation
from secfl.fl._checkpoint_dir import list_checkpoints
from secfl.policy import load_policy
from secfl.policy._canonical import digest
from secfl.policy._signatures import sign_policy
from secfl.spm.client import SpmClient
from tests.fl.test_e2e import exit_of, wait_for

pytestmark = pytest.mark.heavy(45)  # seconds on one worker: scheduled first

#: More rounds than version 1 can train before version 2 is approved (it stops then).
ROUNDS = 1000
STOPPED = re.compile(
    rf"stopped: round (\d+) of {ROUNDS} of run 1 \(policy version 1, [0-9a-f]{{12}}\) is sealed "
    r"in \S+checkpoints \(counter (\d+)\); start the aggregator again with the same command: "
    r"it resumes with round (\d+)"
)


def logged(w: Workload, text: str) -> Callable[[], bool]:
    return lambda: text in w.log.read_text(errors="replace")


def ctrl_c(w: Workload) -> None:
    """What a terminal does on Ctrl-C: SIGINT to the foreground process group, here
    `secfl run` and its program (which therefore gets it twice: forwarded too)."""
    os.killpg(w.proc.pid, signal.SIGINT)


def sign_reset(fed: Federation, value: int, out: Path) -> Path:
    """Two board members approve a reset at ``value``, written to ``out``."""
    for member in ("alice", "bob"):
        key = fed.work / f"{member}.key"
        key.write_bytes(fed.board[member][0])
        done = subprocess.run(
            [sys.executable, "-m", "secfl.cli.main", "policy", "sign-reset",
             "--policy", str(fed.work / "policy.yaml"), "--value", str(value),
             "--key", str(key), "--member", member, "-o", str(out)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    return out


def approve_version_2(fed: Federation, **federation: object) -> None:
    """The board approves version 2 of the policy, with other federation settings."""
    text = (fed.work / "policy.yaml").read_text()
    doc = yaml.safe_load(text)
    doc.update(version=2, predecessor=digest(load_policy(text)))
    doc["federation"].update(federation)
    text = yaml.safe_dump(doc, sort_keys=False)
    (fed.work / "policy.yaml").write_text(text)
    policy = load_policy(text)
    sigs = [sign_policy(policy, fed.board[n][0], n) for n in ("alice", "bob")]
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        client.submit_policy(text, sigs)


def counter(fed: Federation) -> int:
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        return client.counter("demo", "rounds")


def test_runs_restarts_and_policy_versions_need_no_manual_reset(tmp_path: Path) -> None:
    fed = Federation(
        tmp_path / "fed",
        DemoSettings(
            clients=2, rounds=ROUNDS, epochs=10,
            overrides={"heartbeat": 0.5, "dead_after": 3.0, "max_attempts": 5},
        ),
    )  # fmt: skip
    try:
        fed.start_spm()
        fed.prepare_data()
        fed.submit_policy()

        # 1. collaborators first: they wait (an hour by default), then join at once
        fed.start_collaborators()
        for name in fed.sites:
            w = fed.workloads[name]
            wait_for(logged(w, "waiting for the aggregator"), fed, 120, f"{name} to wait")
        # they wait 5 s (their reconnect backoff grows to its cap); meanwhile the board
        # signs a reset at counter 1, put in the checkpoint folder after the Ctrl-C below
        waited = time.monotonic() + 5.0
        staged = sign_reset(fed, 1, fed.work / "reset-staged.json")
        time.sleep(max(0.0, waited - time.monotonic()))
        agg = fed.start_aggregator()
        up = time.monotonic()
        for name in fed.sites:
            wait_for(logged(agg, f"joined: '{name}'"), fed, 30, f"{name} to join")
        assert time.monotonic() - up < 4.0, agg.tail(20)

        # 2. Ctrl-C: the sealed round and how to resume, exit 130, no traceback
        wait_for(lambda: len(fed.rounds()) >= 2, fed, what="round 2")
        ctrl_c(agg)
        assert exit_of(agg, 60) == 130, agg.tail(20)
        log = agg.log.read_text()
        assert "Traceback" not in log, log[-3000:]
        found = STOPPED.search(log)
        assert found, agg.tail(5)
        sealed, value, resumes = (int(g) for g in found.groups())
        assert resumes == sealed + 1 and value == sealed + 1
        # (a Ctrl-C during the SPM's reply leaves one more round committed than said)
        newest = counter(fed) - 1
        assert newest in (sealed, sealed + 1)
        assert all(fed.workloads[n].proc.poll() is None for n in fed.sites)  # still waiting

        # ... and the restart resumes there; a reset used long ago does not block it
        old = staged.rename(fed.work / "checkpoints" / "reset.json")
        agg = fed.start_aggregator()
        wait_for(logged(agg, f"resumed from checkpoint-r{newest:08d}"), fed, 60, "the resume")
        assert not old.exists() and (old.parent / "reset-used-c1.json").exists()
        assert "used up" in agg.log.read_text()
        wait_for(lambda: fed.rounds()[-1]["round"] > sealed, fed, what="a round after it")

        # 3. the board approves version 2: the old run stops, a new one starts, no reset
        approve_version_2(fed, rounds=3)
        assert exit_of(agg, 120) == 1
        assert "error: policy: the board approved a new version of 'demo'" in agg.tail()
        before = counter(fed)
        agg = fed.start_aggregator()
        wait_for(logged(agg, "run 1 (policy version 2"), fed, 60, "the new run")
        assert "starts from the initial model" in agg.log.read_text()
        for name in fed.sites:  # the old run's collaborators say to start them again
            w = fed.workloads[name]
            assert exit_of(w, 120) == 1, w.tail(10)
            assert "start this collaborator again with `secfl run`" in w.tail()
            fed.killed.add(name)
        fed.start_collaborators()
        wait_for(fed.finished, fed, what="the new run")
        lines = fed.metrics.read_text().splitlines()  # every run's rounds, in order
        new_run = [json.loads(line) for line in lines[-3:]]
        assert [r["round"] for r in new_run] == [1, 2, 3]
        assert new_run[0]["counter"] == before + 2  # its round 0 at before + 1

        # 4. the newest checkpoint withheld: a rollback, refused with the next step
        withheld = list_checkpoints(fed.work / "checkpoints")[0][2]
        withheld.rename(fed.work / "withheld.secfl")
        refused = fed.start_aggregator(wait=False)
        assert exit_of(refused) == 1
        last = refused.tail()
        value = counter(fed)
        assert last.startswith(f"error: rollback: the newest checkpoint in {withheld.parent} has")
        assert f"the SPM's counter is {value}" in last
        assert f"secfl policy sign-reset --policy POLICY.yaml --value {value} " in last
    finally:
        fed.stop()
