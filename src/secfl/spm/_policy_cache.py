"""The policies an SPM serves and what their boards revoked, read from its store and cached.

Stored policy versions never change, so each is parsed once. The *current* version
of a policy, and its revocations, can change under another SPM replica sharing the
database: they are re-read at most every :data:`CURRENT_TTL` seconds, and at once
after this SPM changes them (:meth:`PolicyCache.forget`). ``SECFL_SPM_POLICY_REFRESH``
(seconds, read at start) may only shorten that interval: a shorter one makes the SPM
see a change sooner, never later (the tests use it to wait less). Before each re-read the
store learns what the other replicas committed (:meth:`Store.sync
<secfl.spm._store.Store.sync>`), so their changes are checked like this SPM's own.
"""

from __future__ import annotations

import math
import os
import time

from secfl.errors import Refused, SpmError
from secfl.policy._model import Policy
from secfl.spm._store import PolicyRecord, Store

__all__ = ["CURRENT_TTL", "REFRESH_ENV", "PolicyCache", "refresh_seconds"]

#: Seconds a replica may serve a policy's current version before re-reading it.
CURRENT_TTL = 1.0
#: The environment variable that shortens :data:`CURRENT_TTL` (never lengthens it).
REFRESH_ENV = "SECFL_SPM_POLICY_REFRESH"
#: The shortest interval it may set: more often would only re-read the database per request.
MIN_REFRESH = 0.01


def refresh_seconds() -> float:
    """The re-read interval: :data:`REFRESH_ENV` if set, else :data:`CURRENT_TTL`.

    A value that is not a number from :data:`MIN_REFRESH` to :data:`CURRENT_TTL` is
    refused (the SPM does not start) rather than ignored: a longer interval would let
    a revoked service or superseded version act for longer than the SPM promises.
    """
    text = os.environ.get(REFRESH_ENV, "").strip()
    if not text:
        return CURRENT_TTL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not MIN_REFRESH <= value <= CURRENT_TTL:  # NaN fails too
        raise SpmError(
            f"{REFRESH_ENV}: '{text}' is not a number of seconds from {MIN_REFRESH} "
            f"to {CURRENT_TTL}"
        )
    return value


class PolicyCache:
    """Policy versions (parsed once) and revocations of one :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: Seconds a current version or revocation list is served before a re-read.
        self.ttl = refresh_seconds()
        self._policies: dict[tuple[str, int], Policy] = {}
        self._records: dict[tuple[str, int], PolicyRecord] = {}
        self._current: dict[str, tuple[float, PolicyRecord]] = {}
        self._revoked: dict[str, tuple[float, set[tuple[str, str]]]] = {}

    def get(self, name: str, version: int | None = None) -> tuple[PolicyRecord, Policy]:
        """A policy version (default: the current one), or :class:`Refused` (404)."""
        if version is None:
            cached = self._current.get(name)
            if cached is not None and time.monotonic() - cached[0] < self.ttl:
                return cached[1], self.parsed(cached[1])
        record = self._records.get((name, version)) if version is not None else None
        if record is None:
            if version is None:
                self.store.sync()  # versions other SPMs sharing the database accepted
            with self.store.read() as tx:
                record = (
                    tx.policies.current(name)
                    if version is None
                    else tx.policies.version(name, version)
                )
            if record is not None:
                self._records[(record.name, record.version)] = record
                if version is None:
                    self._current[name] = (time.monotonic(), record)
        if record is None:
            raise Refused(f"policy: no policy named '{name}'", 404)
        return record, self.parsed(record)

    def parsed(self, record: PolicyRecord) -> Policy:
        """The stored policy version, parsed once (stored versions never change)."""
        key = (record.name, record.version)
        if key not in self._policies:
            self._policies[key] = Policy.model_validate_json(record.document)
        return self._policies[key]

    def forget(self, name: str) -> None:
        """Re-read the current version of ``name`` next time (this SPM is changing it)."""
        self._current.pop(name, None)

    def revoked(self, name: str) -> set[tuple[str, str]]:
        """What the board revoked in policy ``name``: every (kind, subject)."""
        cached = self._revoked.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        self.store.sync()  # what other SPMs sharing the database revoked
        with self.store.read() as tx:
            found = tx.revocations.in_force(name)
        self._revoked[name] = (time.monotonic(), found)
        return found

    def forget_revocations(self, name: str) -> None:
        """Re-read the revocations of ``name`` next time (this SPM changed them)."""
        self._revoked.pop(name, None)
