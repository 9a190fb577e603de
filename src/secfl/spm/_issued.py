"""The certificates this SPM knows it issued, and what each was attested as.

The revocation list names, beside the board's revocations, every live certificate
they imply: one issued to a service, build or platform the board revoked, or to a
workload the current policy version no longer accepts. Sessions record what a
workload was attested as, but session rows live in the database, outside the SPM's
TEE: a host that deletes one takes the certificate off the list, and nothing notices
(a session has no floor). So every issue is written, with the full attested identity,
into the ``certificate.issued`` audit entry, and the SPM keeps an index of the live
ones beside its floors (:class:`~secfl.spm._integrity.Floors`): rebuilt from the
verified log at start, raised by its own commits and by what other SPMs sharing the
database committed. A deleted row, or a deleted entry (the chain breaks), changes
nothing in it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from secfl._internal.canonical import canonical_json

__all__ = ["EVENT", "Issued", "IssuedIndex", "issued_change", "issued_detail"]

#: The audit event of an issued certificate.
EVENT = "certificate.issued"
#: Index entries kept before expired ones are dropped (then twice the live count).
_PRUNE_FLOOR = 1024


@dataclass(frozen=True)
class Issued:
    """A certificate issued on attestation: to whom, under which version, as what."""

    serial: str
    service: str
    policy_version: int
    not_after: datetime
    #: Canonical JSON of ``{"kind", "measurements", "platform", "platforms"}``, as a
    #: session stores it (:func:`secfl.spm._revocation.session_identity` reads both).
    identity: str


def issued_detail(
    service: str, serial: str, not_after: datetime, version: int, identity: dict[str, Any]
) -> dict[str, Any]:
    """The ``certificate.issued`` audit entry's detail."""
    return {
        "service": service,
        "serial": serial,
        "not_after": not_after.isoformat(),
        "policy_version": version,
        "identity": identity,
    }


def issued_change(policy: str | None, detail: dict[str, Any]) -> tuple[Any, ...] | None:
    """The index change one ``certificate.issued`` entry records, or None for one
    written before entries carried the identity (those certificates are known from
    their session rows only)."""
    service, serial = detail.get("service"), detail.get("serial")
    version, identity, when = (
        detail.get("policy_version"),
        detail.get("identity"),
        detail.get("not_after"),
    )
    if (
        policy is None
        or not isinstance(service, str)
        or not isinstance(serial, str)
        or not serial
        or not isinstance(version, int)
        or isinstance(version, bool)
        or not isinstance(identity, dict)
        or not isinstance(when, str)
    ):
        return None
    try:
        not_after = datetime.fromisoformat(when)
    except ValueError:
        return None
    if not_after.tzinfo is None:
        return None
    try:
        text = canonical_json(identity).decode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return None
    return ("issued", policy, Issued(serial, service, version, not_after, text))


@dataclass
class IssuedIndex:
    """policy -> serial -> :class:`Issued`, expired ones dropped as it grows."""

    by_policy: dict[str, dict[str, Issued]] = field(default_factory=dict)
    _count: int = 0
    _prune_at: int = _PRUNE_FLOOR
    _identities: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, policy: str, issued: Issued) -> None:
        with self._lock:
            # a workload attests again and again as the same thing: one copy of it
            identity = self._identities.setdefault(issued.identity, issued.identity)
            if identity is not issued.identity:
                issued = replace(issued, identity=identity)
            known = self.by_policy.setdefault(policy, {})
            if issued.serial not in known:
                self._count += 1
            known[issued.serial] = issued
            if self._count >= self._prune_at:
                self._prune(datetime.now(UTC))

    def live(self, policy: str, now: datetime) -> list[Issued]:
        """The certificates of ``policy`` that have not expired at ``now``."""
        with self._lock:
            return [i for i in self.by_policy.get(policy, {}).values() if i.not_after > now]

    def _prune(self, now: datetime) -> None:
        for policy in list(self.by_policy):
            known = self.by_policy[policy]
            for serial in [s for s, i in known.items() if i.not_after <= now]:
                del known[serial]
            if not known:
                del self.by_policy[policy]
        self._count = sum(len(k) for k in self.by_policy.values())
        self._identities = {
            i.identity: i.identity for k in self.by_policy.values() for i in k.values()
        }
        self._prune_at = max(_PRUNE_FLOOR, 2 * self._count)
