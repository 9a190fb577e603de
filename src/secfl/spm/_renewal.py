"""A workload that attests again ends the session it replaces.

A workload renews its certificate and session two thirds into their lifetime
(:class:`secfl.fl._workload_identity.WorkloadIdentity`). The old session used to
stay valid until it expired, a day or, as a policy may set, up to a year: its token
still moved counters and wrote reports. The attest request now names the token it
replaces (the token itself, which only its holder has: the database holds only
digests, and its host could end anyone's session by one). In the commit that opens
the new session, the old one's row is deleted and a ``session.ended`` audit entry
written; the SPM keeps the ended digests beside its floors, rebuilt from the verified
log at start and followed across SPMs sharing the database, so a row the host puts
back (it carries a valid MAC) is refused all the same.

A revocation of the board ends the sessions it stops the same way, for good, by their
certificates' serials (:func:`ended_by_revocation`): a readmission lifts the
revocation, not what it ended.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secfl.spm._tx import Tx

__all__ = [
    "ENDED",
    "ENDED_BY_REVOCATION",
    "EVENT",
    "EndedSessions",
    "end_replaced",
    "ended_by_revocation",
    "ended_change",
    "ended_changes",
]

#: The audit event of a session its workload replaced.
EVENT = "session.ended"
#: How the SPM refuses a replaced session's token (a request sent with it while its
#: workload attested again is sent again with the new one: nothing of it was applied).
ENDED = "session: this session ended when its workload attested again"
#: How the SPM refuses a session a revocation of the board ended (a readmission lifts the
#: revocation, not what it ended: the workload attests again).
ENDED_BY_REVOCATION = (
    "session: this session was ended by a revocation of the board, which a readmission "
    "does not undo; attest again"
)
#: Sessions one ``session.ended`` entry of a revocation names at most (its detail is bounded).
_PER_ENTRY = 1000
#: The longest a session lasts (a certificate's longest lifetime, which it shares).
MAX_LIFETIME = 366 * 86400
#: Ended sessions kept before expired ones are dropped (then twice the live count).
_PRUNE_FLOOR = 1024


def end_replaced(
    tx: Tx, policy: str, service: str, replaces: str | None, serial: str, now: datetime
) -> None:
    """End the session of token ``replaces``: holding the token is all the authority it
    takes. A session of another service or policy is left alone. One whose row is
    missing is ended all the same, for as long as any session may last: the database's
    host could take the row away while the workload renews and put it back after
    (found by a review), and an ended token must stay refused. (Its service cannot be
    told then: the entry names the service that presented it.) A token already ended
    (a renewal tried again after its answer was lost) is not ended twice."""
    if not replaces:
        return
    digest = hashlib.sha256(replaces.encode()).digest()
    if tx.floors is not None and digest in tx.floors.ended:
        return
    old = tx.sessions.get(digest)
    if old is not None and (old.policy != policy or old.service != service):
        return
    if old is not None:
        tx.sessions.delete(digest)
    expires = old.expires_at if old is not None else now + timedelta(seconds=MAX_LIFETIME)
    detail = {
        "service": service,
        "token_sha256": digest.hex(),
        "expires": expires.isoformat(),
        "replaced_by": serial,
        **({} if old is not None else {"row": "missing"}),
    }
    tx.audit.append(EVENT, policy, detail)
    change = ended_change(policy, detail)
    assert change is not None
    tx.note(change)


def ended_change(policy: str | None, detail: dict[str, Any]) -> tuple[Any, ...] | None:
    """The floor change one ``session.ended`` entry records, or None."""
    digest, when = detail.get("token_sha256"), detail.get("expires")
    if policy is None or not isinstance(digest, str) or not isinstance(when, str):
        return None
    try:
        token = bytes.fromhex(digest)
        expires = datetime.fromisoformat(when)
    except ValueError:
        return None
    if len(token) != 32 or expires.tzinfo is None:
        return None
    return ("ended", token, expires)


def ended_by_revocation(
    tx: Tx, policy: str, revoked: str, sessions: list[tuple[str, str, datetime]]
) -> None:
    """End for good the sessions (service, certificate serial, expiry) a revocation
    (``revoked``: its kind and subject) stops: a readmission lifts the revocation, and
    the workload attests again, but what the revocation ended stays ended (its session
    and its certificate, which the revocation list keeps naming). Before (found by a
    review), a readmission brought back every session and certificate the revocation had
    stopped, those of a machine while it was compromised too. By serial: the index of
    issued certificates names them all, rows the host deleted included."""
    for start in range(0, len(sessions), _PER_ENTRY):
        chunk = sessions[start : start + _PER_ENTRY]
        detail = {
            "revoked": revoked,
            "sessions": [
                {"service": service, "serial": serial, "expires": expires.isoformat()}
                for service, serial, expires in chunk
            ],
        }
        tx.audit.append(EVENT, policy, detail)
        for change in ended_changes(policy, detail):
            tx.note(change)


def ended_changes(policy: str | None, detail: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The floor changes one ``session.ended`` entry records: the token its workload's
    renewal replaced (:func:`ended_change`), or the certificate serials a revocation
    ended (``("ended-serial", policy, serial, expires)``)."""
    found = ended_change(policy, detail)
    if found is not None:
        return [found]
    sessions = detail.get("sessions")
    if policy is None or not isinstance(sessions, list):
        return []
    changes: list[tuple[Any, ...]] = []
    for session in sessions:
        if not isinstance(session, dict):
            continue
        serial, when = session.get("serial"), session.get("expires")
        if not isinstance(serial, str) or not serial or not isinstance(when, str):
            continue
        try:
            expires = datetime.fromisoformat(when)
        except ValueError:
            continue
        if expires.tzinfo is not None:
            changes.append(("ended-serial", policy, serial, expires))
    return changes


@dataclass
class EndedSessions:
    """Token digests of sessions ended by renewal, and (policy, certificate serial) of
    those a revocation ended, until they would have expired."""

    until: dict[bytes, datetime] = field(default_factory=dict)
    serials: dict[tuple[str, str], datetime] = field(default_factory=dict)
    _prune_at: int = _PRUNE_FLOOR
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, token_sha256: bytes, expires: datetime) -> None:
        with self._lock:
            self.until[token_sha256] = expires
            self._prune()

    def add_serial(self, policy: str, serial: str, expires: datetime) -> None:
        with self._lock:
            self.serials[(policy, serial)] = expires
            self._prune()

    def _prune(self) -> None:
        if len(self.until) + len(self.serials) >= self._prune_at:
            now = datetime.now(UTC)
            self.until = {t: e for t, e in self.until.items() if e > now}
            self.serials = {s: e for s, e in self.serials.items() if e > now}
            self._prune_at = max(_PRUNE_FLOOR, 2 * (len(self.until) + len(self.serials)))

    def __contains__(self, token_sha256: object) -> bool:
        with self._lock:
            return token_sha256 in self.until

    def by_revocation(self, policy: str, serial: str) -> bool:
        """Whether a revocation ended the session of certificate ``serial`` of ``policy``."""
        with self._lock:
            return bool(serial) and (policy, serial) in self.serials
