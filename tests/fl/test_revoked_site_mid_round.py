"""A site the board revokes, or a new policy version drops, is refused by the running
aggregator within seconds, not at its next round. Found by a hostile review: the
aggregator re-read the SPM's revocation list only before a round attempt, and a round
waits up to round_timeout (300 s by default, up to a week) for updates; a site revoked
meanwhile (or whose service version 2 no longer lists) still joined, fetched the
global model and submitted its update into the open round, which was aggregated. The
aggregator now re-reads the list every REFRESH_SECONDS in a thread of its own.

Real processes: the SPM and the `secfl run` aggregator; the sites are clients holding
the real certificates the SPM issued them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from secfl.demo.federation import DemoSettings, Federation
from secfl.fl import _messages as msg
from secfl.fl._transport import Client, Credentials, TransportError
from secfl.policy._canonical import digest
from secfl.policy._document import load_policy
from secfl.policy._signatures import REVOCATION_DOMAIN, sign_policy, sign_statement
from secfl.spm._revocation import revocation_digest, revocation_doc
from secfl.spm.client import SpmClient
from secfl.spm.enroll import Enrollment, enroll
from secfl.tee import _simulated as simulated

pytestmark = pytest.mark.timeout(240)


def _creds(e: Enrollment) -> Credentials:
    return Credentials(e.key_pem, e.certificate.encode(), e.ca_certificate.encode())


def _join(port: int, e: Enrollment) -> None:
    with Client(f"127.0.0.1:{port}", _creds(e), server_name="aggregator", timeout=20) as c:
        c.unary(msg.JOIN, msg.encode({"kind": "join", "samples": 100}))


def _refused(port: int, e: Enrollment) -> str | None:
    try:
        _join(port, e)
    except TransportError as exc:
        return str(exc)
    return None


def _started(fed: Federation) -> tuple[int, dict[str, Enrollment]]:
    """The federation's SPM and aggregator started, and its two sites attested: the
    aggregator's port and each site's enrollment."""
    fed.start_spm()
    fed.prepare_data()
    fed.submit_policy()
    fed.start_aggregator()
    port = json.loads((fed.work / "aggregator.ready.json").read_text())["port"]
    platform = simulated.SimulatedPlatform(fed.sim_dir)
    build = fed.measurement("collaborator")
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        sites = {s: enroll(client, platform, "demo", s, measurement=build)
                 for s in ("site-1", "site-2")}  # fmt: skip
    return int(port), sites


def test_a_site_revoked_or_dropped_mid_round_is_refused_within_seconds(tmp_path: Path) -> None:
    fed = Federation(tmp_path / "fed", DemoSettings(clients=2, rounds=2, tampered=False))
    try:
        port, sites = _started(fed)
        for e in sites.values():  # both joined: round 1 opens, waiting for their updates
            _join(port, e)

        # the board revokes site-1's certificate ...
        serial = format(
            x509.load_pem_x509_certificate(sites["site-1"].certificate.encode()).serial_number, "x"
        )
        statement = {"kind": "certificate", "subject": serial, "service": "site-1",
                     "reason": "poisoning"}  # fmt: skip
        signed = revocation_digest(revocation_doc("demo", statement))
        sigs = [sign_statement(REVOCATION_DOMAIN, signed, fed.board[m][0], m)
                for m in ("alice", "bob")]  # fmt: skip
        # ... and approves version 2, which no longer lists site-2
        text = (fed.work / "policy.yaml").read_text()
        doc = yaml.safe_load(text)
        doc.update(version=2, predecessor=digest(load_policy(text)))
        doc["services"] = [s for s in doc["services"] if s["name"] != "site-2"]
        doc["federation"] = {**doc.get("federation", {}), "min_clients": 1}
        text = yaml.safe_dump(doc, sort_keys=False)
        policy = load_policy(text)
        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
            client.revoke("demo", statement, sigs)
            client.submit_policy(
                text, [sign_policy(policy, fed.board[n][0], n) for n in ("alice", "bob")]
            )

        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:  # the SPM names both
            listed = {r["service"] for r in client.revocations("demo")}
        assert {"site-1", "site-2"} <= listed, listed

        # the round is still open (round_timeout 300 s): the list is read every 10 s
        end = time.monotonic() + 25
        refusals: dict[str, str | None] = {}
        while time.monotonic() < end:
            refusals = {s: _refused(port, e) for s, e in sites.items()}
            if all(refusals.values()):
                break
            time.sleep(1)
        assert all(refusals.values()), f"still accepted 25 s after: {refusals}"
        assert all("revoked" in str(r) for r in refusals.values()), refusals
        assert fed.workloads["aggregator"].proc.poll() is None  # the round goes on
    finally:
        fed.stop()


def test_a_list_the_host_keeps_away_admits_nobody(tmp_path: Path) -> None:
    """Found by the same review: a revocation reaches the aggregator only through the
    list it reads; a host that kept the SPM from it (here: the SPM gone) kept every site
    in, revoked meanwhile or not, for as long as the round lasted. Past 30 s without a
    list nobody is accepted (UNAVAILABLE, which collaborators try again), as the Flower
    gate does."""
    fed = Federation(tmp_path / "fed", DemoSettings(clients=2, rounds=2, tampered=False))
    try:
        port, sites = _started(fed)
        for e in sites.values():  # round 1 opens
            _join(port, e)
        fed.kill("spm")
        end = time.monotonic() + 60
        refused = None
        while time.monotonic() < end and refused is None:
            time.sleep(2)
            refused = _refused(port, sites["site-1"])
        assert refused is not None, "still accepted 60 s without a revocation list"
        assert "UNAVAILABLE" in refused and "could not be read" in refused, refused
        assert fed.workloads["aggregator"].proc.poll() is None  # the round waits
    finally:
        fed.stop()
