"""The board's revocations: applying its signed statements, and listing what they imply.

A statement revokes (or readmits) a certificate, a service, a measurement or a
platform of one policy (:func:`~secfl.spm._revocation.revocation_doc`); it takes
effect only with the signatures the policy's board rule asks for, and only once:
the same signed statement cannot be replayed to undo a later decision. A readmission
names the revocation it lifts (``lifts``: its statement's digest), so one signed for
an earlier revocation of the same subject, held back, cannot either.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from secfl._internal.values import one_line
from secfl.errors import PolicyError, Refused, SpmError
from secfl.policy._model import Policy
from secfl.policy._signatures import REVOCATION_DOMAIN, Signature, check_approval
from secfl.spm._groupcommit import GroupCommit
from secfl.spm._policy_cache import PolicyCache
from secfl.spm._refusals import RefusalBudget
from secfl.spm._renewal import ended_by_revocation
from secfl.spm._revocation import (
    expired,
    revocation_digest,
    revocation_doc,
    revoked_reason,
    session_identity,
)
from secfl.spm._sessions import current_version, no_longer_accepted
from secfl.spm._store import SessionRecord, Store
from secfl.spm._tx import Tx

__all__ = ["ANSWER_SECONDS", "RevocationList", "Revoker"]

#: How long an answered revocation list is served again (seconds), unless this SPM
#: applies a revocation or the policy gets a new version meanwhile. Peers read the
#: list every 10 s; another SPM sharing the database is heard within this.
ANSWER_SECONDS = 2.0


#: A policy's revocation list and its sequence number: the audit log's head (its last
#: entry's seq) in the snapshot the list was read from. Every change the list rests on
#: (a revocation or readmission, a certificate issued, a session ended, a new policy
#: version) is an audit entry, so a list read later from newer data has a higher number;
#: the head is authenticated (its MAC) and never goes back (this SPM's floor and
#: anchor: :mod:`secfl.spm._integrity`), like every row the SPM reads back.
RevocationList = tuple[int, list[dict[str, Any]]]


class Revoker:
    """Applies the board's revocation statements to ``store`` and lists them."""

    def __init__(
        self,
        store: Store,
        policies: PolicyCache,
        group: GroupCommit,
        refusals: RefusalBudget | None = None,
    ) -> None:
        self.store = store
        self.policies = policies
        self.group = group
        self.refusals = refusals or RefusalBudget()
        #: Applied revocation statements, when the store keeps no floors (tests, tools).
        self._statements: set[str] = set()
        #: The last list answered per policy: (when, policy version, the list and its
        #: sequence number). Every peer asks every 10 s, and each answer reads every live
        #: session of the policy.
        self._answered: dict[str, tuple[float, int, RevocationList]] = {}
        #: Revocations this SPM applied, per policy: a list read before one committed
        #: is not kept (it could be stored after the revocation cleared the cache).
        self._applied: dict[str, int] = {}

    def revoke(
        self, policy_name: str, statement: dict[str, str], signatures: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Record a board-approved revocation, or readmission (``action: readmit``), of a
        certificate, a service, a measurement or a platform (see :func:`revocation_doc`)."""
        record, policy = self.policies.get(policy_name)
        try:
            doc = revocation_doc(policy_name, statement)
        except SpmError as exc:
            raise Refused(str(exc), 400) from None
        statement_digest = revocation_digest(doc)
        try:
            sigs = [Signature.model_validate(s) for s in signatures]
            approvers = check_approval(
                policy.board, statement_digest, sigs, domain=REVOCATION_DOMAIN,
                now=datetime.now(UTC),
            )  # fmt: skip
        except PolicyError as exc:
            detail = {**doc, "reason_refused": one_line(str(exc))}
            self.group.run(  # no board signature: within the budget (secfl.spm._refusals)
                lambda tx: self.refusals.append(tx, "revocation.refused", policy_name, detail)
            )
            raise Refused(str(exc)) from None
        except Exception as exc:
            raise Refused(f"revocation: malformed signature ({type(exc).__name__})", 400) from None
        now = datetime.now(UTC)
        late = expired(doc, now)
        if late is not None:
            raise Refused(late, 409)
        kind, subject = doc["kind"], doc["subject"]
        readmit = doc.get("action") == "readmit"
        floors = self.store.integrity.floors if self.store.integrity is not None else None
        applied = floors.statements if floors is not None else self._statements
        spent: Refused | None = None  # a readmission of what is not revoked: refused, used up
        try:
            with self.store.transaction() as tx:  # caught up with other SPMs' statements
                current = current_version(tx, policy_name)
                if current is not None and current > record.version:
                    # the signatures were checked against the board of a version read
                    # outside this write: a new version (another board) came meanwhile
                    raise Refused(
                        f"revocation: version {current} of '{policy_name}' replaced version "
                        f"{record.version} while the board's signatures were checked: send "
                        "the statement again",
                        409,
                    )
                if statement_digest in applied:
                    raise Refused(
                        f"revocation: this statement (digest {statement_digest[:16]}…) was "
                        "already applied; to decide again, the board signs a new one "
                        "(a new reason)",
                        409,
                    )
                if readmit:
                    self._check_named(policy_name, kind, subject, doc["lifts"], applied)
                other = readmit and self._lifts_other(policy_name, kind, subject, doc["lifts"])
                tx.note(("statement", statement_digest))
                if other:
                    # the revocation it names was lifted: it never will lift anything, and
                    # the board learns that a statement held back surfaced (a review)
                    spent = Refused(other, 409)
                    tx.audit.append(
                        "revocation.spent",
                        policy_name,
                        {**doc, "approvers": approvers, "digest": statement_digest,
                         "reason_refused": "it lifts another revocation than the one in force"},
                    )  # fmt: skip
                elif readmit and not tx.revocations.lift(policy_name, kind, subject):
                    # kept, it would lift a later revocation of the same subject (found by a
                    # review): the statement is used up, and the log says so
                    spent = Refused(
                        f"revocation: {kind} {subject} is not revoked (this readmission is "
                        "used up: it cannot lift a later revocation)",
                        409,
                    )
                    tx.audit.append(
                        "revocation.spent",
                        policy_name,
                        {**doc, "approvers": approvers, "digest": statement_digest,
                         "reason_refused": f"{kind} {subject} is not revoked"},
                    )  # fmt: skip
                elif readmit:
                    tx.audit.append(
                        "revocation.lifted",
                        policy_name,
                        {**doc, "approvers": approvers, "digest": statement_digest},
                    )
                    # what it stopped ends here too: a revocation an SPM recorded before
                    # revocations ended sessions has no session.ended (found by a review)
                    stopped = self._stopped(tx, policy_name, (kind, subject), now)
                    ended_by_revocation(tx, policy_name, f"{kind} {subject}", stopped)
                else:
                    tx.revocations.add(
                        policy_name, None, doc.get("service", ""), doc.get("reason", ""), now,
                        kind=kind, subject=subject,
                    )  # fmt: skip
                    tx.note(("revoked-by", policy_name, kind, subject, statement_digest))
                    tx.audit.append(
                        "revocation.added",
                        policy_name,
                        {**doc, "approvers": approvers, "digest": statement_digest},
                    )
                    stopped = self._stopped(tx, policy_name, (kind, subject), now)
                    ended_by_revocation(tx, policy_name, f"{kind} {subject}", stopped)
        except Refused:
            raise
        except SpmError as exc:
            raise Refused(str(exc), 409) from None
        self._statements.add(statement_digest)
        if spent is not None:
            raise spent
        self.policies.forget_revocations(policy_name)
        self._applied[policy_name] = self._applied.get(policy_name, 0) + 1
        self._answered.pop(policy_name, None)
        return {**doc, "at": now.isoformat()}

    def _check_named(
        self, policy_name: str, kind: str, subject: str, lifts: str, applied: set[str]
    ) -> None:
        """Refuse, and keep, a readmission naming a revocation this SPM has not applied:
        it can only ever lift that one (a review: one sent before the revocation it was
        signed with, by a member or the host racing the board's statements, was used
        up, and the board had to sign again). A subject revoked before the log kept
        digests names none: any readmission lifts it; without floors (tests, tools),
        nothing is known."""
        floors = self.store.integrity.floors if self.store.integrity is not None else None
        if floors is None or lifts in applied:
            return
        legacy = floors.lifted_by(policy_name, kind, subject) is None and bool(
            floors.revoked_of(policy_name, {(kind, subject)})
        )
        if not legacy:
            raise Refused(
                f"revocation: this readmission lifts revocation {lifts[:16]}…, which this SPM "
                "has not applied (yet): it is kept, send it again once that revocation is",
                409,
            )

    def _lifts_other(self, policy_name: str, kind: str, subject: str, lifts: str) -> str:
        """Why a readmission is refused that names another revocation than the one in
        force for its subject ("" if it does not): signed for an earlier revocation and
        held back (by a member, say) while the board readmitted with another statement
        and revoked again, it lifted that later revocation (found by a review). It is used
        up, as it never will lift anything: the revocation it names was applied once and
        cannot be again. A revocation recorded before the log kept digests names none:
        any is taken."""
        floors = self.store.integrity.floors if self.store.integrity is not None else None
        in_force = floors.lifted_by(policy_name, kind, subject) if floors is not None else None
        if in_force is None or in_force == lifts:
            return ""
        return (
            f"revocation: this readmission lifts revocation {lifts[:16]}…, but the "
            f"revocation of {kind} {subject} in force is {in_force[:16]}… (`secfl "
            "revocations` lists it): the board signs a readmission naming that one"
        )

    def _stopped(
        self, tx: Tx, policy_name: str, key: tuple[str, str], now: datetime
    ) -> list[tuple[str, str, datetime]]:
        """The live sessions (service, certificate serial, expiry) the revocation ``key``
        stops: by the index of issued certificates (this write caught up with the other
        SPMs'), and the session rows of certificates issued before it; those a revocation
        ended already left out."""
        floors = tx.floors
        if floors is None:
            return []
        sessions = {i.serial: (i.service, i.not_after, i.identity)
                    for i in floors.issued.live(policy_name, now)}  # fmt: skip
        for row in tx.sessions.live_of_policy(policy_name, now):
            if row.serial and row.serial not in sessions:
                sessions[row.serial] = (row.service, row.expires_at, row.identity)
        stopped = []
        for serial, (service, expires, identity) in sorted(sessions.items()):
            if floors.ended.by_revocation(policy_name, serial):
                continue
            record = SessionRecord(b"", policy_name, service, 0, expires, serial=serial,
                                   identity=identity)  # fmt: skip
            if revoked_reason({key}, service, serial, session_identity(record)) is not None:
                stopped.append((service, serial, expires))
        return stopped

    def revocations(self, policy_name: str) -> list[dict[str, Any]]:
        """The board's revocations, then every live certificate they imply (see
        :meth:`revocation_list`)."""
        return self.revocation_list(policy_name)[1]

    def revocation_list(self, policy_name: str) -> RevocationList:
        """The list's sequence number (see :data:`RevocationList`) and the list: the
        board's revocations, then every live certificate they imply: a revoked service,
        measurement or platform names the certificates issued to it, and so does a
        version that no longer accepts what a session was attested as, so that peers
        (the aggregator) refuse them at once, not when they expire. A list answered again
        from the cache keeps the number it was read at: peers order lists by it."""
        record, policy = self.policies.get(policy_name)  # 404 for an unknown policy
        answered = self._answered.get(policy_name)
        if (
            answered is not None
            and answered[1] == record.version
            and time.monotonic() < answered[0] + ANSWER_SECONDS
        ):
            return answered[2][0], [dict(r) for r in answered[2][1]]
        applied, started = self._applied.get(policy_name, 0), time.monotonic()
        sequence, out = self._list(policy_name, record.version, policy)
        if self._applied.get(policy_name, 0) == applied:  # no revocation meanwhile
            if len(self._answered) > 10_000:
                self._answered.clear()
            self._answered[policy_name] = (started, record.version, (sequence, out))
        return sequence, [dict(r) for r in out]

    def _list(self, policy_name: str, version: int, policy: Policy) -> RevocationList:
        now = datetime.now(UTC)
        floors = self.store.integrity.floors if self.store.integrity is not None else None
        if floors is not None:
            self.store.sync()  # certificates other SPMs sharing the database issued
        with self.store.read() as tx:
            # first, so that the snapshot is the head's: its MAC and floor checked
            head = tx.audit.head()
            self.store.check_head(tx, head)
            rows = tx.revocations.of_policy(policy_name)
            revoked = tx.revocations.in_force(policy_name)
            # the index of issued certificates (secfl.spm._issued), which the host
            # cannot take one from; the session rows for certificates issued before
            # audit entries carried what they were attested as
            sessions = tx.sessions.live_of_policy(policy_name, now)
        if floors is not None:
            issued = floors.issued.live(policy_name, now)
            known = {i.serial for i in issued}
            sessions = [s for s in sessions if s.serial not in known]  # each judged once
            sessions += [
                SessionRecord(b"", policy_name, i.service, i.policy_version, i.not_after,
                              serial=i.serial, identity=i.identity)
                for i in issued
            ]  # fmt: skip

        def _lifts(kind: str, subject: str) -> str:
            """The revocation's statement digest: what a readmission names (``lifts``)."""
            found = None if floors is None else floors.lifted_by(policy_name, kind, subject)
            return found or ""

        out = [
            {"kind": r.kind, "subject": r.subject, "serial": r.serial, "service": r.service,
             "reason": r.reason, "at": _iso(r.at), "digest": _lifts(r.kind, r.subject)}
            for r in rows
        ]  # fmt: skip
        for kind, subject in sorted(revoked - {(r.kind, r.subject) for r in rows}):
            out.append(  # known to this SPM, its row deleted from the database
                {"kind": kind, "subject": subject,
                 "serial": subject if kind == "certificate" else "", "service": "",
                 "reason": "its row is missing from the database (deleted outside the SPM)",
                 "at": _iso(now), "digest": _lifts(kind, subject)}
            )  # fmt: skip
        listed = {r["serial"] for r in out if r["serial"]}
        for session in sessions:
            if not session.serial or session.serial in listed or session.expires_at <= now:
                continue
            why = revoked_reason(revoked, session.service, "", session_identity(session))
            ended = floors is not None and floors.ended.by_revocation(policy_name, session.serial)
            if why is None and ended:  # readmitted since: what the revocation ended stays so
                why = "its session was ended by a revocation of the board"
            if why is None:  # a build, service or evidence the current version dropped
                why = no_longer_accepted(policy, version, session)
            if why is not None:
                listed.add(session.serial)
                out.append(
                    {"kind": "certificate", "subject": session.serial, "serial": session.serial,
                     "service": session.service, "reason": f"implied: {why}",
                     "at": _iso(now), "digest": ""}
                )  # fmt: skip
        return head[0], out


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
