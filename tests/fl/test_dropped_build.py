"""A build a new policy version dropped is refused by peers at once. Found by a hostile
review: the board approved version 2, which no longer accepts the build a site ran
under version 1; the SPM ended that build's session, but the aggregator restarted under
version 2 still admitted its certificate (valid for certificate_ttl, 24 h by default).
The SPM's revocation list now names the certificates of sessions the current version
no longer accepts. Real processes: the SPM and the `secfl run` aggregator; the old build
is a client holding its real certificate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from secfl.demo.federation import DemoSettings, Federation
from secfl.fl import _messages as msg
from secfl.fl._transport import Client, Credentials, TransportError
from secfl.policy._canonical import digest
from secfl.policy._document import load_policy
from secfl.policy._signatures import sign_policy
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated

pytestmark = pytest.mark.timeout(180)


def test_a_build_the_new_version_dropped_is_not_admitted(tmp_path: Path) -> None:
    fed = Federation(tmp_path / "fed", DemoSettings(clients=2, rounds=3, tampered=False))
    try:
        fed.start_spm()
        fed.prepare_data()
        fed.submit_policy()
        old_build = fed.measurement("collaborator")
        platform = simulated.SimulatedPlatform(fed.sim_dir)
        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
            old = enroll(client, platform, "demo", "site-2", measurement=old_build)

        # version 2: site-2 must run another build
        text = (fed.work / "policy.yaml").read_text()
        doc = yaml.safe_load(text)
        doc.update(version=2, predecessor=digest(load_policy(text)))
        (site2,) = [s for s in doc["services"] if s["name"] == "site-2"]
        site2["measurements"] = {"simulated": ["ab" * 48]}
        text = yaml.safe_dump(doc, sort_keys=False)
        policy = load_policy(text)
        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
            client.submit_policy(
                text, [sign_policy(policy, fed.board[n][0], n) for n in ("alice", "bob")]
            )
            with pytest.raises(SpmRefused, match="measurement"):  # the SPM refuses the build
                enroll(client, platform, "demo", "site-2", measurement=old_build)

        fed.start_aggregator()  # attested under version 2
        port = json.loads((fed.work / "aggregator.ready.json").read_text())["port"]
        creds = Credentials(old.key_pem, old.certificate.encode(), old.ca_certificate.encode())
        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
            implied = {r["serial"]: r["reason"] for r in client.revocations("demo")}
        serial = format(x509.load_pem_x509_certificate(old.certificate.encode()).serial_number, "x")
        assert "no longer accepted by version 2" in implied[serial]
        with (
            Client(f"127.0.0.1:{port}", creds, server_name="aggregator", timeout=20) as c,
            pytest.raises(TransportError) as refused,
        ):
            c.unary(msg.JOIN, msg.encode({"kind": "join", "samples": 100}))
        assert "revoked" in str(refused.value), str(refused.value)
    finally:
        fed.stop()
