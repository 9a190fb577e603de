"""The hop between a SuperNode and its SuperLink's gate: mutual TLS with attested
certificates, and the board's revocations taking effect on it while it runs.

Open since the fifteenth session: the gate served a policy secret (the SuperLink's TLS
certificate, valid for the policy's lifetime) and SuperNodes trusted any certificate
of the policy's Flower CA, so a SuperLink on a platform the board revoked kept
receiving the sites' updates until restarted, and a revoked site kept its connection.
Here a real `secfl spm serve` attests both sides in the simulated TEE; the gate and
the relay run as in the wrappers, over real TLS on loopback (the whole path with
Flower's own processes is in test_federation.py).
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secfl.fl._peers import PeerPolicy
from secfl.fl._wire import Credentials
from secfl.fl._workload_identity import WorkloadIdentity
from secfl.flower._attested import AttestedTls
from secfl.flower._gate import FleetGate, serve
from secfl.flower._local import free_port
from secfl.flower._relay import Relay
from secfl.flower._tls import tls_files
from secfl.policy._signatures import REVOCATION_DOMAIN, sign_statement
from secfl.spm._revocation import revocation_digest, revocation_doc
from secfl.spm.client import SpmClient
from tests.spm.harness import AGGREGATOR_MR, COLLABORATOR_MR, Board, SpmProcess, spm_with_policy

pytestmark = pytest.mark.timeout(180)

NODE = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
)
#: What passing the gate looks like here: nothing listens behind it.
PASSED = "gate: the SuperLink did not answer: ConnectError"


def _identity(proc: SpmProcess, sim: Path, enrolled: Any, measurement: str) -> WorkloadIdentity:
    return WorkloadIdentity(
        policy="fed", service=enrolled.service, spm_url=proc.url, spm_pin=proc.pin,
        policy_digest=enrolled.policy_digest, platform="simulated", sim_dir=sim,
        measurement=measurement, session_token=enrolled.session_token,
        creds=Credentials(key_pem=enrolled.key_pem, cert_pem=enrolled.certificate.encode(),
                          ca_pem=enrolled.ca_certificate.encode()),
    )  # fmt: skip


def _revoke(proc: SpmProcess, board: Board, **statement: str) -> None:
    statement = {"reason": "", "service": "", **statement}
    digest = revocation_digest(revocation_doc("fed", statement))
    sigs = [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m) for m in ("alice", "bob")]
    with SpmClient(proc.url, pin=proc.pin) as client:
        client.revoke("fed", statement, sigs)


@pytest.fixture
def link(tmp_path: Path, sim: tuple[Path, bytes], board: Board) -> Iterator[dict[str, Any]]:
    """The gate (the policy's ``aggregator`` stands for the SuperLink, ``collaborator``
    for a site) and a site's relay to it, both attested by a real SPM."""
    with spm_with_policy(tmp_path / "data", sim, board, "aggregator", "collaborator") as (
        proc,
        enrolled,
    ):
        gate_tls = AttestedTls(
            _identity(proc, sim[0], enrolled["aggregator"], AGGREGATOR_MR),
            PeerPolicy("fed", {"collaborator"}),
        )
        site_tls = AttestedTls(
            _identity(proc, sim[0], enrolled["collaborator"], COLLABORATOR_MR),
            PeerPolicy("fed", {"aggregator"}),
        )
        for tls in (gate_tls, site_tls):
            tls.read_revocations()
        port = free_port()
        gate = FleetGate("https://127.0.0.1:9", ssl.create_default_context(), [NODE],
                         peers=gate_tls.check)  # fmt: skip
        server, _ = serve(gate, "127.0.0.1", port, lambda: gate_tls.server)
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        loopback = tls_files(tmp_path / "relay", ["127.0.0.1"])
        inner = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        inner.load_cert_chain(loopback["crt"], loopback["key"])
        relay = Relay(site_tls, "127.0.0.1", port, inner, service="aggregator")
        local = relay.start()
        verify = ssl.create_default_context(cafile=str(loopback["ca"]))
        flower = httpx.Client(verify=verify, trust_env=False, timeout=20)
        try:
            yield {"proc": proc, "gate": gate, "gate_tls": gate_tls, "site_tls": site_tls,
                   "relay": relay, "port": port, "flower": flower,
                   "url": f"https://127.0.0.1:{local}/v1/fleet/get-run"}  # fmt: skip
        finally:
            flower.close()
            relay.stop()
            server.should_exit = True


