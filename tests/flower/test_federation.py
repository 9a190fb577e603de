"""A Flower app, unmodified, trained by an attested SuperLink and attested SuperNodes,
and every way around it refused; real processes on loopback, the simulated TEE.

One federation serves every test here (it is the expensive part): an SPM; a policy
written by ``secfl.flower.flower_policy`` and signed 2-of-3; the example app
(``examples/flower``) as the shielded FAB; the SuperLink and two SuperNodes each
under ``secfl run``. Before the SuperNodes start, the attacks run against the live
SuperLink: a SuperNode outside ``secfl run``, one with a changed command (it pins a
modified app), one of another policy (another CA), a node key of its own at the
gate, ``flwr run`` through the gate, an insider's runs on the loopback Control API
(of a modified FAB, and of the approved FAB with a run config of its own), and an
insider's own node key registered there. Then the app
trains two rounds (the demo's fifth SuperNode, whose app was modified, is refused at
attestation) and the SuperLink exits.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from secfl.cli.flower import report
from secfl.flower._federation import LocalFlowerFederation
from secfl.flower._local import Process

pytestmark = pytest.mark.heavy(45)  # seconds on one worker: scheduled first

PROBES = Path(__file__).with_name("probes.py")
#: The insider's runs of the modified FAB started at once (past the audited refusals).
FLOOD = 10


@dataclass
class Outcome:
    fed: LocalFlowerFederation
    exit_code: int
    probes: dict[str, str] = field(default_factory=dict)
    unattested: subprocess.CompletedProcess[str] | None = None
    modified: Process | None = None
    modified_code: int | None = None
    other: Process | None = None
    audit: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _probe(python: Path, *args: str) -> str:
    done = subprocess.run(
        [str(python), str(PROBES), *args], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def _wait_for(process: Process, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in process.text():
            return True
        if process.proc.poll() is not None:
            return text in process.text()
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def outcome(flower_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """The demo (``secfl flower demo``'s own steps, two sites, two rounds), with the
    attacks run against its SuperLink before the SuperNodes start."""
    fed = LocalFlowerFederation(
        tmp_path_factory.mktemp("flower"), sites=2, rounds=2, run_config=["fraction-evaluate=0.0"]
    )
    result = Outcome(fed, exit_code=-1)

    def attacks() -> None:
        other = fed.submit_other_policy("flower-other")
        gate = fed.federation().superlink
        result.probes["join"] = _probe(flower_python, "join", gate)
        result.probes["control"] = _probe(flower_python, "control", gate)
        fab = fed.work / "plain" / "modified.fab"
        result.probes["insider"] = _probe(
            flower_python, "insider-run", f"127.0.0.1:{fed.link_port}", str(fab)
        )
        # the approved app, with a run config of the insider's (not the board's)
        result.probes["insider-config"] = _probe(
            flower_python, "insider-run", f"127.0.0.1:{fed.link_port}",
            str(fed.work / "plain" / "app" / "app.fab"), "num-server-rounds=1", "lr=1000.0",
        )  # fmt: skip
        # a flood of them: each refused, not each written to the SPM's log (kept for ever)
        result.probes["insider-flood"] = _probe(
            flower_python, "insider-flood", f"127.0.0.1:{fed.link_port}", str(fab), str(FLOOD)
        )
        result.probes["insider-node"] = _probe(
            flower_python, "insider-node", f"127.0.0.1:{fed.link_port}", gate
        )
        # A SuperNode outside `secfl run`: the genuine command, no attestation, no key.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECFL_")}
        site = fed.federation().sites[0]
        result.unattested = subprocess.run(
            fed.federation().supernode_argv(site), capture_output=True, text=True,
            timeout=120, env=env, check=False,
        )  # fmt: skip
        result.other = fed.start("other-policy-site", fed.site_argv(other.sites[0], fed=other))
        _wait_for(result.other, "CERTIFICATE_VERIFY_FAILED", 90)
        fed.stop_process("other-policy-site")

    try:
        result.seconds = time.monotonic()
        result.exit_code = fed.run_demo(before_supernodes=attacks, timeout=400)
        result.seconds = time.monotonic() - result.seconds
        result.modified = fed.processes["modified-site"]
        result.modified_code = result.modified.proc.returncode
        result.audit = fed.audit()
        yield result
    finally:
        fed.stop()


def _events(outcome: Outcome, event: str, policy: str = "flower") -> list[dict[str, Any]]:
    return [e for e in outcome.audit if e["event"] == event and e.get("policy") == policy]


@pytest.mark.timeout(900)
def test_the_unmodified_app_trains_under_secfl(outcome: Outcome) -> None:
    fed = outcome.fed
    assert outcome.exit_code == 0, fed.processes["superlink"].tail(20)
    rounds = fed.rounds_seen()
    assert [r.split("[ROUND ")[1].split("]")[0] for r in rounds] == ["1/2", "2/2"]
    link = fed.processes["superlink"].text()
    assert "aggregate_train: Received 2 results and 0 failures" in link
    # every site reached it through its relay: attested mutual TLS, the instance pinned
    for site in ("site-1", "site-2"):
        assert "through the relay (attested mutual TLS)" in fed.processes[site].text()
    model = fed.final_model()  # only the model owner's key opens it
    assert sorted(model) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert model["fc1.weight"].shape == (64, 64)


def test_every_step_is_in_the_spm_audit_log(outcome: Outcome) -> None:
    accepted = {e["detail"]["service"] for e in _events(outcome, "attestation.accepted")}
    assert accepted == {"superlink", "site-1", "site-2"}
    registered = _events(outcome, "fl.flower.nodes-registered")
    assert len(registered) == 1 and len(registered[0]["detail"]["nodes"]) == 2
    started = _events(outcome, "fl.flower.run-started")
    assert [e["detail"]["fab_sha256"] for e in started] == [outcome.fed.fab_sha256]
    finished = _events(outcome, "fl.flower.run-finished")
    assert [e["detail"]["status"] for e in finished] == ["finished:completed"]
    assert finished[0]["detail"]["output_tag"]


def test_an_unattested_supernode_gets_no_key_and_cannot_join(outcome: Outcome) -> None:
    # Outside `secfl run`: the wrapper refuses before Flower starts (no key to give it).
    unattested = outcome.unattested
    assert unattested is not None and unattested.returncode == 2
    assert (
        unattested.stderr.strip()
        .splitlines()[-1]
        .startswith("error: flower: $SECFL_FILES is not set: start this under `secfl run`")
    )
    # With a node key of its own (its signed headers are valid) but no attested
    # certificate, the gate refuses its connection: only the policy's attested sites
    # get a TLS connection (mutual TLS); behind that, only their node keys pass.
    assert outcome.probes["join"] == "refused tls"


def test_a_supernode_with_a_changed_command_is_refused_at_attestation(outcome: Outcome) -> None:
    modified = outcome.modified
    assert modified is not None and outcome.modified_code == 1
    assert "measurement" in modified.tail(3)
    refused = _events(outcome, "attestation.refused")
    assert any(
        e["detail"].get("service") == "site-1" and "measurement" in e["detail"]["reason"]
        for e in refused
    ), refused


def test_a_supernode_of_another_policy_fails_tls(outcome: Outcome) -> None:
    other = outcome.other
    assert other is not None
    text = other.text()
    # It was attested under its own policy (and got that policy's CA and node key) ...
    assert any(
        e["detail"]["service"] == "site-1"
        for e in _events(outcome, "attestation.accepted", policy="flower-other")
    )
    # ... and that policy's identity CA does not vouch for this federation's SuperLink:
    # its relay refused the connection, and it never joined.
    assert "secfl: relay: refused the SuperLink at " in text
    assert "CERTIFICATE_VERIFY_FAILED" in text
    assert "SuperNode ID" not in text


def test_the_demo_shows_the_rounds_and_the_decisions(
    outcome: Outcome, capsys: pytest.CaptureFixture[str]
) -> None:
    report(outcome.fed, outcome.exit_code, outcome.seconds)
    shown = capsys.readouterr().out
    assert "[ROUND 1/2]" in shown and "[ROUND 2/2]" in shown
    assert "{'train_loss': " in shown
    assert "accepted  superlink" in shown and "accepted  site-2" in shown
    assert "REFUSED   site-1: measurement: simulated measurement " in shown
    assert "fl.flower.run-finished: run_id=" in shown
    assert "the model owner opens the sealed model: fc1.weight 64x64, fc1.bias 64" in shown
    assert "run completed in " in shown


def test_the_control_api_is_not_served_to_the_network(outcome: Outcome) -> None:
    assert outcome.probes["control"] == "refused tls"


def test_a_wrong_fab_is_not_run(outcome: Outcome) -> None:
    run_id = outcome.probes["insider"]
    assert run_id.isdigit()  # Flower took the insider's run on its loopback Control API
    link = outcome.fed.processes["superlink"].text()
    assert f"fab: run {run_id} brings app sha256 {outcome.fed.modified_sha256[:16]}" in link
    refused = _events(outcome, "fl.flower.fab-refused")
    assert refused[0]["detail"]["run_id"] == run_id


def test_a_flood_of_refused_runs_does_not_flood_the_spms_log(outcome: Outcome) -> None:
    """Found by a hostile review: each task the SuperLink's SuperExec refused was an entry
    in the SPM's audit log, which is kept for ever and replayed at every start, so an
    insider on the loopback Control API grew it without bound, a run of a small FAB per
    entry. The first refusals are written one by one, then one ``refusal-flood``, and
    ``run-finished`` counts them all."""
    flood = outcome.probes["insider-flood"].split()
    assert len(flood) == FLOOD and all(r.isdigit() for r in flood)
    link = outcome.fed.processes["superlink"].text()
    assert all(f"fab: run {r} brings app sha256" in link for r in flood)  # all refused
    refused = _events(outcome, "fl.flower.fab-refused") + _events(outcome, "fl.flower.run-refused")
    assert len(refused) == 8  # secfl.flower._superlink.MAX_AUDITED_REFUSALS
    (flooded,) = _events(outcome, "fl.flower.refusal-flood")
    assert flooded["detail"]["audited"] == 8
    (finished,) = _events(outcome, "fl.flower.run-finished")
    assert finished["detail"]["refused_tasks"] == FLOOD + 2  # and the two insiders' above


def test_the_approved_app_under_an_insiders_run_config_is_not_run(outcome: Outcome) -> None:
    """An insider on the SuperLink's host starts the approved FAB on the loopback Control
    API with a run config of its own (the executor checked only the FAB's hash: that
    run's ServerApp ran, and every SuperNode trained for it under the insider's
    settings): only the run the wrapper started runs."""
    run_id = outcome.probes["insider-config"]
    assert run_id.isdigit()  # Flower took the insider's run on its loopback Control API
    link = outcome.fed.processes["superlink"].text()
    assert f"run: run {run_id} is not the run this SuperLink started" in link
    refused = _events(outcome, "fl.flower.run-refused")
    assert [e["detail"]["run_id"] for e in refused] == [run_id]
    (started,) = _events(outcome, "fl.flower.run-started")
    assert started["detail"]["run_id"] != run_id


def test_a_node_key_registered_behind_the_policys_back_never_joins(outcome: Outcome) -> None:
    """An insider on the SuperLink's host registers a key of its own on Flower's
    loopback Control API (Flower would then let it join the run and take the global
    model): the gate refuses the key, and the SuperLink's wrapper unregisters it and
    audits it."""
    import json

    probe = json.loads(outcome.probes["insider-node"])
    assert probe["registered"].isdigit()  # Flower took the registration
    assert probe["gate"] == "refused tls"
    assert probe["status"] == "unregistered"
    foreign = _events(outcome, "fl.flower.node-foreign")
    assert [(e["detail"]["node_id"], e["detail"]["key_sha256"]) for e in foreign] == [
        (probe["registered"], probe["key_sha256"])
    ]
    link = outcome.fed.processes["superlink"].text()
    assert f"secfl: unregistered node {probe['registered']} (key sha256 " in link
    (finished,) = _events(outcome, "fl.flower.run-finished")
    assert finished["detail"]["foreign_nodes"] == 1
