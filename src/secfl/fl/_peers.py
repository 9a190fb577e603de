"""Who may call: a peer's certificate, parsed once, checked on every call.

A peer is authorised when its certificate chains to the policy's identity CA (TLS
checks that at the handshake), has not expired, names one service of this policy
(the URI SAN ``secfl://POLICY/SERVICE``) that may call here, and neither its serial
nor its service is revoked. What a certificate says is parsed once and cached
(:class:`_Parsed`); the checks run on every call (:meth:`PeerPolicy.check`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509

from secfl.errors import StaleRevocations, TransportError

__all__ = ["PEER_CACHE_SIZE", "STALE_SECONDS", "Peer", "PeerPolicy"]

#: Peers' parsed certificates :class:`PeerPolicy` keeps: one per collaborator's
#: current certificate, with room for renewals; past it the least recent goes.
PEER_CACHE_SIZE = 256
#: How long ``revoked`` may go without being read again (:attr:`PeerPolicy.read_at`)
#: before no peer is accepted: three missed reads (one every 10 s).
STALE_SECONDS = 30.0


@dataclass(frozen=True)
class Peer:
    """An authenticated peer: its policy, service and certificate serial (hex); on the
    server, ``cancel`` ends the call it made (a handler blocked waiting for its next
    piece wakes up)."""

    policy: str
    service: str
    serial: str
    cancel: Callable[[], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _Certificate:
    """What a peer certificate says: a pure function of its bytes."""

    serial: str
    expires: datetime
    policy: str
    service: str


def _read(cert_pem: bytes) -> _Certificate:
    """Parse a peer certificate; TransportError unless it names one secfl service."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        raise TransportError("peer: the certificate names no secfl service") from None
    names = [u.removeprefix("secfl://").split("/", 1) for u in uris if u.startswith("secfl://")]
    if len(names) != 1 or len(names[0]) != 2:
        raise TransportError("peer: the certificate names no secfl service")
    policy, service = names[0]
    return _Certificate(format(cert.serial_number, "x"), cert.not_valid_after_utc, policy, service)


class _Parsed:
    """A bounded LRU from a certificate's exact bytes to what it says (:func:`_read`).

    Why this is safe: the entry is a pure function of the key, so it cannot go stale
    and two different certificates never share one (the key is the whole encoding,
    not a serial or a hash). It holds no verdict: the chain to the policy's CA is
    verified by TLS at each connection's handshake (gRPC hands over only a
    certificate that passed it), and :meth:`PeerPolicy.check` evaluates expiry,
    policy, service and revocation, which change over time, on every call. A
    certificate that does not parse is not cached, and the bound keeps a peer that
    cycles through certificates from growing the cache.
    """

    def __init__(self, size: int = PEER_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[bytes, _Certificate] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, cert_pem: bytes) -> _Certificate:
        key = bytes(cert_pem)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        parsed = _read(key)  # outside the lock: parsing is the slow part
        with self._lock:
            self._items[key] = parsed
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return parsed

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class PeerPolicy:
    """Who may call: services (by name) of one policy, minus revoked serials and services.

    ``revoked`` is a set the caller keeps current (from the SPM's revocation list):
    certificate serials (hex) and ``service:NAME`` entries. ``policy``,
    ``services`` and ``revoked`` may change at any time: :meth:`check` reads them on
    every call; only the parsing of certificates is cached (see :class:`_Parsed`).
    ``read_at`` (``time.monotonic()``), when the caller sets it, is when ``revoked``
    was last read: past :data:`STALE_SECONDS` nobody is accepted (StaleRevocations), so
    a host that keeps the SPM's list away does not keep a revoked peer in.
    """

    policy: str
    services: set[str]
    revoked: set[str] = field(default_factory=set)
    read_at: float | None = None
    parsed: _Parsed = field(default_factory=_Parsed, init=False, repr=False, compare=False)
    #: When the request of the newest read was sent, and the sequence number of the
    #: list in force (:meth:`apply_list`).
    _sent: float = field(default=float("-inf"), init=False, repr=False, compare=False)
    _sequence: int = field(default=-1, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def apply_list(self, revoked: set[str], sent: float, sequence: int) -> bool:
        """``revoked``, the list of sequence number ``sequence`` read by a request sent
        at ``sent`` (``time.monotonic()``); False if it was set aside.

        Lists are ordered by what they hold, not by when they were asked for: one of a
        lower number than the list in force was read from older data and is set aside
        (the reading thread's and the round path's reads may end out of order, and an
        SPM may answer an earlier request from newer data than a later one: its cached
        answer is dropped by a revocation; found by reviews). One of the same number
        should hold the same revocations, but SPMs sharing a database may each answer
        from their floors as far as they read the log when they were asked, while the
        host deletes the revocation's row: the union is in force (the first answer at a
        number, without the revocation, kept till the head moved on, and the revoked
        site with it: found by a hostile review). The list is as old as its
        request: a host that held the SPM's answer back (trickled, each piece within the
        socket's timeout) made an old list count as just read, and a peer revoked
        meanwhile was accepted for :data:`STALE_SECONDS` more. A list at least as new as
        the one in force is at least as fresh as its own request and that list's."""
        with self._lock:
            if sequence < self._sequence:
                return False
            if sequence > self._sequence:
                self.revoked, self._sequence = revoked, sequence
            else:
                self.revoked = self.revoked | revoked
            if sent > self._sent:
                self.read_at, self._sent = sent, sent
            return True

    def check(self, cert_pem: bytes | None, *, now: datetime | None = None) -> Peer:
        """The peer named by ``cert_pem``, or TransportError naming the failed check."""
        self._fresh()
        if not cert_pem:
            raise TransportError("peer: no client certificate")
        cert = self.parsed(cert_pem)
        serial, service = cert.serial, cert.service
        if cert.expires <= (now or datetime.now(UTC)):
            raise TransportError(
                f"peer: certificate {serial} expired at {cert.expires.isoformat()}: attest again"
            )
        if cert.policy != self.policy:
            raise TransportError(
                f"peer: certificate is for policy '{cert.policy}', not '{self.policy}'"
            )
        if service not in self.services:
            raise TransportError(f"peer: service '{service}' may not call here")
        self._not_revoked(serial, service)
        return Peer(cert.policy, service, serial)

    def recheck(self, peer: Peer) -> None:
        """``peer``, accepted when its call began, against the list as it stands now
        (read within :data:`STALE_SECONDS`, not naming it): what it sent is taken in only
        then, so an update that came in while the board revoked its sender is refused.
        A revocation the list holds is a refusal even once the list is stale: stale, it
        refuses nothing (StaleRevocations: the sender tries again), and a site it names
        was waited for, as silent, rather than refused for the round."""
        self._not_revoked(peer.serial, peer.service)
        self._fresh()

    def _fresh(self) -> None:
        if self.read_at is not None and time.monotonic() - self.read_at > STALE_SECONDS:
            raise StaleRevocations(
                f"peer: the SPM's revocation list could not be read for {STALE_SECONDS:.0f} s: "
                "no peer is accepted until it can"
            )

    def _not_revoked(self, serial: str, service: str) -> None:
        revoked = self.revoked  # one list for both checks (the reading thread replaces it)
        if serial and serial in revoked:
            raise TransportError(f"peer: certificate {serial} of '{service}' is revoked")
        if f"service:{service}" in revoked:
            raise TransportError(f"peer: service '{service}' is revoked by the board")
