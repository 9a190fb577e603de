"""The aggregator attests again when its certificate is due, not only between rounds.
Found by a hostile review: it renewed only before a round attempt, and an attempt waits
up to join_timeout for collaborators, then up to round_timeout for their updates; under
a policy with short certificates (certificate_ttl down to 60 s) its certificate expired
meanwhile, and every collaborator connecting after that failed the TLS handshake (and
its session, which lasts as long, could commit nothing). The thread that re-reads the
revocation list every 10 s now renews it when due, too.

Real processes: the SPM and the `secfl run` aggregator; the sites are clients holding
the real certificates the SPM issued them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from secfl.demo.federation import DemoSettings, Federation
from secfl.fl import _messages as msg
from secfl.fl._transport import Client, Credentials
from secfl.spm.client import SpmClient
from secfl.spm.enroll import Enrollment, enroll
from secfl.tee import _simulated as simulated

pytestmark = pytest.mark.timeout(300)


def _join(port: int, e: Enrollment) -> None:
    creds = Credentials(e.key_pem, e.certificate.encode(), e.ca_certificate.encode())
    with Client(f"127.0.0.1:{port}", creds, server_name="aggregator", timeout=20) as c:
        c.unary(msg.JOIN, msg.encode({"kind": "join", "samples": 100}))


def test_a_collaborator_joining_after_the_first_certificate_expired_gets_in(
    tmp_path: Path,
) -> None:
    fed = Federation(
        tmp_path / "fed", DemoSettings(clients=2, rounds=1, tampered=False, certificate_ttl=60)
    )
    try:
        fed.start_spm()
        fed.prepare_data()
        fed.submit_policy()
        fed.start_aggregator()
        began = time.monotonic()
        port = json.loads((fed.work / "aggregator.ready.json").read_text())["port"]
        platform = simulated.SimulatedPlatform(fed.sim_dir)
        build = fed.measurement("collaborator")
        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
            _join(port, enroll(client, platform, "demo", "site-1", measurement=build))
        # the aggregator waits for a second collaborator (min_clients 2), past the
        # lifetime of the certificate it started with
        time.sleep(max(0.0, 75 - (time.monotonic() - began)))
        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
            _join(port, enroll(client, platform, "demo", "site-2", measurement=build))
        assert fed.workloads["aggregator"].proc.poll() is None
    finally:
        fed.stop()