def _call(link: dict[str, Any]) -> tuple[int, str]:
    """A Fleet call as Flower makes it through its relay: (status, error)."""
    headers = {"flwr-public-key": base64.b64encode(NODE).decode()}
    reply = link["flower"].post(link["url"], content=b"{}", headers=headers)
    return reply.status_code, reply.json().get("error", "")


def test_the_attested_site_reaches_the_attested_superlink_and_nobody_else_does(
    link: dict[str, Any],
) -> None:
    assert _call(link) == (502, PASSED)
    # without an attested certificate there is no TLS connection to the gate at all
    anyone = ssl.create_default_context()
    anyone.check_hostname, anyone.verify_mode = False, ssl.CERT_NONE  # not what is tested
    outsider = httpx.Client(verify=anyone, trust_env=False, timeout=10)
    with outsider, pytest.raises(httpx.TransportError):
        outsider.post(f"https://127.0.0.1:{link['port']}/v1/fleet/get-run", content=b"{}")
    assert link["gate"].forwarded == 0 and link["relay"].said == set()


def test_a_superlink_the_board_revoked_loses_its_sites_at_once(
    link: dict[str, Any], board: Board
) -> None:
    """The board revokes the platform the SuperLink runs on (here: its certificate's
    serial; a platform's or measurement's revocation implies every certificate issued
    to it): the open connection is closed and no new one is made, within a refresh."""
    assert _call(link) == (502, PASSED)  # a keep-alive connection is open now
    serial = format(_serial(link["gate_tls"].ident.creds.cert_pem), "x")
    _revoke(link["proc"], board, kind="certificate", subject=serial, service="aggregator")
    link["site_tls"].read_revocations()  # what its refresh thread does every 10 s
    deadline = time.monotonic() + 5
    while link["relay"].live and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not link["relay"].live  # the open connection was closed
    with pytest.raises(httpx.TransportError):
        _call(link)
    said = " | ".join(sorted(link["relay"].said))
    assert f"peer: certificate {serial} of 'aggregator' is revoked" in said
    # the gate's own certificate, renewed by attesting again, is a new one: accepted
    assert link["gate_tls"].renew(force=True)
    assert _call(link) == (502, PASSED)


def test_a_site_the_board_revoked_is_refused_by_the_gate(
    link: dict[str, Any], board: Board
) -> None:
    assert _call(link) == (502, PASSED)
    _revoke(link["proc"], board, kind="service", subject="collaborator")
    link["gate_tls"].read_revocations()
    status, error = _call(link)  # (its certificate is on the list as the service's)
    assert status == 403 and error.startswith("gate: peer: "), error
    assert "'collaborator' is revoked" in error
    assert link["gate"].refused == 1


def test_without_a_fresh_revocation_list_nothing_is_accepted(link: dict[str, Any]) -> None:
    """Fail closed: a gate that could not read the list for three refreshes admits no
    site, and a relay in the same state reaches no SuperLink."""
    assert _call(link) == (502, PASSED)
    link["gate_tls"].checked -= 3600
    status, error = _call(link)
    assert status == 403 and "revocation list could not be read" in error
    link["gate_tls"].read_revocations()
    assert _call(link) == (502, PASSED)
    link["site_tls"].checked -= 3600
    deadline = time.monotonic() + 5
    while link["relay"].live and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not link["relay"].live  # the open connection was closed
    with pytest.raises(httpx.TransportError):
        _call(link)


def _serial(cert_pem: bytes) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_pem).serial_number
