"""A Flower service's attested identity on the network, kept current.

Flower authenticates a SuperLink by one root file and a host name: any certificate
that root issued passes, for as long as it is valid. A SuperLink certificate that is
a policy secret is therefore trusted by every SuperNode until it expires, even when
the board revokes the platform or the build that holds it. Under secfl the hop
between a SuperNode and its SuperLink's gate is mutual TLS with the certificates the
SPM issues to attested workloads (short-lived, one per attestation), on both sides:

- each side presents its own certificate, attested again by :meth:`AttestedTls.refresh`
  when two thirds of its lifetime have passed (new connections then present the new
  one);
- each side accepts only a certificate of the policy's identity CA for the services
  it expects (the gate: the policy's sites; a SuperNode's relay: the ``superlink``
  service), unexpired, and neither it nor its service on the board's revocation
  list (:class:`~secfl.fl._peers.PeerPolicy`, implied revocations included: a revoked
  platform or measurement revokes every certificate issued to it);
- the list is read again every :data:`REFRESH_SECONDS`; when it cannot be read for
  :data:`STALE_SECONDS`, nothing is accepted until it can (fail closed).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from secfl._internal import files
from secfl.errors import SecflError, StaleRevocations, TransportError
from secfl.fl._peers import Peer, PeerPolicy
from secfl.fl._workload_identity import WorkloadIdentity

__all__ = ["REFRESH_SECONDS", "STALE_SECONDS", "SUPERLINK", "AttestedTls"]

log = logging.getLogger("secfl.flower")

#: The SuperLink's service name in a Flower policy (its certificate's DNS name).
SUPERLINK = "superlink"
#: How often the revocation list is read again (seconds), as secfl's own services do.
REFRESH_SECONDS = 10.0
#: How long without a fresh list before nothing is accepted (three reads missed).
STALE_SECONDS = 3 * REFRESH_SECONDS


def _load_identity(context: ssl.SSLContext, ident: WorkloadIdentity) -> None:
    """The workload's certificate and key into ``context``; the key only ever in a
    file no file system names (it is read once, here)."""
    with (
        files.memory_file(ident.creds.cert_pem, "cert.pem") as cert,
        files.memory_file(ident.creds.key_pem, "key.pem") as key,
    ):
        context.load_cert_chain(cert, key)
    context.load_verify_locations(cadata=ident.creds.ca_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2


@dataclass
class AttestedTls:
    """TLS contexts for this workload's current certificate, and the check of a peer.

    ``peers`` are the services whose certificates are accepted. ``server`` and
    ``client`` are replaced (never changed in place: handshakes may be using them in
    another thread) when the certificate is renewed.
    """

    ident: WorkloadIdentity
    peers: PeerPolicy
    server: ssl.SSLContext = field(init=False)
    client: ssl.SSLContext = field(init=False)
    #: ``client`` and the certificate (PEM) it presents, taken together
    client_with_cert: tuple[ssl.SSLContext, bytes] = field(init=False)
    #: monotonic time of the last good read of the revocation list
    checked: float = field(default=0.0, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _renewed: list[Callable[[], None]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._contexts()

    @classmethod
    def from_env(cls, env: Mapping[str, str], peers: Iterable[str] | None = None) -> AttestedTls:
        """From what ``secfl run`` left the workload (``$SECFL_IDENTITY`` and friends);
        ``peers`` by default every other service of the policy it attested to. The
        revocation list is read once before anything is accepted."""
        ident = WorkloadIdentity.from_env(env)
        if peers is None:
            peers = [s.name for s in ident.policy_document().services if s.name != ident.service]
        tls = cls(ident, PeerPolicy(ident.policy, set(peers)))
        tls.read_revocations()
        if not tls.checked:
            raise TransportError(
                "flower: cannot read the SPM's revocation list: no peer can be checked; "
                "start this again once the SPM answers"
            )
        return tls

    def _contexts(self) -> None:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.verify_mode = ssl.CERT_REQUIRED  # a peer without a certificate never gets in
        server.set_alpn_protocols(["http/1.1"])
        _load_identity(server, self.ident)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        _load_identity(client, self.ident)
        # one assignment each: a connection takes a context and knows what it presents
        self.client_with_cert = (client, self.ident.creds.cert_pem)
        self.server, self.client = server, client

    def on_renewal(self, call: Callable[[], None]) -> None:
        """Call ``call`` after the certificate was renewed (the contexts replaced)."""
        self._renewed.append(call)

    def check(self, der: bytes | None) -> Peer:
        """The peer whose certificate (DER, as TLS received it) is ``der``, or
        TransportError naming the failed check."""
        if time.monotonic() - self.checked > STALE_SECONDS:
            raise StaleRevocations(
                f"peer: the SPM's revocation list could not be read for {STALE_SECONDS:.0f} s: "
                "no peer is accepted until it can"
            )
        if not der:
            raise TransportError("peer: no certificate")
        return self.peers.check(ssl.DER_cert_to_PEM_cert(der).encode("ascii"))

    def read_revocations(self) -> None:
        """Read the board's revocation list; a failure is logged (and counts towards
        :data:`STALE_SECONDS`), never raised. An answer read from older data than one
        before (a lower sequence number) is such a failure: the newer list stays in
        force (:meth:`~secfl.fl._workload_identity.WorkloadIdentity.revoked`)."""
        sent = time.monotonic()  # the list is as old as its request, however late it came
        try:
            self.peers.revoked = self.ident.revoked()
        except SecflError as exc:
            log.warning("secfl: could not read the SPM's revocation list (%s): trying again", exc)
            return
        self.checked = sent

    def renew(self, *, force: bool = False) -> bool:
        """Attest again for a new certificate when due (or ``force``); True if renewed.
        A failure is logged: the old certificate serves until it expires."""
        try:
            renewed = self.ident.renew(force=force)
        except SecflError as exc:
            log.warning("secfl: could not attest again for a new certificate (%s)", exc)
            return False
        if renewed:
            self._contexts()
            for call in self._renewed:
                call()
        return renewed

    def refresh(self) -> None:
        """Renew the certificate when due, then read the revocation list."""
        self.renew()
        self.read_revocations()

    def start(self) -> None:
        """Refresh every :data:`REFRESH_SECONDS` in a thread, until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.wait(REFRESH_SECONDS):
                self.refresh()

        threading.Thread(target=loop, name="secfl-attested-tls", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
