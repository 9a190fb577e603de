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
import itertools
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, COLLABORATOR_MR, Board, SpmProcess, policy_document

pytestmark = pytest.mark.timeout(180)

NODE = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
)
#: What passing the gate looks like here: nothing listens behind it.
PASSED = "gate: the SuperLink did not answer: ConnectError"


_POLICY_NUMBERS = itertools.count(1)


@dataclass
class Spm:
    """The module's SPM (its URL and pin) and the policy of this test on it."""

    url: str
    pin: str
    policy: str


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes]) -> Iterator[SpmProcess]:
    """One real SPM for the module: each test's link has a policy of its own there (the
    board's revocations are a policy's, so no test sees another's)."""
    proc = SpmProcess(tmp_path_factory.mktemp("spm") / "data", sim[0], None).start()
    try:
        yield proc
    finally:
        proc.stop()


def _identity(proc: Spm, sim: Path, enrolled: Any, measurement: str) -> WorkloadIdentity:
    return WorkloadIdentity(
        policy=proc.policy, service=enrolled.service, spm_url=proc.url, spm_pin=proc.pin,
        policy_digest=enrolled.policy_digest, platform="simulated", sim_dir=sim,
        measurement=measurement, session_token=enrolled.session_token,
        creds=Credentials(key_pem=enrolled.key_pem, cert_pem=enrolled.certificate.encode(),
                          ca_pem=enrolled.ca_certificate.encode()),
    )  # fmt: skip


def _revoke(proc: Spm, board: Board, **statement: str) -> None:
    statement = {"reason": "", "service": "", **statement}
    digest = revocation_digest(revocation_doc(proc.policy, statement))
    sigs = [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m) for m in ("alice", "bob")]
    with SpmClient(proc.url, pin=proc.pin) as client:
        client.revoke(proc.policy, statement, sigs)


@pytest.fixture
def link(
    spm: SpmProcess, tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> Iterator[dict[str, Any]]:
    """The gate (the policy's ``aggregator`` stands for the SuperLink, ``collaborator``
    for a site) and a site's relay to it, both attested by a real SPM under a policy of
    this test's own (version 1, signed by alice and bob)."""
    proc = Spm(spm.url, spm.pin, f"fed{next(_POLICY_NUMBERS)}")
    measurements = {"aggregator": AGGREGATOR_MR, "collaborator": COLLABORATOR_MR}
    with SpmClient(proc.url, pin=proc.pin) as client:
        document = policy_document(proc.policy, board, sim[1])
        client.submit_policy(document, board.sign(document, "alice", "bob"))
        platform = simulated.SimulatedPlatform(sim[0])
        enrolled = {
            s: enroll(client, platform, proc.policy, s, measurement=m)
            for s, m in measurements.items()
        }
    gate_tls = AttestedTls(
        _identity(proc, sim[0], enrolled["aggregator"], AGGREGATOR_MR),
        PeerPolicy(proc.policy, {"collaborator"}),
    )
    site_tls = AttestedTls(
        _identity(proc, sim[0], enrolled["collaborator"], COLLABORATOR_MR),
        PeerPolicy(proc.policy, {"aggregator"}),
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
    _assert_cut_off(link)
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
    site, and a relay in the same state reaches no SuperLink. The gate says so with 503
    and Retry-After, which Flower's SuperNodes retry: it answered 403, which they take
    for a run no longer running, and they dropped the replies they were pushing, so a
    host that kept the SuperLink from its SPM for 30 s threw away a round's work (found
    by a hostile review). A revoked site still gets 403."""
    assert _call(link) == (502, PASSED)
    link["gate_tls"].checked -= 3600
    headers = {"flwr-public-key": base64.b64encode(NODE).decode()}
    reply = link["flower"].post(link["url"], content=b"{}", headers=headers)
    assert reply.status_code == 503, reply.text
    assert "revocation list could not be read" in reply.json()["error"]
    assert reply.headers["retry-after"] == "1" and reply.headers["connection"] == "close"
    link["gate_tls"].read_revocations()
    assert _call(link) == (502, PASSED)
    link["site_tls"].checked -= 3600
    _assert_cut_off(link)


def test_a_site_passes_only_with_its_own_node_key(link: dict[str, Any]) -> None:
    """Found by a review: the gate took any of the policy's node keys on any site's
    attested connection, so a node key taken from one site's TEE (one the board has
    since revoked, say) still worked through another site's relay. ``nodes.pem`` names
    each key's site now, and the key must be that of the connection's certificate."""
    gate = link["gate"]
    gate.nodes = {NODE: "collaborator"}  # the site's own key (nodes.pem's binding)
    assert _call(link) == (502, PASSED)
    gate.nodes = {NODE: "another-site"}  # another site's key, on this site's connection
    status, error = _call(link)
    assert status == 403, error
    assert error == (
        "gate: the SuperNode key of 'another-site' came on a connection of 'collaborator': "
        "a site signs with its own node key only"
    )
    assert gate.refused == 1


def _assert_cut_off(link: dict[str, Any]) -> None:
    """The relay closed its open connection (within its watch's second) and makes no
    new one."""
    deadline = time.monotonic() + 5
    while link["relay"].live and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not link["relay"].live
    with pytest.raises(httpx.TransportError):
        _call(link)


def _serial(cert_pem: bytes) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_pem).serial_number


class _Proxy:
    """A CONNECT proxy on loopback that tunnels to the gate, and (``forge``) sends a
    reply of its own right after its ``200``, as a hostile host's proxy would."""

    def __init__(self, forge: bytes = b"") -> None:
        import socket
        import threading

        self.forge = forge
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket
        import threading

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(1)
            target = head.split(b" ")[1].decode()
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + self.forge)

            def pump(a: socket.socket, b: socket.socket) -> None:
                try:
                    while data := a.recv(65536):
                        b.sendall(data)
                except OSError:
                    pass
                finally:
                    b.close()

            threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()

    def close(self) -> None:
        self.server.close()


