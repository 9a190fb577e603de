"""The Security Policy Manager's decisions, apart from HTTP.

:class:`Spm` accepts board-approved policy versions, attests workloads against
them and releases certificates and secrets only to matching evidence, keeps
monotonic counters, records revocations, and writes every decision to the
hash-chained audit log in the same transaction as the change it records.
The FastAPI app (``secfl.spm.app``) is a thin layer over this class.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from secfl.errors import PolicyError, SpmError
from secfl.policy.canonical import canonical_bytes, digest
from secfl.policy.document import load_policy
from secfl.policy.model import Policy
from secfl.policy.signatures import POLICY_DOMAIN, REVOCATION_DOMAIN, Signature, check_approval
from secfl.spm.attestation import AttestationMixin, AttestResult, Refused
from secfl.spm.groupcommit import GroupCommit
from secfl.spm.identity import SpmIdentity
from secfl.spm.masterkey import (
    MasterKey,
)
from secfl.spm.nonces import NonceIssuer
from secfl.spm.report_data import spm_report_data
from secfl.spm.revocation import (
    revocation_digest,
    revocation_doc,
    revoked_reason,
    session_identity,
)
from secfl.spm.store import PolicyRecord, SessionRecord, Store
from secfl.spm.vault import SecretVault
from secfl.spm.volumes import check_record_proof
from secfl.tee.platforms import Platform

#: Seconds a replica may serve a policy's current version before re-reading it.
CURRENT_TTL = 1.0


class Spm(AttestationMixin):
    """The SPM over a :class:`Store`, sealing with a :class:`MasterKey`.

    ``platform`` produces the SPM's own evidence; ``identity`` is its TLS key.
    """

    def __init__(
        self,
        store: Store,
        master: MasterKey,
        platform: Platform,
        identity: SpmIdentity,
        *,
        measurement: str | None = None,
        nonce_ttl: float = 60.0,
        session_ttl: float = 3600.0,
    ) -> None:
        self.store = store
        self.master = master
        self.platform = platform
        self.identity = identity
        self.measurement = measurement
        self.session_ttl = session_ttl
        self.nonces = NonceIssuer(master.derive("attestation-nonce"), nonce_ttl)
        self.group = GroupCommit(store)
        self._policies: dict[tuple[str, int], Policy] = {}
        self._records: dict[tuple[str, int], PolicyRecord] = {}
        self._sessions: dict[bytes, SessionRecord] = {}
        self._current: dict[str, tuple[float, PolicyRecord]] = {}
        self._revoked: dict[str, tuple[float, set[tuple[str, str]]]] = {}
        #: (token digest, policy version) pairs already checked against that version.
        self._admitted: set[tuple[bytes, int]] = set()
        #: Applied revocation statements, when the store keeps no floors (tests, tools).
        self._statements: set[str] = set()
        self.vault = SecretVault(master, identity.key)
        self._spent = 0

    @property
    def nonce_ttl(self) -> float:
        return self.nonces.ttl

    @nonce_ttl.setter
    def nonce_ttl(self, seconds: float) -> None:
        self.nonces.ttl = seconds

    def close(self) -> None:
        self.group.close()
        self.store.close()

    # --- the SPM's own attestation --------------------------------------------------------

    def attestation(self, nonce: bytes) -> dict[str, str]:
        """Evidence binding ``nonce`` and the SPM's TLS key (for ``GET /v1/attestation``)."""
        if not 8 <= len(nonce) <= 64:
            raise Refused("attestation: the nonce must be 8 to 64 bytes", 400)
        report_data = spm_report_data(nonce, self.identity.spki_sha256)
        if self.measurement is not None and self.platform.name == "simulated":
            evidence = self.platform.get_evidence(report_data, measurement=self.measurement)  # type: ignore[call-arg]
        else:
            evidence = self.platform.get_evidence(report_data)
        return {
            "evidence": evidence.to_json(),
            "tls_spki_sha256": self.identity.spki_sha256,
            "kind": evidence.kind,
        }

    # --- policies -------------------------------------------------------------------------

    def policy(self, name: str, version: int | None = None) -> tuple[PolicyRecord, Policy]:
        """A policy version (default: the current one), parsed once and cached.

        The current version is re-read at most every ``CURRENT_TTL`` seconds (and at
        once after this SPM accepts a new one): a replica sharing the database sees
        another replica's new version within that time."""
        if version is None:
            cached = self._current.get(name)
            if cached is not None and time.monotonic() - cached[0] < CURRENT_TTL:
                return cached[1], self._parsed(cached[1])
        record = self._records.get((name, version)) if version is not None else None
        if record is None:
            if version is None:
                self.store.sync()  # versions other SPMs sharing the database accepted
            with self.store.read() as tx:
                record = (
                    tx.current_policy(name) if version is None else tx.policy_version(name, version)
                )
            if record is not None:
                self._records[(record.name, record.version)] = record
                if version is None:
                    self._current[name] = (time.monotonic(), record)
        if record is None:
            raise Refused(f"policy: no policy named '{name}'", 404)
        return record, self._parsed(record)

    def _parsed(self, record: PolicyRecord) -> Policy:
        """The stored policy version, parsed once (stored versions never change)."""
        key = (record.name, record.version)
        if key not in self._policies:
            self._policies[key] = Policy.model_validate_json(record.document)
        return self._policies[key]

    def submit_policy(self, document: str, signatures: list[dict[str, Any]]) -> PolicyRecord:
        """Accept a new policy or version if its board rule is met and it follows the
        current version; otherwise refuse it, change nothing, and audit the refusal."""
        try:
            policy = load_policy(document)
        except PolicyError as exc:
            self._audit_refusal("policy.refused", None, {"reason": str(exc)})
            raise Refused(str(exc), 400) from None
        policy_digest = digest(policy)
        try:
            sigs = [Signature.model_validate(s) for s in signatures]
        except Exception as exc:
            raise Refused(f"policy: malformed signature ({type(exc).__name__})", 400) from None
        now = datetime.now(UTC)
        try:
            with self.store.transaction() as tx:
                current = tx.current_policy(policy.name)
                previous: Policy | None = None
                if current is None:
                    if policy.version != 1 or policy.predecessor:
                        raise Refused(
                            f"predecessor: there is no policy '{policy.name}' yet, so this must "
                            "be version 1 with an empty predecessor",
                            409,
                        )
                    board = policy.board
                else:
                    if (
                        policy.predecessor != current.digest
                        or policy.version != current.version + 1
                    ):
                        raise Refused(
                            f"predecessor: the current version of '{policy.name}' is "
                            f"{current.version} with digest {current.digest}; this document is "
                            f"version {policy.version} after {policy.predecessor or '(none)'}",
                            409,
                        )
                    previous = Policy.model_validate_json(current.document)
                    board = previous.board
                try:
                    approvers = check_approval(board, policy_digest, sigs, domain=POLICY_DOMAIN)
                except PolicyError as exc:
                    raise Refused(str(exc), 403) from None
                try:
                    self.vault.provision(tx, policy, now, previous)
                except Refused:
                    raise
                except SpmError as exc:
                    raise Refused(str(exc), 400) from None
                record = PolicyRecord(
                    name=policy.name,
                    version=policy.version,
                    digest=policy_digest,
                    predecessor=policy.predecessor,
                    document=canonical_bytes(policy).decode(),
                    signatures=json.dumps([s.model_dump(mode="json") for s in sigs]),
                    created_at=now,
                )
                tx.add_policy(record)
                self._current.pop(policy.name, None)
                tx.append_audit(
                    "policy.accepted",
                    policy.name,
                    {"version": policy.version, "digest": policy_digest, "approvers": approvers},
                )
        except Refused as exc:
            self._current.pop(policy.name, None)
            self._audit_refusal(
                "policy.refused",
                policy.name,
                {"version": policy.version, "digest": policy_digest, "reason": str(exc)},
            )
            raise
        self._current.pop(policy.name, None)
        return record

    # --- counters -------------------------------------------------------------------------

    def increment(self, token: str, policy_name: str, counter: str) -> int:
        """Add one to a counter, if the session token's service may; durable on return."""
        return self.group.run(self._increment_op(token, policy_name, counter))

    async def increment_async(self, token: str, policy_name: str, counter: str) -> int:
        """:meth:`increment` for the event loop (the hot path of the HTTP API)."""
        return await self.group.run_async(self._increment_op(token, policy_name, counter))

    def _increment_op(self, token: str, policy_name: str, counter: str) -> Callable[[Any], int]:
        """Check the session's right to ``counter``; return the write that bumps it."""
        session, service = self._session_service(token, policy_name)
        if counter not in service.counters:
            raise Refused(f"counter: service '{session.service}' may not increment '{counter}'")

        def bump(tx: Any) -> int:
            value = int(tx.increment(policy_name, counter))
            tx.append_audit(
                "counter.incremented",
                policy_name,
                {"counter": counter, "value": value, "service": session.service},
            )
            return value

        return bump

    def _session_service(self, token: str, policy_name: str) -> tuple[SessionRecord, Any]:
        """The live session of ``token`` and its service in the *current* policy version,
        or Refused: the session's service must still be in the policy, what it was
        attested as must still be accepted, and nothing of it may be revoked."""
        token_hash = hashlib.sha256(token.encode()).digest()
        session = self._session(token_hash)
        if session is None or session.policy != policy_name:
            raise Refused("session: unknown session token for this policy", 401)
        if session.expires_at <= datetime.now(UTC):
            raise Refused("session: the session token has expired; attest again", 401)
        record, policy = self.policy(policy_name)
        service = policy.service(session.service)
        if service is None:
            raise Refused(
                f"session: service '{session.service}' is not in version {record.version} of "
                "the policy any more",
                401,
            )
        identity = session_identity(session)
        admitted = (token_hash, record.version)
        if admitted not in self._admitted:
            if session.policy_version != record.version:
                try:
                    if identity["kind"] not in policy.platforms.accept:
                        raise Refused(
                            f"session: {identity['kind']} evidence is no longer accepted by "
                            f"version {record.version} of the policy; attest again",
                            401,
                        )
                    self._match(policy, session.service, identity["kind"], identity["measurements"])
                except Refused as exc:
                    raise Refused(
                        f"session: what '{session.service}' was attested as is no longer "
                        f"accepted by version {record.version} of the policy ({exc})",
                        401,
                    ) from None
            if len(self._admitted) > 100_000:
                self._admitted.clear()
            self._admitted.add(admitted)
        refusal = revoked_reason(
            self.revoked(policy_name), session.service, session.serial, identity
        )
        if refusal is not None:
            raise Refused(f"revoked: {refusal}; this session is over", 401)
        return session, service

    def revoked(self, policy_name: str) -> set[tuple[str, str]]:
        """What the board revoked in ``policy_name`` (re-read at most every CURRENT_TTL)."""
        cached = self._revoked.get(policy_name)
        if cached is not None and time.monotonic() - cached[0] < CURRENT_TTL:
            return cached[1]
        self.store.sync()  # what other SPMs sharing the database revoked
        with self.store.read() as tx:
            found = tx.revoked_set(policy_name)
        self._revoked[policy_name] = (time.monotonic(), found)
        return found

    def report(self, token: str, policy_name: str, event: str, detail: dict[str, Any]) -> int:
        """Write an aggregator's finding (e.g. the audit's exclusions) to the audit log,
        as ``fl.<event>`` naming the reporting service; returns the entry's number."""
        session, service = self._session_service(token, policy_name)
        if service.role not in ("aggregator", "any"):
            raise Refused(f"report: service '{session.service}' is not an aggregator")
        entry = {**detail, "service": session.service}
        return int(
            self.group.run(lambda tx: tx.append_audit(f"fl.{event}", policy_name, entry).seq)
        )

    def _session(self, token_hash: bytes) -> SessionRecord | None:
        """A session by token digest; sessions never change once made, so they are cached."""
        session = self._sessions.get(token_hash)
        if session is None:
            with self.store.read() as tx:
                session = tx.get_session(token_hash)
            if session is not None:
                if len(self._sessions) > 100_000:
                    self._sessions.clear()
                self._sessions[token_hash] = session
        return session

    def counter(self, policy_name: str, counter: str) -> int:
        with self.store.read() as tx:
            value = tx.get_counter(policy_name, counter)
        if value is None:
            raise Refused(f"counter: '{policy_name}' has no counter '{counter}'", 404)
        return value

    # --- rollback-protected volumes --------------------------------------------------------

    def volume_state(self, policy_name: str, volume: str) -> dict[str, Any]:
        """The newest recorded release of a counter-protected volume (version 0: none yet)."""
        _, policy = self.policy(policy_name)
        spec = policy.volume(volume)
        if spec is None or spec.counter is None:
            raise Refused(f"volume: '{volume}' of '{policy_name}' is not rollback-protected", 404)
        with self.store.read() as tx:
            recorded = tx.get_volume_tag(policy_name, volume)
            counter = tx.get_counter(policy_name, spec.counter)
        version, tag = recorded or (0, "")
        return {"volume": volume, "version": version, "tag": tag, "counter": counter}

    def record_volume(
        self, token: str, policy_name: str, volume: str, version: int, tag: str, proof: str
    ) -> dict[str, Any]:
        """Accept a volume release as current if it is newer than the recorded one
        (the counter moves on); the same release again is fine; an older one, or the
        same version with another tag, is a rollback and refused.

        ``proof`` is :func:`~secfl.spm.volumes.record_proof` under the volume's key: only
        a launcher that received that key (and opened the volume with it) can record a
        release, not whoever holds a session token."""
        session, service = self._session_service(token, policy_name)
        now = datetime.now(UTC)
        _, policy = self.policy(policy_name)
        spec = policy.volume(volume)
        if spec is None or spec.counter is None:
            raise Refused(f"volume: '{volume}' of '{policy_name}' is not rollback-protected", 404)
        if volume not in service.volumes:
            raise Refused(f"volume: service '{session.service}' may not open '{volume}'")
        tag = tag.lower()
        counter = spec.counter
        token_hash = hashlib.sha256(token.encode()).hexdigest()

        def record(tx: Any) -> dict[str, Any] | Refused:
            key = self.vault.policy_key(tx, policy_name)
            value = self.vault.value(tx, key, policy_name, spec.key)
            raw = base64.b64decode(value.get("raw", ""))
            if not check_record_proof(raw, policy_name, volume, version, tag, token_hash, proof):
                refusal = Refused(
                    f"volume: the record of '{volume}' version {version} is not vouched for by "
                    "the volume's key (only the launcher that opened the volume can record it)"
                )
                detail = {"volume": volume, "version": version, "tag": tag,
                          "reason": str(refusal), "service": session.service}  # fmt: skip
                tx.append_audit("volume.refused", policy_name, detail)
                return refusal
            recorded = tx.get_volume_tag(policy_name, volume)
            if recorded is not None:
                old_version, old_tag = recorded
                if version == old_version and tag == old_tag:
                    return {"volume": volume, "version": version, "tag": tag,
                            "counter": tx.get_counter(policy_name, counter)}  # fmt: skip
                if version <= old_version:
                    refusal = Refused(
                        f"rollback: volume '{volume}' version {version} (tag {tag[:16]}…) is "
                        f"not newer than the recorded version {old_version} "
                        f"(tag {old_tag[:16]}…)",
                        409,
                    )
                    what = {"volume": volume, "version": version, "tag": tag}
                    detail = {**what, "reason": str(refusal), "service": session.service}
                    tx.append_audit("volume.refused", policy_name, detail)
                    return refusal
            tx.set_volume_tag(policy_name, volume, version, tag, now)
            value_now = int(tx.increment(policy_name, counter))
            tx.append_audit(
                "volume.recorded",
                policy_name,
                {"volume": volume, "version": version, "tag": tag, "counter": value_now,
                 "counter_name": counter, "service": session.service},
            )  # fmt: skip
            return {"volume": volume, "version": version, "tag": tag, "counter": value_now}

        outcome = self.group.run(record)
        if isinstance(outcome, Refused):
            raise outcome
        return outcome

    # --- revocations ----------------------------------------------------------------------

    def revoke(
        self, policy_name: str, statement: dict[str, str], signatures: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Record a board-approved revocation, or readmission (``action: readmit``), of a
        certificate, a service, a measurement or a platform (see :func:`revocation_doc`)."""
        _, policy = self.policy(policy_name)
        try:
            doc = revocation_doc(policy_name, statement)
        except SpmError as exc:
            raise Refused(str(exc), 400) from None
        statement_digest = revocation_digest(doc)
        try:
            sigs = [Signature.model_validate(s) for s in signatures]
            approvers = check_approval(
                policy.board, statement_digest, sigs, domain=REVOCATION_DOMAIN
            )
        except PolicyError as exc:
            self._audit_refusal(
                "revocation.refused", policy_name, {**doc, "reason_refused": str(exc)}
            )
            raise Refused(str(exc)) from None
        except Exception as exc:
            raise Refused(f"revocation: malformed signature ({type(exc).__name__})", 400) from None
        now = datetime.now(UTC)
        kind, subject = doc["kind"], doc["subject"]
        readmit = doc.get("action") == "readmit"
        floors = self.store.integrity.floors if self.store.integrity is not None else None
        applied = floors.statements if floors is not None else self._statements
        try:
            with self.store.transaction() as tx:  # caught up with other SPMs' statements
                if statement_digest in applied:
                    raise Refused(
                        f"revocation: this statement (digest {statement_digest[:16]}…) was "
                        "already applied; to decide again, the board signs a new one "
                        "(a new reason)",
                        409,
                    )
                tx._note(("statement", statement_digest))
                if readmit:
                    if not tx.lift_revocation(policy_name, kind, subject):
                        raise Refused(f"revocation: {kind} {subject} is not revoked", 409)
                    tx.append_audit(
                        "revocation.lifted",
                        policy_name,
                        {**doc, "approvers": approvers, "digest": statement_digest},
                    )
                else:
                    tx.add_revocation(
                        policy_name, None, doc.get("service", ""), doc.get("reason", ""), now,
                        kind=kind, subject=subject,
                    )  # fmt: skip
                    tx.append_audit(
                        "revocation.added",
                        policy_name,
                        {**doc, "approvers": approvers, "digest": statement_digest},
                    )
        except Refused:
            raise
        except SpmError as exc:
            raise Refused(str(exc), 409) from None
        self._revoked.pop(policy_name, None)
        self._statements.add(statement_digest)
        return {**doc, "at": now.isoformat()}

    def revocations(self, policy_name: str) -> list[dict[str, Any]]:
        """The board's revocations, then every live certificate they imply: a revoked
        service, measurement or platform names the certificates issued to it, so that
        peers (the aggregator) refuse them at once, not when they expire."""
        self.policy(policy_name)
        now = datetime.now(UTC)
        with self.store.read() as tx:
            rows = tx.revocations(policy_name)
            revoked = tx.revoked_set(policy_name)
            sessions = tx.sessions(policy_name)
        out = [
            {"kind": r.kind, "subject": r.subject, "serial": r.serial, "service": r.service,
             "reason": r.reason, "at": _iso(r.at)}
            for r in rows
        ]  # fmt: skip
        for kind, subject in sorted(revoked - {(r.kind, r.subject) for r in rows}):
            out.append(  # known to this SPM, its row deleted from the database
                {"kind": kind, "subject": subject,
                 "serial": subject if kind == "certificate" else "", "service": "",
                 "reason": "its row is missing from the database (deleted outside the SPM)",
                 "at": _iso(now)}
            )  # fmt: skip
        listed = {r["serial"] for r in out if r["serial"]}
        for session in sessions:
            if not session.serial or session.serial in listed or session.expires_at <= now:
                continue
            why = revoked_reason(revoked, session.service, "", session_identity(session))
            if why is not None:
                listed.add(session.serial)
                out.append(
                    {"kind": "certificate", "subject": session.serial, "serial": session.serial,
                     "service": session.service, "reason": f"implied: {why}",
                     "at": _iso(now)}
                )  # fmt: skip
        return out

    # --- audit ----------------------------------------------------------------------------

    def audit_page(self, since: int, limit: int) -> tuple[list[Any], tuple[int, str]]:
        """Entries after ``since`` and the head, read from one snapshot whose head was
        checked (its MAC, and that it did not go back) before the SPM signs it."""
        self.store.sync()
        with self.store.read() as tx:
            head = tx.audit_head()
            self.store._check_head(tx, head)
            return tx.audit_since(since, limit), head

    def _audit_refusal(self, event: str, policy: str | None, detail: dict[str, Any]) -> None:
        self.group.run(lambda tx: tx.append_audit(event, policy, detail))


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


__all__ = ["AttestResult", "Refused", "Spm", "revocation_digest", "revocation_doc"]
