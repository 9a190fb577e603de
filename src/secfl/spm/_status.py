"""A policy's state at a glance, for the board and the operators (``secfl status``).

Read from what the SPM can vouch for: the current policy version (an authenticated
row) and the board members whose signatures approved it (verified again here), the
counters and live sessions (authenticated rows), the revocations in force, and what
the verified audit log says (:mod:`secfl.spm._status_index`): the aggregator's last
``fl.round``, each service's last attestation and refusal, and the clone audit's
findings, with, for each revocation request, whether the board has acted on it since.

Anyone who can reach the SPM may ask, so an answer costs little and is bounded:
the index is read, not the log; the entries the log grew by since the last answer
are taken in once; one answer is computed at a time (:class:`StatusDesk`), and the
same answer is served again while the log has not moved (for up to a second, as
sessions expire).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from secfl.errors import PolicyError, Refused
from secfl.policy._signatures import POLICY_DOMAIN, Signature, check_approval
from secfl.spm._revocation import revoked_reason, session_identity
from secfl.spm._status_index import MAX_FINDINGS, Finding, StatusIndex

if TYPE_CHECKING:
    from secfl.policy._model import Policy
    from secfl.spm._service import Spm
    from secfl.spm._store import PolicyRecord

__all__ = ["MAX_FINDINGS", "MAX_WAITING", "StatusDesk", "request_state"]

#: Status requests that may wait for the one being computed; more are refused (503).
MAX_WAITING = 32
#: Seconds one answer is served again while the audit log has not moved.
REUSE_SECONDS = 1.0


class StatusDesk:
    """Computes status answers one at a time, from ``index``, and reuses them."""

    def __init__(self, spm: Spm, index: StatusIndex) -> None:
        self.spm = spm
        self.index = index
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._waiting = 0
        self._answers: dict[str, tuple[tuple[int, str], float, dict[str, Any]]] = {}
        self._approvers: dict[tuple[str, int, str], list[str]] = {}

    async def status_async(self, name: str) -> dict[str, Any]:
        """:meth:`status` for the event loop: requests wait for the one being computed
        without holding a worker thread; past :data:`MAX_WAITING` of them, 503."""
        if self._waiting >= MAX_WAITING:
            raise Refused("status: too many status requests at once; try again in a second", 503)
        if self._alock is None:
            self._alock = asyncio.Lock()
        self._waiting += 1
        try:
            async with self._alock:
                return await asyncio.to_thread(self.status, name)
        finally:
            self._waiting -= 1

    def status(self, name: str) -> dict[str, Any]:
        """The status of policy ``name`` (see the module docstring); 404 if there is none."""
        record, policy = self.spm.policies.get(name)
        with self._lock:
            store = self.spm.store
            store.sync()
            with store.read() as tx:
                head = tx.audit.head()
                store.check_head(tx, head)
                reused = self._answers.get(name)
                if (
                    reused is not None
                    and reused[0] == head
                    and time.monotonic() - reused[1] < REUSE_SECONDS
                    and reused[2]["policy"]["version"] == record.version
                ):
                    return reused[2]
                self.index.follow(tx, head)
                counters = tx.counters.of_policy(name)
                # the live ones, in one query (a query a session, expired ones too, never
                # answered with 100 000 sessions on PostgreSQL: a review)
                sessions = tx.sessions.live_of_policy(name, datetime.now(UTC))
                revoked = tx.revocations.in_force(name)
            answer = self._answer(record, policy, head, counters, sessions, revoked)
            if len(self._answers) > 1000:
                self._answers.clear()
            self._answers[name] = (head, time.monotonic(), answer)
            return answer

    def _answer(
        self,
        record: PolicyRecord,
        policy: Policy,
        head: tuple[int, str],
        counters: dict[str, int],
        sessions: list[Any],
        revoked: set[tuple[str, str]],
    ) -> dict[str, Any]:
        facts = self.index.facts(record.name)
        now = datetime.now(UTC)
        live: dict[str, int] = {}
        integrity = self.spm.store.integrity
        ended = None if integrity is None else integrity.floors.ended
        for session in sessions:  # a revoked service's sessions are dead (review)
            # ...and a revoked build's or machine's, and those a revocation ended (a
            # readmission does not bring them back): they showed as live (review)
            identity = session_identity(session)
            gone = revoked_reason(revoked, session.service, session.serial, identity) is not None
            if ended is not None and ended.by_revocation(record.name, session.serial):
                gone = True
            # ...and a session its workload replaced, whose row the host put back (review)
            if ended is not None and session.token_sha256 in ended:
                gone = True
            if session.expires_at > now and not gone:
                live[session.service] = live.get(session.service, 0) + 1
        services = [
            {
                "name": s.name,
                "role": s.role,
                "live_sessions": live.get(s.name, 0),
                **facts.attested.get(s.name, {}),
                **facts.refused.get(s.name, {}),
            }
            for s in policy.services
        ]
        federation = policy.federation if isinstance(policy.federation, dict) else {}
        run = federation.get("run")
        approvers = self._approved_by(record, policy)
        return {
            "policy": {
                "name": record.name,
                "version": record.version,
                "digest": record.digest,
                "accepted_at": facts.accepted_at.get(record.version) or _iso(record.created_at),
                "approvers": approvers or facts.approvers.get(record.version, []),
                "run": run if isinstance(run, int) and not isinstance(run, bool) else None,
            },
            "head_seq": head[0],
            "counters": counters,
            "round": dict(facts.round) if facts.round is not None else None,
            "services": services,
            "findings": [
                {**f.shown, "state": request_state(f, revoked) if f.shown["requested"] else None}
                for f in reversed(facts.findings)
            ],
            "revocations": len(revoked),
        }

    def _approved_by(self, record: PolicyRecord, policy: Policy) -> list[str]:
        key = (record.name, record.version, record.digest)
        if key not in self._approvers:
            if len(self._approvers) > 1000:
                self._approvers.clear()
            self._approvers[key] = _approvers(self.spm, record, policy)
        return self._approvers[key]


def request_state(finding: Finding, revoked: set[tuple[str, str]]) -> str:
    """What became of a revocation request: ``revoked`` (every service it names is
    revoked, or each one's certificate), ``readmitted`` (the board revoked and then
    readmitted one since), or ``pending`` (the board has not acted)."""
    shown, decided = finding.shown, finding.decided
    states = []
    for service in shown["excluded"]:
        serial = shown["serials"].get(service, "")
        if ("service", service) in revoked or (serial and ("certificate", serial) in revoked):
            states.append("revoked")
        elif decided.get(("service", service)) == "readmit" or (
            serial and decided.get(("certificate", serial)) == "readmit"
        ):
            states.append("readmitted")
        else:
            states.append("pending")
    for state in ("pending", "readmitted"):
        if state in states:
            return state
    return "revoked" if states else "pending"  # (a request naming nobody: nothing done)


def _approvers(spm: Spm, record: PolicyRecord, policy: Policy) -> list[str]:
    """The members whose signatures approved this version, verified again against the
    board that had to approve it (the previous version's; its own for version 1)."""
    try:
        board = (
            policy.board if record.version == 1 else spm.policies.get(
                record.name, record.version - 1)[1].board
        )  # fmt: skip
        signatures = [Signature.model_validate(s) for s in json.loads(record.signatures)]
        return check_approval(board, record.digest, signatures, domain=POLICY_DOMAIN)
    except (PolicyError, ValueError, TypeError):
        return []  # e.g. a version recovered on a new SPM: the audit entry names them


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None