FORGED = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nFORGED"


@pytest.mark.parametrize("forge", [b"", FORGED], ids=["honest", "forging"])
def test_through_a_proxy_only_the_superlink_speaks(
    link: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forge: bytes
) -> None:
    """Found by a review: the relay read the proxy's answer through a buffered stream,
    and what the proxy sent after its 200 went to Flower as if the attested SuperLink
    had sent it. Now nothing past the answer is read: it meets the TLS handshake."""
    proxy = _Proxy(forge)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("no_proxy", "")
    loopback = tls_files(tmp_path / "relay2", ["127.0.0.1"])
    inner = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    inner.load_cert_chain(loopback["crt"], loopback["key"])
    relay = Relay(link["site_tls"], "127.0.0.1", link["port"], inner, service="aggregator")
    local = relay.start()
    verify = ssl.create_default_context(cafile=str(loopback["ca"]))
    try:
        with httpx.Client(verify=verify, trust_env=False, timeout=20) as flower:
            tunneled = {**link, "flower": flower,
                        "url": f"https://127.0.0.1:{local}/v1/fleet/get-run"}  # fmt: skip
            if not forge:
                assert _call(tunneled) == (502, PASSED)  # through the tunnel, to the gate
            else:
                with pytest.raises(httpx.TransportError):
                    _call(tunneled)
                assert any("SSL" in why for why in relay.said), relay.said
    finally:
        relay.stop()
        proxy.close()


def test_a_proxy_url_the_relay_cannot_use_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from secfl.errors import FlowerError
    from secfl.flower._relay import _proxy_for

    monkeypatch.setenv("no_proxy", "")
    # (a host label of 64 letters: found by a hostile review, a traceback per connection)
    for url in ("http://proxy.example:99999", "http://proxy.example:abc", "http://[::1",
                "socks5://proxy.example:1080", f"http://{'a' * 64}.example:3128"):  # fmt: skip
        monkeypatch.setenv("https_proxy", url)
        with pytest.raises(FlowerError, match=r"^flower: relay: the proxy .* is not http://"):
            _proxy_for("superlink.example")


def test_a_renewed_site_connects_again_and_a_refused_one_is_let_go(
    link: dict[str, Any], board: Board
) -> None:
    """Found by a review: Flower kept polling on a connection made with the site's
    first certificate; once that expired, the gate answered 403 on it for ever (Flower
    takes a 403 for "no run yet"). The relay now closes a connection made with a
    certificate since renewed, and the gate closes a connection it refused."""
    assert _call(link) == (502, PASSED)
    assert len(link["relay"].live) == 1
    (before,) = link["relay"].live
    assert link["site_tls"].renew(force=True)
    deadline = time.monotonic() + 5
    while before in link["relay"].live and time.monotonic() < deadline:
        time.sleep(0.1)
    assert before not in link["relay"].live
    assert _call(link) == (502, PASSED)  # a new connection, with the new certificate
    _revoke(link["proc"], board, kind="service", subject="collaborator")
    link["gate_tls"].read_revocations()
    headers = {"flwr-public-key": base64.b64encode(NODE).decode()}
    reply = link["flower"].post(link["url"], content=b"{}", headers=headers)
    assert reply.status_code == 403 and reply.headers["connection"] == "close"


