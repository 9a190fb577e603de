"""The federation end to end, as separate processes on loopback: a real SPM, the
aggregator and collaborators each started by `secfl run` in the simulated TEE,
mutual TLS with SPM-issued certificates, shielded code and data, sealed
checkpoints and the SPM counter. Faults are real: SIGKILL, deleted checkpoints,
modified code, certificates from elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from secfl.demo._processes import Workload
from secfl.demo.federation import DemoSettings, Federation
from secfl.fl._checkpoint_dir import list_checkpoints
from secfl.fl._tensors import from_bytes
from secfl.fl._transport import Client, Credentials, TransportError
from secfl.shield import volume_tag
from secfl.spm.client import SpmClient
from tests.fl.fedkit import ca, identity

pytestmark = pytest.mark.heavy(45)  # seconds on one worker: scheduled first

ROUNDS = 10


def wait_for(condition, fed: Federation, timeout: float = 180.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        failed = fed.failed()
        if failed is not None:
            raise AssertionError(f"{failed.name} failed: {failed.tail(20)}")
        if time.monotonic() > deadline:
            logs = {n: w.tail(8) for n, w in fed.workloads.items()}
            raise AssertionError(f"timed out waiting for {what}: {json.dumps(logs, indent=1)}")
        time.sleep(0.1)


def start(fed: Federation) -> None:
    """SPM, data and policy, the aggregator, the collaborators: as `secfl demo` does."""
    fed.start_spm()
    fed.prepare_data()
    fed.submit_policy()
    fed.start_aggregator()
    fed.start_collaborators()


def exit_of(w: Workload, timeout: float = 120.0) -> int:
    return w.proc.wait(timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, Workload]]:
    """A secure federation of three sites trained to the end, plus a tampered site."""
    fed = Federation(tmp_path_factory.mktemp("e2e"), DemoSettings(clients=3, rounds=ROUNDS))
    try:
        start(fed)
        tampered = fed.start_tampered()
        wait_for(fed.finished, fed, what="training")
        exit_of(tampered)
        yield fed, tampered
    finally:
        fed.stop()


def test_secure_training_equals_insecure_tensor_for_tensor(
    trained: tuple[Federation, Workload], tmp_path: Path
) -> None:
    fed, _ = trained
    secure, _ = from_bytes(fed.final_model())
    agg = fed.start_insecure(tmp_path / "insecure")
    assert exit_of(agg, 180) == 0, agg.tail(20)
    insecure, _ = from_bytes((tmp_path / "insecure" / "model.safetensors").read_bytes())
    assert sorted(secure) == sorted(insecure)
    for name in secure:
        assert secure[name].dtype == insecure[name].dtype
        assert np.array_equal(secure[name], insecure[name]), name
    assert "INSECURE MODE" in agg.log.read_text()
    rounds = fed.rounds()
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert rounds[-1]["test_accuracy"] >= 0.9


def test_every_round_is_counted_and_audited(trained: tuple[Federation, Workload]) -> None:
    fed, _ = trained
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        # one increment for the initial model, one per round
        assert client.counter("demo", "rounds") == ROUNDS + 1
    assert [r["counter"] for r in fed.rounds()] == list(range(2, ROUNDS + 2))
    count, _ = fed.verify_audit()
    assert count > 10


def test_the_final_model_is_recorded_with_the_spm(trained: tuple[Federation, Workload]) -> None:
    """Noted last session: a model owner could not tell the final model from a stale
    output the host kept. The aggregator now logs the sealed model's tag, from its
    attested session, and `secfl shield decrypt --expect-tag` checks a file against it."""
    fed, _ = trained
    (entry,) = [e for e in fed.audit() if e["event"] == "fl.model"]
    detail = entry["detail"]
    assert detail["tag"] == volume_tag(fed.output / "model.secfl", fed.keys["model-output"])
    assert (detail["rounds"], detail["counter"], detail["service"]) == (
        ROUNDS,
        ROUNDS + 1,
        "aggregator",
    )


def test_modified_task_code_is_refused_by_attestation(trained: tuple[Federation, Workload]) -> None:
    fed, tampered = trained
    assert tampered.proc.returncode == 1
    assert "measurement" in tampered.tail() and "is not accepted" in tampered.tail()
    refused = [e for e in fed.audit() if e["event"] == "attestation.refused"]
    assert [e["detail"]["service"] for e in refused] == ["site-1"]
    # it never reached the aggregator: site-1 joined exactly once, with its genuine code
    assert fed.workloads["aggregator"].log.read_text().count("joined: 'site-1'") == 1


# A workload not started by `secfl run` is refused ("error: identity: $SECFL_IDENTITY is not
# set"): tests/fl/test_hostile_inputs.py::test_secure_workloads_take_volumes_and_built_in_tasks
# runs that very collaborator command line (and the aggregator's).


# --- faults -------------------------------------------------------------------------------


def test_kills_resume_rollback_and_board_reset(tmp_path: Path) -> None:
    """A collaborator killed mid-round: the round completes with quorum. The aggregator
    killed mid-round: restarted, it resumes from its sealed checkpoint and loses no
    round but the interrupted one. A deleted newest checkpoint: refused as a rollback,
    until two board members sign a reset."""
    rounds = 12
    fed = Federation(
        tmp_path / "fed",
        DemoSettings(
            clients=3, rounds=rounds, epochs=25,
            overrides={"min_clients": 2, "quorum": 2, "heartbeat": 0.5, "dead_after": 3.0},
        ),
    )  # fmt: skip
    try:
        start(fed)
        wait_for(lambda: len(fed.rounds()) >= 2, fed, what="round 2")

        _refused_with_another_ca(fed)

        fed.kill("site-3")
        wait_for(lambda: any(r.get("dropped") for r in fed.rounds()), fed, what="a dropout")
        dropped = next(r for r in fed.rounds() if r.get("dropped"))
        assert dropped["dropped"] == ["site-3"] and dropped["updates"] == 2
        assert dropped["attempt"] == 1  # completed with quorum, not retried

        done = len(fed.rounds())
        wait_for(lambda: len(fed.rounds()) > done, fed, what="one more round")
        fed.kill("aggregator")
        last = fed.rounds()[-1]["round"]
        fed.start_aggregator()
        wait_for(fed.finished, fed, what="training after the restart")
        log = fed.workloads["aggregator"].log.read_text()
        assert f"resumed from checkpoint-r{last:08d}" in log
        assert [r["round"] for r in fed.rounds()] == list(range(1, rounds + 1))
        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
            counter = client.counter("demo", "rounds")
        assert counter == rounds + 1

        checkpoints = fed.work / "checkpoints"
        newest = list_checkpoints(checkpoints)[0][2]
        newest.unlink()  # the host hides the newest checkpoint: the older one is a rollback
        agg = fed.start_aggregator(wait=False)
        assert exit_of(agg) == 1
        assert "error: rollback: the newest checkpoint in" in agg.tail()
        assert f"secfl policy sign-reset --policy POLICY.yaml --value {counter} " in agg.tail()

        for member in ("alice", "bob"):
            key = fed.work / f"{member}.key"
            key.write_bytes(fed.board[member][0])
            result = subprocess.run(
                [sys.executable, "-m", "secfl.cli.main", "policy", "sign-reset",
                 "--policy", str(fed.work / "policy.yaml"), "--value", str(counter),
                 "--key", str(key), "--member", member, "-o", str(checkpoints / "reset.json")],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert "for version 1 of 'demo' (digest " in result.stdout  # what was signed
        fed.start_aggregator()  # listening again: the board's reset was accepted
        log = fed.workloads["aggregator"].log.read_text()
        assert f"the board approved a reset at counter {counter}" in log
        assert f"resumed from checkpoint-r{rounds - 1:08d}" in log
    finally:
        fed.stop()


def _refused_with_another_ca(fed: Federation) -> None:
    """A client whose certificate another CA issued never gets through the handshake."""
    port = json.loads((fed.work / "aggregator.ready.json").read_text())["port"]
    outsider = identity(ca("elsewhere"), "site-1", policy="demo")
    client = Client(f"127.0.0.1:{port}", outsider, server_name="aggregator", timeout=5)
    with client, pytest.raises(TransportError, match="UNAVAILABLE"):
        client.unary("Join", b"\x00\x00\x00\x02{}")


def test_a_workload_attests_again_for_a_fresh_certificate(
    trained: tuple[Federation, Workload],
) -> None:
    """What a collaborator does when two thirds of its certificate's life are gone."""
    from datetime import timedelta

    from cryptography import x509

    from secfl.fl._workload_identity import WorkloadIdentity
    from secfl.spm._sealing import CLOCK_SKEW
    from secfl.spm.enroll import enroll
    from secfl.tee._simulated import SimulatedPlatform

    fed, _ = trained
    measurement = fed.measurement("collaborator")
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        first = enroll(client, SimulatedPlatform(fed.sim_dir), "demo", "site-2",
                       measurement=measurement)  # fmt: skip
    ident = WorkloadIdentity(
        policy="demo", service="site-2", spm_url=fed.spm_url, spm_pin=fed.spm_pin,
        policy_digest=first.policy_digest, platform="simulated", sim_dir=fed.sim_dir,
        measurement=measurement,
        creds=Credentials(first.key_pem, first.certificate.encode(),
                          first.ca_certificate.encode()),
        session_token=first.session_token,
    )  # fmt: skip
    old = x509.load_pem_x509_certificate(ident.creds.cert_pem)
    ttl = timedelta(seconds=fed.settings.certificate_ttl)
    issued = old.not_valid_after_utc - ttl
    assert old.not_valid_before_utc == issued - CLOCK_SKEW
    assert not ident.due()
    assert not ident.renew()  # not due: nothing happens
    assert not ident.due(issued + ttl * 0.6)
    assert ident.due(issued + ttl * 0.7)
    accepted = sum(e["event"] == "attestation.accepted" for e in fed.audit())
    assert ident.renew(force=True)
    new = x509.load_pem_x509_certificate(ident.creds.cert_pem)
    assert new.serial_number != old.serial_number
    assert new.public_key() != old.public_key()
    assert ident.session_token != first.session_token
    assert sum(e["event"] == "attestation.accepted" for e in fed.audit()) == accepted + 1
    ended = [e for e in fed.audit() if e["event"] == "session.ended"]  # the old one ended
    assert ended[-1]["detail"]["service"] == "site-2"
    assert ended[-1]["detail"]["replaced_by"] == format(new.serial_number, "x")
    assert ident.policy_document().name == "demo"


def test_only_the_aggregator_writes_findings_to_the_audit_log(
    trained: tuple[Federation, Workload],
) -> None:
    from secfl.spm.client import SpmRefused
    from secfl.spm.enroll import enroll
    from secfl.tee._simulated import SimulatedPlatform

    fed, _ = trained
    tee = SimulatedPlatform(fed.sim_dir)
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        agg = enroll(client, tee, "demo", "aggregator", measurement=fed.measurement("aggregator"))
        site = enroll(client, tee, "demo", "site-3", measurement=fed.measurement("collaborator"))
        finding = {"round": 4, "excluded": ["site-2"], "serials": {"site-2": "ab12"}}
        seq = client.report("demo", "audit.excluded", finding, agg.session_token)
        with pytest.raises(SpmRefused, match="not an aggregator"):
            client.report("demo", "audit.excluded", finding, site.session_token)
        with pytest.raises(SpmRefused, match="session"):
            client.report("demo", "audit.excluded", finding, "not-a-token")
    entry = next(e for e in fed.audit() if e["seq"] == seq)
    assert entry["event"] == "fl.audit.excluded"
    assert entry["detail"] == {**finding, "service": "aggregator"}
    fed.verify_audit()
