"""A collaborator sends nothing to an aggregator whose certificate the board revoked.

Found by a hostile review: collaborators checked only that the aggregator's certificate
chains to the policy's CA and names the aggregator's service. The board approved version
2, which no longer accepts the aggregator's build; the host pointed a site at the old
build, still holding its certificate (valid for certificate_ttl, 24 h by default), and
got the site's join and updates. The collaborator now pins the aggregator's current
certificate and checks it against the SPM's revocation list (secfl.fl._pin).

Real processes: the SPM and a `secfl run` collaborator; the revoked aggregator is a
server holding the real certificate the SPM issued it under version 1."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta

import pytest
import yaml
from cryptography import x509

from secfl._internal.x509util import session_name
from secfl.demo.federation import DemoSettings, Federation
from secfl.errors import TransportError
from secfl.fl import _messages as msg
from secfl.fl._pin import AggregatorPin
from secfl.fl._transport import Credentials, Peer, PeerPolicy, Server
from secfl.policy._canonical import digest
from secfl.policy._document import load_policy
from secfl.policy._signatures import sign_policy
from secfl.spm.client import SpmClient
from secfl.spm.enroll import Enrollment, enroll
from secfl.tee import _simulated as simulated

pytestmark = pytest.mark.timeout(240)


class _Impostor:
    """A server with the revoked aggregator's certificate that records who calls what
    (``Who`` aside, which carries nothing of the caller's)."""

    def __init__(self, creds: Credentials, port: int, *, claims: bytes | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.asked = 0
        self.server = Server(creds, PeerPolicy("demo", {"site-1", "site-2"}))
        who = self.server._who

        def answer(request: bytes, peer: Peer) -> bytes:
            self.asked += 1
            return claims if claims is not None else who(request, peer)

        self.server._who = answer  # type: ignore[method-assign]
        self.server.unary(msg.JOIN, self._unary(msg.JOIN))
        self.server.download(msg.NEXT, self._download)
        self.server.exchange(msg.SUBMIT_NEXT, self._exchange)
        self.server.start(f"127.0.0.1:{port}")

    def _unary(self, name: str):  # type: ignore[no-untyped-def]
        def record(request: bytes, peer: Peer) -> bytes:
            self.calls.append((name, peer.service))
            return msg.encode({"kind": "welcome", "participant": peer.service, "heartbeat": 2})

        return record

    def _download(self, request: bytes, peer: Peer) -> Iterable[bytes]:
        self.calls.append((msg.NEXT, peer.service))
        return iter([msg.encode({"kind": msg.WAIT})])

    def _exchange(self, pieces: Iterator[bytes], peer: Peer) -> Iterable[bytes]:
        self.calls.append((msg.SUBMIT_NEXT, peer.service))
        return iter([msg.encode({"kind": "accepted"})])

    def stop(self) -> None:
        self.server.stop(0)


def _wait(check, what: str, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def _creds(e: Enrollment) -> Credentials:
    return Credentials(e.key_pem, e.certificate.encode(), e.ca_certificate.encode())


def _serial(e: Enrollment) -> int:
    return int(x509.load_pem_x509_certificate(e.certificate.encode()).serial_number)


#: The aggregator's build under version 2 (the simulated TEE reports what it is given).
NEW_BUILD = "ab" * 48


@pytest.fixture(scope="module")
def revoked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, Enrollment]]:
    """A federation at version 2, which no longer accepts the aggregator's build of
    version 1, and that build's enrollment (its certificate now revoked)."""
    fed = Federation(tmp_path_factory.mktemp("fed"), DemoSettings(clients=2, rounds=3,
                                                                  tampered=False))  # fmt: skip
    try:
        fed.start_spm()
        fed.prepare_data()
        fed.submit_policy()
        platform = simulated.SimulatedPlatform(fed.sim_dir)
        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
            # one in eight serials has 39 hex digits or fewer, room for a leading zero
            # within the 40 a serial may have (the last phase of the first test)
            for _ in range(200):
                old = enroll(client, platform, "demo", "aggregator",
                             measurement=fed.measurement("aggregator"))  # fmt: skip
                if len(format(_serial(old), "x")) <= 39:
                    break
        text = (fed.work / "policy.yaml").read_text()
        doc = yaml.safe_load(text)
        doc.update(version=2, predecessor=digest(load_policy(text)))
        (agg,) = [s for s in doc["services"] if s["name"] == "aggregator"]
        agg["measurements"] = {"simulated": [NEW_BUILD]}
        text = yaml.safe_dump(doc, sort_keys=False)
        policy = load_policy(text)
        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
            client.submit_policy(
                text, [sign_policy(policy, fed.board[n][0], n) for n in ("alice", "bob")]
            )
            assert format(_serial(old), "x") in {r["serial"] for r in client.revocations("demo")}
        yield fed, old
    finally:
        fed.stop()


def test_a_collaborator_sends_nothing_to_a_revoked_aggregator(
    revoked: tuple[Federation, Enrollment],
) -> None:
    fed, old = revoked
    serial = format(_serial(old), "x")
    # the host points site-1 at the old build, honest about its certificate
    impostor = _Impostor(_creds(old), fed.port)
    try:
        site = fed.start_collaborator("site-1")
        log = fed.logs / "site-1.log"
        refused = f"certificate {serial} is revoked by the board"
        _wait(lambda: refused in log.read_text() or impostor.calls,
              "the collaborator to refuse the revoked aggregator, or call it")  # fmt: skip
        assert impostor.calls == []  # before: [("Join", "site-1"), ("Next", "site-1")]
        assert site.proc.poll() is None  # it waits for an aggregator the board trusts
        assert impostor.asked >= 1 and impostor.calls == []

        # the same build answering with a serial the board did not revoke: TLS refuses
        # it, since it does not hold the certificate that serial names
        impostor.stop()
        impostor = _Impostor(_creds(old), fed.port, claims=os.urandom(16).hex().encode())
        _wait(lambda: impostor.asked >= 3, "the collaborator to ask again after failing")
        assert impostor.calls == []
        assert site.proc.poll() is None
        assert "UNAVAILABLE" in log.read_text()

        # its own serial with a leading zero: not on the list as written, the same
        # certificate's name once read as a number (found by the review of the pin)
        impostor.stop()
        impostor = _Impostor(_creds(old), fed.port, claims=b"0" + serial.encode())
        _wait(lambda: impostor.asked >= 2 or impostor.calls, "the collaborator to ask again")
        assert impostor.calls == []
        assert site.proc.poll() is None
    finally:
        impostor.stop()
        fed.kill("site-1")


def test_who_names_the_certificate_presented_from_now_on(
    revoked: tuple[Federation, Enrollment],
) -> None:
    """``Who`` answers the serial of the certificate new handshakes get, across a
    renewal (Server.rotate); the name that serial gives is in that certificate alone;
    the pin notices a revocation when it reads the list again."""
    fed, _ = revoked
    platform = simulated.SimulatedPlatform(fed.sim_dir)
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        agg = [enroll(client, platform, "demo", "aggregator", measurement=NEW_BUILD)
               for _ in range(2)]  # fmt: skip
        site = enroll(client, platform, "demo", "site-1",
                      measurement=fed.measurement("collaborator"))  # fmt: skip
    serials = [_serial(e) for e in agg]
    for e, s in zip(agg, serials, strict=True):
        cert = x509.load_pem_x509_certificate(e.certificate.encode())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == {
            "aggregator",
            session_name(s, "aggregator"),
        }
    server = Server(_creds(agg[0]), PeerPolicy("demo", {"site-1"}))
    server.unary(msg.JOIN, lambda request, peer: b"joined " + peer.service.encode())
    port = server.start()
    listed: set[str] = set()
    pin = AggregatorPin(f"127.0.0.1:{port}", "aggregator", lambda: _creds(site),
                        lambda: set(listed))  # fmt: skip
    try:
        with pin.connect() as c:
            assert pin.serial == format(serials[0], "x")
            assert c.unary(msg.JOIN, b"") == b"joined site-1"
        server.rotate(_creds(agg[1]))
        with pin.connect() as c:
            assert pin.serial == format(serials[1], "x")
            assert c.unary(msg.JOIN, b"") == b"joined site-1"
        assert not pin.stale()  # the list was read a moment ago
        listed.add(format(serials[1], "x"))
        pin._due = 0.0
        assert pin.stale()
        with pytest.raises(TransportError, match=r"^pin: the aggregator's certificate \w+ is rev"):
            pin.connect()
        listed.clear()
        listed.add("service:aggregator")
        pin._list = None  # the list is read again (it is kept for REFRESH_SECONDS)
        with pytest.raises(TransportError, match=r"^pin: the board revoked the service"):
            pin.connect()
    finally:
        server.stop(0)


def test_a_session_lasts_as_long_as_its_certificate(
    revoked: tuple[Federation, Enrollment],
) -> None:
    """Found by the review of the pin: sessions lasted an hour, certificates a day by
    default. The revocation list names the certificate of a session the current
    version no longer accepts only while the session is stored, so a dropped build's
    certificate left the list after an hour, for the rest of its day; and a workload
    lost its session (its counter increments refused) an hour in, long before it
    attests again (two thirds of its certificate's lifetime)."""
    fed, old = revoked
    cert = x509.load_pem_x509_certificate(old.certificate.encode())
    assert old.session_expires == cert.not_valid_after_utc
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        site = enroll(client, simulated.SimulatedPlatform(fed.sim_dir), "demo", "site-2",
                      measurement=fed.measurement("collaborator"))  # fmt: skip
    cert = x509.load_pem_x509_certificate(site.certificate.encode())
    assert site.session_expires == cert.not_valid_after_utc
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > timedelta(seconds=599)


def test_asking_again_reads_the_list_once_per_refresh(
    revoked: tuple[Federation, Enrollment],
) -> None:
    """Found by the second review: the collaborator makes its channel again after every
    failed call (about once a second while the aggregator is away), and each one read
    the SPM's revocation list again: every site, every second, for its whole patience."""
    fed, old = revoked
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        site = enroll(client, simulated.SimulatedPlatform(fed.sim_dir), "demo", "site-1",
                      measurement=fed.measurement("collaborator"))  # fmt: skip
    reads = []

    def listed() -> set[str]:
        reads.append(1)
        with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
            return {str(r["serial"]) for r in client.revocations("demo") if r.get("serial")}

    server = Server(_creds(old), PeerPolicy("demo", {"site-1"}))
    port = server.start()
    pin = AggregatorPin(f"127.0.0.1:{port}", "aggregator", lambda: _creds(site), listed)
    try:
        for _ in range(5):
            with pytest.raises(TransportError, match="revoked by the board"):
                pin.connect()
    finally:
        server.stop(0)
    assert len(reads) == 1