def test_a_request_under_way_when_its_site_is_revoked_is_not_forwarded(
    link: dict[str, Any], board: Board, tmp_path: Path
) -> None:
    """Found by a review: the peer was checked when the headers arrived, and a body
    sent after the board revoked the site was forwarded all the same."""
    import socket

    relay_port = int(link["url"].split(":")[2].split("/")[0])
    context = ssl.create_default_context(cafile=str(tmp_path / "relay" / "ca.pem"))
    body = b'{"update": "from a site the board revoked"}'
    raw = socket.create_connection(("127.0.0.1", relay_port))
    with raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(
            b"POST /v1/fleet/push-messages HTTP/1.1\r\nhost: x\r\n"
            b"flwr-public-key: " + base64.b64encode(NODE) + b"\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        time.sleep(0.5)  # the headers are in; now the board acts
        _revoke(link["proc"], board, kind="service", subject="collaborator")
        link["gate_tls"].read_revocations()
        tls.sendall(body)
        answer = b""
        while chunk := tls.recv(65536):  # to the end: the gate closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"'collaborator' is revoked" in answer
    assert link["gate"].forwarded == 0


def test_stopping_the_relay_with_a_connection_open_is_quiet(
    link: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a review: the wrapper's shutdown, with Flower's keep-alive connection
    open, printed asyncio's traceback of a cancelled task."""
    assert _call(link) == (502, PASSED)
    assert link["relay"].live
    with caplog.at_level("ERROR", logger="asyncio"):
        link["relay"].stop()
        time.sleep(0.5)
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


def test_the_relay_takes_a_bounded_number_of_connections(
    link: dict[str, Any], tmp_path: Path
) -> None:
    """Each relayed connection holds one of the gate's connections, which every site
    shares: a process on the site's loopback cannot take them all through its relay."""
    import socket

    from secfl.flower._relay import MAX_CONNECTIONS

    relay_port = int(link["url"].split(":")[2].split("/")[0])
    context = ssl.create_default_context(cafile=str(tmp_path / "relay" / "ca.pem"))
    held = []
    try:
        for _ in range(MAX_CONNECTIONS + 1):
            raw = socket.create_connection(("127.0.0.1", relay_port))
            held.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
        deadline = time.monotonic() + 10
        while len(link["relay"].live) < MAX_CONNECTIONS and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(link["relay"].live) == MAX_CONNECTIONS
        refused = f"more than {MAX_CONNECTIONS} connections from loopback at once"
        while refused not in link["relay"].said and time.monotonic() < deadline:
            time.sleep(0.1)  # (the last one's handshake may finish after the others')
        assert refused in link["relay"].said
    finally:
        for sock in held:
            sock.close()


def test_the_relays_loopback_certificate_outlasts_a_long_run(
    link: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile review: the certificate (and its CA) that a SuperNode's
    Flower checks its relay by was made for 30 days and never renewed, so a SuperNode
    that ran longer lost its SuperLink for good (Flower gives up on a certificate
    error, and the SuperNode exited). Its key lives in the wrapper's RAM folder and dies
    with the run: it is made for as long as a run can last."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509

    from secfl.flower import _supernode
    from secfl.flower._flags import parse_flower
    from secfl.flower._wrap import PrivatePaths

    site_tls = link["site_tls"]
    monkeypatch.setattr(
        _supernode.AttestedTls, "from_env", classmethod(lambda cls, env, peers=None: site_tls)
    )
    files = tmp_path / "files"
    (files / "flower").mkdir(parents=True)
    (files / "flower" / "node.key").write_text("x")
    env = {"SECFL_FILES": str(files), "SECFL_VOLUMES": str(files / "volumes")}
    cmd = parse_flower("supernode", [
        "flower-supernode", "--superlink", f"127.0.0.1:{link['port']}",
        "--auth-supernode-private-key", "$SECFL_FILES/flower/node.key", "--isolation", "process",
    ], env)  # fmt: skip
    argv, relay = _supernode._connection(cmd, env, PrivatePaths.create(env))
    assert relay is not None
    try:
        port = int(argv[argv.index("--superlink") + 1].rpartition(":")[2])
        served = x509.load_pem_x509_certificate(
            ssl.get_server_certificate(("127.0.0.1", port)).encode()
        )
        ca = x509.load_pem_x509_certificate(
            Path(argv[argv.index("--root-certificates") + 1]).read_bytes()
        )
        long_run = datetime.now(UTC) + timedelta(days=5 * 365)
        assert served.not_valid_after_utc > long_run and ca.not_valid_after_utc > long_run
    finally:
        relay.stop()
        site_tls.stop()
