"""The write of one counter increment, run in the SPM's group commit.

A compare-and-increment (``expect``) moves the counter only from that value: at any
other value it is refused (409) and left as it is (see
:meth:`secfl.spm._service.Spm.increment_async`). With ``round``, the round the
increment commits is logged in the same transaction, at the value it gets.

A lost answer. An aggregator's increment may commit and its answer never arrive: the
connection broke after the SPM committed it. Sent again, the same request would find
the counter one past ``expect`` and be refused as if another aggregator had moved it,
and the aggregator would stop, telling its operator that another aggregator is
running. So a compare-and-increment may carry a random name (``request``, 128 bits,
:class:`secfl.spm.client.SpmClient` sends one with every ``expect``): the increment's
audit entry records it with who made it (the service and its session's certificate
serial), and the SPM's floors keep the newest such entry per counter, from its own
commits and from the verified log at start and at catch-up. A request that finds the
counter one past ``expect``, with that counter's newest named increment its own name
made by the same session, is answered with that value and changes nothing (its round
was logged the first time). Anything else at that value is refused as before: a name
is no credential (names are in the public log; the session checks run before this
one, and a name copied by another session does not match its ``by``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secfl.errors import Refused
from secfl.spm._records import SessionRecord
from secfl.spm._sessions import current_version, refuse_revoked, refuse_superseded
from secfl.spm._tx import Tx

__all__ = ["Increment"]


@dataclass(frozen=True)
class Increment:
    """``Increment(...)(tx)``: the counter moved on by one in ``tx``; its new value."""

    policy: str
    counter: str
    session: SessionRecord
    expect: int | None = None
    round: dict[str, Any] | None = None
    request: str | None = None

    @property
    def by(self) -> str:
        return f"{self.session.service}/{self.session.serial}"

    def __call__(self, tx: Tx) -> int:
        session = self.session
        refuse_superseded(current_version(tx, self.policy), session.policy_version, self.policy)
        refuse_revoked(tx, self.policy, session)
        seen = None
        if self.expect is not None:
            seen = tx.counters.get(self.policy, self.counter)
            if seen != self.expect:
                if seen is not None and self._landed(tx, seen):
                    return seen  # this very increment committed: its answer was lost
                raise Refused(
                    f"counter: '{self.counter}' of policy '{self.policy}' is at {seen}, not "
                    f"{self.expect}: another workload moved it",
                    409,
                )
        value = int(tx.counters.increment(self.policy, self.counter, seen=seen))
        detail: dict[str, Any] = {
            "counter": self.counter,
            "value": value,
            "service": session.service,
        }
        if self.request is not None and self.expect is not None:
            detail.update(request=self.request, by=self.by)
            tx.note(("request", self.policy, self.counter, value, self.request, self.by))
        tx.audit.append("counter.incremented", self.policy, detail)
        if self.round is not None:
            entry = {**self.round, "counter": value, "service": session.service}
            tx.audit.append("fl.round", self.policy, entry)
        return value

    def _landed(self, tx: Tx, seen: int) -> bool:
        """Whether the counter is where this named request took it: one past ``expect``,
        its newest named increment this request by this session."""
        if self.request is None or self.expect is None or seen != self.expect + 1:
            return False
        return _newest_request(tx, self.policy, self.counter) == (seen, self.request, self.by)


def _newest_request(tx: Tx, policy: str, counter: str) -> tuple[int, str, str] | None:
    """(value, request, by) of the counter's newest named compare-and-increment: one of
    this transaction (a group commit's batch), else the floors' (committed)."""
    for change in reversed(tx.changes):
        if change[0] == "request" and change[1:3] == (policy, counter):
            return (change[3], change[4], change[5])
    floors = tx.floors
    return None if floors is None else floors.requests.get((policy, counter))
