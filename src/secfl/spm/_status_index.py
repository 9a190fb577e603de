"""What ``secfl status`` shows from the audit log, kept as the log grows.

A status answer needs, per policy, the newest ``fl.round``, each service's last
attestation and refusal, the accepted versions, and the clone audit's newest
findings with the board's decisions since. Reading those backwards from the head at
every request costs a request as much as the log is long, which anyone who can
reach the SPM could then make it pay again and again. So the SPM keeps them: the
index is filled while the SPM verifies its whole log at start
(:func:`secfl.spm._state.verify_state`), and :meth:`StatusIndex.follow` reads only
the entries appended since (by this SPM, or by a replica sharing the database),
verifying them forward from the last head it took in to the new authenticated
head. Each entry is read once; a request costs what the log grew by.

Only policies with an accepted version get an index, and only services some
version of the policy names are remembered: entries an anonymous caller can cause
(a refused attestation of any name) take no memory.

If the entries do not chain to the new head, the index refuses every later answer
(the database was changed outside the SPM, which also refuses to start again).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secfl.errors import AuditError, IntegrityError
from secfl.spm._audit import GENESIS, READ_CHARS, AuditEntry, ChainVerifier

if TYPE_CHECKING:
    from secfl.spm._tx import Tx

__all__ = ["MAX_FINDINGS", "MAX_NAMES", "PolicyFacts", "StatusIndex"]

#: Findings of the clone audit kept per policy (the newest).
MAX_FINDINGS = 20
#: Names kept per finding (a finding names the participants it left out).
MAX_NAMES = 100
#: Entries read per page while following the log.
PAGE = 1000

Head = tuple[int, str]


@dataclass
class Finding:
    """A clone-audit finding, and the board's newest decision since on each subject
    it names (``revoke`` or ``readmit``)."""

    shown: dict[str, Any]
    decided: dict[tuple[str, str], str] = field(default_factory=dict)

    def subjects(self) -> set[tuple[str, str]]:
        named = {("service", s) for s in self.shown["excluded"]}
        return named | {("certificate", s) for s in self.shown["serials"].values()}


@dataclass
class PolicyFacts:
    """One policy's facts, as of the newest entry taken in."""

    services: set[str] = field(default_factory=set)
    round: dict[str, Any] | None = None
    attested: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: dict[str, dict[str, Any]] = field(default_factory=dict)
    accepted_at: dict[int, str] = field(default_factory=dict)
    approvers: dict[int, list[str]] = field(default_factory=dict)
    findings: deque[Finding] = field(default_factory=lambda: deque(maxlen=MAX_FINDINGS))


class StatusIndex:
    """Per-policy facts of the verified log up to :attr:`head` (not thread-safe: the
    caller serialises :meth:`follow` and its reads of :meth:`facts`)."""

    def __init__(self) -> None:
        self.head: Head = (0, GENESIS)
        self._policies: dict[str, PolicyFacts] = {}
        self._broken: str | None = None

    def facts(self, policy: str) -> PolicyFacts:
        return self._policies.get(policy) or PolicyFacts()

    def follow(self, tx: Tx, head: Head) -> None:
        """Take in the entries after :attr:`head` up to ``head``, the authenticated
        head of ``tx``'s snapshot, verified forward: each one's hash, each one
        chaining to the one before, the last one being ``head``."""
        if self._broken is not None:
            raise IntegrityError(self._broken)
        if head == self.head:
            return
        if head[0] <= self.head[0]:
            raise IntegrityError(
                f"rollback: the audit log's head went back from entry {self.head[0]} to "
                f"{head[0]}: the SPM's database was rolled back or forked"
            )
        verifier = ChainVerifier(start_hash=self.head[1], start_seq=self.head[0] + 1)
        last = self.head[0]
        try:
            while last < head[0]:
                entries = tx.audit.since(last, min(PAGE, head[0] - last), chars=READ_CHARS)
                if not entries:
                    break
                for entry in entries:
                    verifier.feed(entry)
                    self.feed(tx, entry)
                last = entries[-1].seq
            verifier.finish(head)
        except AuditError as exc:
            self._broken = (
                f"{exc}; the log was changed outside the SPM (`secfl audit verify` checks it)"
            )
            raise IntegrityError(self._broken) from None
        self.head = head

    def feed(self, tx: Tx, entry: AuditEntry) -> None:
        """Take in one verified entry, the one after the last taken in."""
        name, d, event = entry.policy, entry.detail, entry.event
        if name is None:
            return
        facts = self._policies.get(name)
        if event == "policy.accepted":
            facts = self._policies.setdefault(name, PolicyFacts())
            version = _int(d.get("version"))
            if version is not None:
                facts.accepted_at[version] = entry.at
                facts.approvers[version] = _names(d.get("approvers"))
                facts.services |= _services(tx, name, version)
        if facts is None:
            return  # no such policy: nothing about it is kept
        service = d.get("service")
        if event == "fl.round":
            facts.round = _round(entry)
        elif event == "attestation.accepted" and service in facts.services:
            facts.attested[service] = {
                "attested_at": entry.at,
                "attested_version": _int(d.get("policy_version")),
                "kind": _text(d.get("kind")),
                "measurement": _text(d.get("measurement")),
            }
        elif event == "attestation.refused" and service in facts.services:
            facts.refused[service] = {"refused_at": entry.at, "refusal": _text(d.get("reason"))}
        elif event in ("revocation.added", "revocation.lifted"):
            subject = (d.get("kind"), d.get("subject"))
            verb = "readmit" if event == "revocation.lifted" else "revoke"
            for finding in facts.findings:
                if subject in finding.subjects():
                    finding.decided[(str(subject[0]), str(subject[1]))] = verb
        elif event in ("fl.audit.excluded", "fl.audit.revocation-requested"):
            facts.findings.append(Finding(_finding(entry)))


def _services(tx: Tx, policy: str, version: int) -> set[str]:
    """The service names of a stored policy version (none if it is not stored)."""
    record = tx.policies.version(policy, version)
    if record is None:
        return set()
    try:
        services = json.loads(record.document).get("services")
        return {s["name"] for s in services if isinstance(s.get("name"), str)}
    except (ValueError, TypeError, AttributeError, KeyError):
        return set()


def _round(entry: AuditEntry) -> dict[str, Any]:
    d = entry.detail
    keys = ("round", "counter", "attempt", "participants", "dropped", "excluded", "run",
            "policy_version")  # fmt: skip
    out: dict[str, Any] = {"seq": entry.seq, "at": entry.at, "service": _text(d.get("service"))}
    out.update({k: _int(d.get(k)) for k in keys})
    objective = d.get("objective")
    if isinstance(objective, dict) and isinstance(objective.get("value"), int | float):
        out["objective"] = {
            "metric": _text(objective.get("metric")),
            "mode": _text(objective.get("mode")),
            "value": float(objective["value"]),
        }
    else:
        out["objective"] = None
    return out


def _finding(entry: AuditEntry) -> dict[str, Any]:
    d = entry.detail
    serials = d.get("serials")
    excluded = _names(d.get("excluded"))
    return {
        "seq": entry.seq,
        "at": entry.at,
        "round": _int(d.get("round")),
        "excluded": excluded,
        "serials": {
            k: v.lower()
            for k, v in (serials.items() if isinstance(serials, dict) else ())
            if k in excluded and isinstance(v, str) and len(v) <= 64
        },
        "requested": entry.event == "fl.audit.revocation-requested",
        "service": _text(d.get("service")),
    }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any, limit: int = 1024) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _names(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v[:128] for v in value if isinstance(v, str)][:MAX_NAMES]
