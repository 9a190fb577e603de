"""A policy's state at a glance, for the board and the operators (``secfl status``).

Read from what the SPM can vouch for: the current policy version (an authenticated
row) and the board members whose signatures approved it (verified again here), the
counters and live sessions (authenticated rows), the revocations in force, and the
newest entries of the audit log, verified backwards from the head the SPM checked
(:mod:`secfl.spm._audit_read`): the aggregator's last ``fl.round``, each service's
last attestation and refusal, and the clone audit's findings, with, for each
revocation request, whether the board has acted on it since.

The scan of the log stops at the policy's first version, or after ``scan`` entries
(the answer says which), so one request costs a bounded amount of work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from secfl.errors import PolicyError
from secfl.policy._signatures import POLICY_DOMAIN, Signature, check_approval
from secfl.spm._audit import AuditEntry
from secfl.spm._audit_read import SnapshotSource, walk_back

if TYPE_CHECKING:
    from secfl.policy._model import Policy
    from secfl.spm._service import Spm
    from secfl.spm._store import PolicyRecord

__all__ = ["MAX_FINDINGS", "SCAN_DEFAULT", "SCAN_MAX", "policy_status", "request_state"]

#: Audit entries a status request looks at by default, and at most.
SCAN_DEFAULT = 20_000
SCAN_MAX = 100_000
#: Findings of the clone audit listed (the newest).
MAX_FINDINGS = 20
#: Names listed per finding (a finding names the participants it left out).
MAX_NAMES = 100


def policy_status(spm: Spm, name: str, scan: int = SCAN_DEFAULT) -> dict[str, Any]:
    """The status of policy ``name`` (see the module docstring); 404 if there is none."""
    record, policy = spm.policies.get(name)
    approvers = _approvers(spm, record, policy)
    spm.store.sync()
    now = datetime.now(UTC)
    with spm.store.read() as tx:
        head = tx.audit.head()
        spm.store.check_head(tx, head)
        counters = tx.counters.of_policy(name)
        sessions = tx.sessions.of_policy(name)
        revoked = tx.revocations.in_force(name)
        reader = _Reader(name)
        scanned = 0
        for window in walk_back(SnapshotSource(tx, head), head, most=scan):
            for entry in reversed(window):
                reader.feed(entry)
            scanned += len(window)
            if reader.started:
                break
    live: dict[str, int] = {}
    for session in sessions:
        if session.expires_at > now:
            live[session.service] = live.get(session.service, 0) + 1
    services = [
        {
            "name": s.name,
            "role": s.role,
            "live_sessions": live.get(s.name, 0),
            **reader.attested.get(s.name, {}),
            **reader.refused.get(s.name, {}),
        }
        for s in policy.services
    ]
    federation = policy.federation if isinstance(policy.federation, dict) else {}
    run = federation.get("run")
    return {
        "policy": {
            "name": name,
            "version": record.version,
            "digest": record.digest,
            "accepted_at": reader.accepted_at.get(record.version) or _iso(record.created_at),
            "approvers": approvers or reader.approvers.get(record.version, []),
            "run": run if isinstance(run, int) and not isinstance(run, bool) else None,
        },
        "head_seq": head[0],
        "scanned": scanned,
        "complete": reader.started or scanned >= head[0],
        "counters": counters,
        "round": reader.round,
        "services": services,
        "findings": [
            {**f, "state": request_state(f, revoked, reader) if f["requested"] else None}
            for f in reader.findings
        ],
        "revocations": len(revoked),
    }


def request_state(
    finding: dict[str, Any], revoked: set[tuple[str, str]], reader: _Reader | None = None
) -> str:
    """What became of a revocation request: ``revoked`` (every service it names is
    revoked, or each one's certificate), ``readmitted`` (the board revoked and then
    readmitted one since), or ``pending`` (the board has not acted)."""
    decided = reader.decided_after.get(finding["seq"], {}) if reader is not None else {}
    states = []
    for service in finding["excluded"]:
        serial = finding["serials"].get(service, "")
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
    return "revoked"


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


@dataclass
class _Reader:
    """Collects a policy's status from verified entries fed newest first."""

    policy: str
    started: bool = False
    round: dict[str, Any] | None = None
    attested: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: dict[str, dict[str, Any]] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    accepted_at: dict[int, str] = field(default_factory=dict)
    approvers: dict[int, list[str]] = field(default_factory=dict)
    #: The board's newest decision on each (kind, subject), as of the entries fed so far.
    decisions: dict[tuple[str, str], str] = field(default_factory=dict)
    #: For each revocation request (by seq): the decisions the board took after it.
    decided_after: dict[int, dict[tuple[str, str], str]] = field(default_factory=dict)

    def feed(self, entry: AuditEntry) -> None:
        if entry.policy != self.policy:
            return
        d = entry.detail
        if entry.event == "policy.accepted":
            version = _int(d.get("version"))
            if version is not None:
                self.accepted_at.setdefault(version, entry.at)
                self.approvers.setdefault(version, _names(d.get("approvers")))
                self.started = self.started or version == 1
        elif entry.event == "fl.round" and self.round is None:
            self.round = _round(entry)
        elif entry.event == "attestation.accepted":
            service = d.get("service")
            if isinstance(service, str) and service not in self.attested:
                self.attested[service] = {
                    "attested_at": entry.at,
                    "attested_version": _int(d.get("policy_version")),
                    "kind": _text(d.get("kind")),
                    "measurement": _text(d.get("measurement")),
                }
        elif entry.event == "attestation.refused":
            service = d.get("service")
            if isinstance(service, str) and service not in self.refused:
                self.refused[service] = {"refused_at": entry.at, "refusal": _text(d.get("reason"))}
        elif entry.event in ("revocation.added", "revocation.lifted"):
            kind, subject = d.get("kind"), d.get("subject")
            if isinstance(kind, str) and isinstance(subject, str):
                verb = "readmit" if entry.event == "revocation.lifted" else "revoke"
                self.decisions.setdefault((kind, subject), verb)
        elif (
            entry.event in ("fl.audit.excluded", "fl.audit.revocation-requested")
            and len(self.findings) < MAX_FINDINGS
        ):
            finding = _finding(entry)
            self.findings.append(finding)
            if finding["requested"]:
                self.decided_after[entry.seq] = dict(self.decisions)


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


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None
