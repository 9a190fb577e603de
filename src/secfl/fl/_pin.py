"""The collaborator's pin on the aggregator's certificate: whether the board revoked it.

The aggregator checks every collaborator's certificate against the SPM's revocation
list on every call. The other way round, gRPC's Python client never shows which
certificate the server presented: TLS proves only that the far end holds *some*
certificate the policy's CA issued to the aggregator's service. A host that points a
collaborator at an aggregator whose platform or build the board revoked would still
get the site's updates, for the rest of that certificate's lifetime.

So the collaborator asks the aggregator which certificate it presents (``Who``: its
serial), refuses a serial the revocation list names, and connects again to the name
only that certificate carries (:func:`~secfl._internal.x509util.session_name`, a DNS
SAN the SPM writes into every certificate it issues). From then on TLS checks, at
every handshake, reconnections included, that the far end holds that very
certificate:

- an aggregator that answers with its own revoked serial is refused before anything
  of the collaborator's reaches it (the ``Who`` call carries nothing);
- one that answers another aggregator's serial fails the handshake: it does not
  hold the key of the certificate with that name;
- a ``Who`` answer cannot be relayed from an honest aggregator to make a revoked one
  pass, because the name is checked on the connection the updates travel on, not
  on the one that asked.

The list is read again every :data:`REFRESH_SECONDS` while the collaborator runs
(:meth:`AggregatorPin.stale`); once the pinned serial is on it, the channel is closed
and the collaborator asks again. An aggregator that renewed its certificate, or
restarted, presents a new one: the handshake to the old name fails, and the
collaborator asks again then too. Failures of the pin are waited out like an
aggregator that is down (their text starts with :data:`PIN`), up to the
collaborator's patience: an operator may bring up an aggregator the board trusts.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from secfl._internal.values import quoted
from secfl._internal.x509util import session_name
from secfl.errors import SecflError, TransportError
from secfl.fl._channel import Client
from secfl.fl._wire import WHO, Credentials

__all__ = ["PIN", "REFRESH_SECONDS", "AggregatorPin"]

log = logging.getLogger("secfl.fl._collaborator")

#: How often the revocation list is read again while pinned (seconds): as often as
#: the aggregator reads it for its collaborators.
REFRESH_SECONDS = 10.0
#: How long the pin holds without a fresh list (the SPM unreachable) before the
#: collaborator stops sending until it can read one: three refreshes missed.
STALE_SECONDS = 3 * REFRESH_SECONDS
#: What every failure of the pin starts with (the collaborator waits those out).
PIN = "pin: "
#: A serial as ``Who`` answers it: lowercase hex, at most 160 bits (RFC 5280).
_SERIAL = re.compile(rb"[0-9a-f]{1,40}")


@dataclass
class AggregatorPin:
    """Connects to the aggregator at ``address`` only through its current, unrevoked
    certificate (see the module's docstring).

    ``creds`` gives this collaborator's identity (it changes when renewed);
    ``revoked`` reads the SPM's revocation list (serials, and ``service:NAME``).
    """

    address: str
    service: str
    creds: Callable[[], Credentials]
    revoked: Callable[[], set[str]]
    timeout: float = 60.0
    #: The serial (hex) of the certificate the current channel is pinned to.
    serial: str | None = None
    _checked: float = field(default=0.0, repr=False)  # when the list was last read
    _due: float = field(default=0.0, repr=False)  # when to read it again
    _list: set[str] | None = field(default=None, repr=False)  # as last read

    def connect(self) -> Client:
        """A channel pinned to the aggregator's current certificate; TransportError
        (starting with :data:`PIN`) when it is revoked or cannot be checked."""
        creds = self.creds()
        with Client(self.address, creds, server_name=self.service, timeout=self.timeout) as probe:
            answer = probe.unary(WHO, b"")
        if not _SERIAL.fullmatch(answer):
            raise TransportError(f"{PIN}the aggregator's answer to {WHO} is not a serial")
        # as the SPM lists serials and names certificates: "0ab" would pass the list
        # as another serial than "ab", then pin the very certificate "ab" names
        number = int(answer, 16)
        serial = format(number, "x")
        self._check(serial, self._read())
        self.serial = serial
        log.debug("pinned the aggregator's certificate %s", serial)
        name = session_name(number, self.service)
        return Client(self.address, creds, server_name=name, timeout=self.timeout)

    def stale(self) -> bool:
        """True when the channel must be made again: the pinned certificate is now on
        the revocation list, or the list could not be read for :data:`STALE_SECONDS`.
        Reads the list at most every :data:`REFRESH_SECONDS`."""
        now = time.monotonic()
        if self.serial is None or now < self._due:
            return False
        self._due = now + REFRESH_SECONDS
        try:
            revoked = self.revoked()
        except SecflError as exc:
            if now < self._checked + STALE_SECONDS:
                log.warning("could not read the SPM's revocation list (%s): trying again", exc)
                return False
            log.warning("could not read the SPM's revocation list for %.0f s (%s): "
                        "nothing more is sent until it can", now - self._checked, exc)  # fmt: skip
            return True
        self._list, self._checked = revoked, now
        try:
            self._check(self.serial, revoked)
        except TransportError as exc:
            log.warning("%s: connecting again", str(exc).removeprefix(PIN))
            return True
        return False

    def _read(self) -> set[str]:
        """The list, read again unless it was read within :data:`REFRESH_SECONDS`: a
        collaborator makes its channel again after every failed call, about once a
        second while the aggregator is away, and each read costs the SPM."""
        now = time.monotonic()
        if self._list is not None and now < self._checked + REFRESH_SECONDS:
            return self._list
        try:
            found = self.revoked()
        except SecflError as exc:
            raise TransportError(
                f"{PIN}cannot read the SPM's revocation list to check the aggregator ({exc})"
            ) from None
        self._list, self._checked, self._due = found, now, now + REFRESH_SECONDS
        return found

    def _check(self, serial: str, revoked: set[str]) -> None:
        if f"service:{self.service}" in revoked:
            raise TransportError(f"{PIN}the board revoked the service {quoted(self.service)}")
        if serial in revoked:
            raise TransportError(
                f"{PIN}the aggregator's certificate {serial} is revoked by the board "
                "(its platform or build is no longer trusted)"
            )
