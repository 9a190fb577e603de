"""A policy version that changes a service's site key ends the sessions its old key
(or no key) enrolled. Sessions were judged against each new version (secfl.spm._sessions)
for their code and platform only: a board that gave site B a key (site A's host had
enrolled its genuine TEE as B while B had none) or replaced B's key (it was stolen) left
the session the other host had opened standing, its certificate (which peers accept as
B's) off the revocation list for as long as it lasts, up to a year. Real processes:
`secfl spm serve` on SQLite, workloads in the simulated TEE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from secfl.policy import _keys as keys
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import Enrollment, enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, Board, SpmProcess, policy_document

pytestmark = pytest.mark.timeout(120)

POLICY = "keyed"


def _key() -> keys.PrivateKey:
    return keys.load_private(keys.generate("ed25519")[0])


def _document(
    board: Board, root: bytes, version: int, predecessor: str, site_key: keys.PrivateKey | None
) -> str:
    doc = yaml.safe_load(
        policy_document(POLICY, board, root, version=version, predecessor=predecessor)
    )
    (aggregator,) = [s for s in doc["services"] if s["name"] == "aggregator"]
    if site_key is not None:
        aggregator["site_key"] = keys.public_pem(site_key.public_key()).decode()
    return yaml.safe_dump(doc, sort_keys=False)


def _serial(enrolled: Enrollment) -> str:
    cert = x509.load_pem_x509_certificate(enrolled.certificate.encode())
    return format(cert.serial_number, "x")


def _implied(client: SpmClient) -> dict[str, str]:
    return {str(r["serial"]): str(r["reason"]) for r in client.revocations(POLICY) if r["serial"]}


def _submit(client: SpmClient, board: Board, root: bytes, key: keys.PrivateKey | None) -> None:
    current: dict[str, Any] = client.policy(POLICY)
    document = _document(board, root, int(current["version"]) + 1, current["digest"], key)
    client.submit_policy(document, board.sign(document, "alice", "bob"))


def test_a_new_site_key_ends_the_sessions_no_key_or_the_old_key_enrolled(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    proc = SpmProcess(tmp_path / "data", sim[0], None).start()
    tee = simulated.SimulatedPlatform(sim[0])
    stolen, fresh = _key(), _key()
    try:
        with SpmClient(proc.url, pin=proc.pin) as client:
            first = _document(board, sim[1], 1, "", None)
            client.submit_policy(first, board.sign(first, "alice", "bob"))
            # version 1 names no site key: another site's host takes the seat
            taken = enroll(client, tee, POLICY, "aggregator", measurement=AGGREGATOR_MR)
            client.report(POLICY, "took", {}, taken.session_token)

            _submit(client, board, sim[1], stolen)  # version 2: the site's key
            # peers refuse its certificate: the revocation list names it
            assert "signed by no site key" in _implied(client).get(_serial(taken), "(unlisted)")
            with pytest.raises(SpmRefused, match="names a site key for 'aggregator', and its "
                               "enrolment was signed by no site key") as e:  # fmt: skip
                client.report(POLICY, "kept", {}, taken.session_token)
            assert e.value.status == 401 and "\n" not in str(e.value)

            signed = enroll(client, tee, POLICY, "aggregator", measurement=AGGREGATOR_MR,
                            site_key=stolen)  # fmt: skip
            _submit(client, board, sim[1], stolen)  # version 3: the same key
            assert _serial(signed) not in _implied(client)  # its certificate stands

            _submit(client, board, sim[1], fresh)  # version 4: the key was stolen
            assert "signed by another site key" in _implied(client).get(_serial(signed), "")
            with pytest.raises(SpmRefused, match="signed by another site key"):
                client.report(POLICY, "stolen", {}, signed.session_token)
            renewed = enroll(client, tee, POLICY, "aggregator", measurement=AGGREGATOR_MR,
                             site_key=fresh)  # fmt: skip
            client.report(POLICY, "renewed", {}, renewed.session_token)
    finally:
        proc.stop()
