"""Who holds a session token, and may they still act?

Attestation opens a session for a service; the token then authorises that
service's counters, reports and volume records. A session is checked at every use
against the *current* policy, not only the one it was opened under: its service
must still be in the policy, what it was attested as must still be accepted (code,
platform, and the site key that signed its enrolment), and nothing of it
(certificate, service, measurement, platform) may be revoked.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from secfl.errors import Refused
from secfl.policy._model import Policy, Service
from secfl.spm._evidence_checks import check_measurements, platform_refusal
from secfl.spm._policy_cache import PolicyCache
from secfl.spm._renewal import ENDED, ENDED_BY_REVOCATION
from secfl.spm._revocation import revocation_keys, revoked_reason, session_identity
from secfl.spm._site_key import site_key_change
from secfl.spm._store import SessionRecord, Store
from secfl.spm._tx import Tx

__all__ = ["SessionGate", "current_version", "refuse_revoked", "refuse_superseded"]

#: Caches are cleared past this many entries (they are only a shortcut).
_CACHE_LIMIT = 100_000


class SessionGate:
    """Admits a session token for a policy, or refuses it (401) saying why."""

    def __init__(self, store: Store, policies: PolicyCache) -> None:
        self.store = store
        self.policies = policies
        self._sessions: dict[bytes, SessionRecord] = {}
        #: (token digest, policy version) pairs already checked against that version.
        self._admitted: set[tuple[bytes, int]] = set()

    def admit(self, token: str, policy_name: str) -> tuple[SessionRecord, Service]:
        """The live session of ``token`` and its service in the current policy version."""
        token_hash = hashlib.sha256(token.encode()).digest()
        self._not_ended(token_hash)  # its row is gone too: say why
        session = self._session(token_hash)
        if session is None or session.policy != policy_name:
            raise Refused("session: unknown session token for this policy", 401)
        if session.expires_at <= datetime.now(UTC):
            raise Refused("session: the session token has expired; attest again", 401)
        record, policy = self.policies.get(policy_name)
        service = policy.service(session.service)
        admitted = (token_hash, record.version)
        if service is None or admitted not in self._admitted:
            why = no_longer_accepted(policy, record.version, session)
            if why is not None:
                raise Refused(f"session: {why}", 401)
            if len(self._admitted) > _CACHE_LIMIT:
                self._admitted.clear()
            self._admitted.add(admitted)
        assert service is not None
        identity = session_identity(session)
        refusal = revoked_reason(
            self.policies.revoked(policy_name), session.service, session.serial, identity
        )
        if refusal is not None:
            raise Refused(f"revoked: {refusal}; this session is over", 401)
        self._not_ended(token_hash, session)  # (again: the revocations caught up)
        return session, service

    def _not_ended(self, token_hash: bytes, session: SessionRecord | None = None) -> None:
        """Refuse a session its workload replaced by attesting again, or that a revocation
        ended, readmitted since or not (secfl.spm._renewal)."""
        floors = self.store.integrity.floors if self.store.integrity is not None else None
        if floors is not None and token_hash in floors.ended:
            raise Refused(f"{ENDED}; use the new session's token", 401)
        if (
            floors is not None
            and session is not None
            and floors.ended.by_revocation(session.policy, session.serial)
        ):  # while the revocation is in force, it says so (this view is fresher)
            identity = session_identity(session)
            revoked = floors.revoked_in(session.policy)
            refusal = revoked_reason(revoked, session.service, session.serial, identity)
            why = f"revoked: {refusal}; this session is over" if refusal else ENDED_BY_REVOCATION
            raise Refused(why, 401)

    def _session(self, token_hash: bytes) -> SessionRecord | None:
        """A session by token digest; sessions never change once made, so they are cached."""
        session = self._sessions.get(token_hash)
        if session is None:
            with self.store.read() as tx:
                session = tx.sessions.get(token_hash)
            if session is not None:
                if len(self._sessions) > _CACHE_LIMIT:
                    self._sessions.clear()
                self._sessions[token_hash] = session
        return session


def no_longer_accepted(policy: Policy, version: int, session: SessionRecord) -> str | None:
    """Why version ``version`` (``policy``) no longer accepts what ``session`` was
    attested as, or None if it does: its service gone, its kind of evidence or its
    measurement no longer accepted. Sessions end at once; the SPM's revocation list
    names their certificates, so peers refuse them at once too."""
    if policy.service(session.service) is None:
        return f"service '{session.service}' is not in version {version} of the policy any more"
    if session.policy_version == version:
        return None
    identity = session_identity(session)
    if identity["kind"] not in policy.platforms.accept:
        return (
            f"{identity['kind']} evidence is no longer accepted by version {version} of the "
            "policy; attest again"
        )
    try:
        check_measurements(policy, session.service, identity["kind"], identity["measurements"])
    except Refused as exc:
        return (
            f"what '{session.service}' was attested as is no longer accepted by version "
            f"{version} of the policy ({exc})"
        )
    why = site_key_change(policy, version, session.service, identity)
    if why is not None:
        return why
    why = platform_refusal(policy, identity)
    if why is not None:
        return (
            f"version {version} of the policy refuses the platform '{session.service}' was "
            f"attested on: {why}; attest again"
        )
    return None


def current_version(tx: Tx, policy_name: str) -> int | None:
    """The policy's current version as this write transaction sees it: the floor, which
    every commit and every replica's commit (caught up at the start of the write)
    raised; without floors (a store opened without integrity), the stored row."""
    floors = tx.floors
    if floors is not None:
        return floors.policies.get(policy_name)
    record = tx.policies.current(policy_name)
    return None if record is None else record.version


def refuse_superseded(current: int | None, attested: int, policy_name: str) -> None:
    """Refuse a session attested under an older version than ``current``."""
    if current is not None and current > attested:
        raise Refused(
            f"policy: version {current} of '{policy_name}' replaced this session's version "
            f"{attested}: attest again (start the workload again with `secfl run`)",
            409,
        )


def refuse_revoked(tx: Tx, policy_name: str, session: SessionRecord) -> None:
    """Refuse, inside a session's write, a session the board revoked: the check at
    admission reads a cached view, and a revocation may commit while the call waits
    for its write; run in the same transaction, the log never holds a revoked
    session's write after its revocation. Nor after its ``session.ended`` (its workload
    attested again, here or on another SPM sharing the database): the write caught up
    with the log, the admission may not have (found by a review). Nor a session a
    revocation ended, readmitted since or not (:func:`secfl.spm._renewal.ended_by_revocation`)."""
    floors = tx.floors
    ended = any(c[0] == "ended" and c[1] == session.token_sha256 for c in tx.changes)
    if ended or (floors is not None and session.token_sha256 in floors.ended):
        raise Refused(f"{ENDED}; use the new session's token", 401)
    identity = session_identity(session)
    keys = revocation_keys(session.service, session.serial, identity)
    revoked = tx.revocations.of(policy_name, keys)  # its own keys only: the hot path
    refusal = revoked_reason(revoked, session.service, session.serial, identity)
    if refusal is not None:
        raise Refused(f"revoked: {refusal}; this session is over", 401)
    by_revocation = any(
        c[0] == "ended-serial" and c[1:3] == (policy_name, session.serial) for c in tx.changes
    )
    if by_revocation or (
        floors is not None and floors.ended.by_revocation(policy_name, session.serial)
    ):
        raise Refused(ENDED_BY_REVOCATION, 401)
