"""The Security Policy Manager's decisions, apart from HTTP.

:class:`Spm` accepts board-approved policy versions, attests workloads against
them and releases certificates and secrets only to matching evidence, keeps
monotonic counters, records revocations, and writes every decision to the
hash-chained audit log in the same transaction as the change it records.
The FastAPI app (``secfl.spm.app``) is a thin layer over this class.
"""

from __future__ import annotations

import hashlib
import json
import secrets as pysecrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secfl.errors import PolicyError, SecflError, SpmError
from secfl.policy.canonical import canonical_bytes, digest
from secfl.policy.document import load_policy
from secfl.policy.model import Policy
from secfl.policy.signatures import POLICY_DOMAIN, REVOCATION_DOMAIN, Signature, check_approval
from secfl.spm import secrets as sv
from secfl.spm.binding import csr_public_key_sha256, spm_report_data, workload_report_data
from secfl.spm.groupcommit import GroupCommit
from secfl.spm.identity import Identity
from secfl.spm.masterkey import (
    MasterKey,
    new_policy_key,
    open_secret,
    seal_secret,
    seal_shares,
    unwrap_policy_key,
    wrap_policy_key,
)
from secfl.spm.nonces import NonceIssuer
from secfl.spm.store import PolicyRecord, SecretRecord, SessionRecord, Store
from secfl.tee.claims import TCB_ORDER, Claims
from secfl.tee.evidence import Evidence
from secfl.tee.platforms import Platform
from secfl.tee.verify import verify

#: Seconds a replica may serve a policy's current version before re-reading it.
CURRENT_TTL = 1.0
#: Expired sessions and spent nonces are pruned every this many attestations.
PRUNE_EVERY = 1000


class Refused(SpmError):
    """A request the SPM refuses on purpose; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AttestResult:
    """What an attested workload receives."""

    certificate: str
    ca_certificate: str
    sealed_secrets: bytes
    session_token: str
    session_expires: datetime
    policy_digest: str
    policy_version: int
    secret_names: list[str]


class Spm:
    """The SPM over a :class:`Store`, sealing with a :class:`MasterKey`.

    ``platform`` produces the SPM's own evidence; ``identity`` is its TLS key.
    """

    def __init__(
        self,
        store: Store,
        master: MasterKey,
        platform: Platform,
        identity: Identity,
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
        self._values: dict[tuple[str, str], tuple[float, sv.Value]] = {}
        self._keys: dict[str, bytes] = {}
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
                    board = Policy.model_validate_json(current.document).board
                try:
                    approvers = check_approval(board, policy_digest, sigs, domain=POLICY_DOMAIN)
                except PolicyError as exc:
                    raise Refused(str(exc), 403) from None
                try:
                    self._provision(tx, policy, now)
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

    def _provision(self, tx: Any, policy: Policy, now: datetime) -> None:
        """Create the policy's data key, counters and secret values (new or redefined)."""
        wrapped = tx.get_policy_key(policy.name)
        if wrapped is None:
            key = new_policy_key()
            recovery = {
                m.name: m.recovery_key.encode() for m in policy.board.members if m.recovery_key
            }
            shares = (
                seal_shares(key, policy.name, recovery, min(policy.board.threshold, len(recovery)))
                if recovery
                else "{}"
            )
            tx.put_policy_key(policy.name, wrap_policy_key(self.master, policy.name, key), shares)
        else:
            key = unwrap_policy_key(self.master, policy.name, wrapped)
        for counter in policy.counters:
            tx.create_counter(policy.name, counter.name)
        values: dict[str, sv.Value] = {}
        ordered = sorted(policy.secrets, key=lambda s: s.kind != "x509-ca")  # CAs first
        for secret in ordered:
            definition = sv.definition_digest(secret)
            stored = tx.get_secret(policy.name, secret.name)
            if stored is not None and stored.definition_digest == definition:
                values[secret.name] = self._open_value(key, policy.name, stored)
                continue
            if secret.kind == "imported":
                value = sv.open_imported(secret.sealed, self.identity.key, policy.name, secret.name)
            else:
                value = sv.generate(secret, values, now)
            values[secret.name] = value
            self._store_value(tx, key, policy.name, secret.name, secret.kind, definition, value)

    def _open_value(self, key: bytes, policy: str, record: SecretRecord | None) -> sv.Value:
        if record is None:
            raise SpmError(f"secrets: a secret of policy '{policy}' is missing from the store")
        return json.loads(open_secret(key, policy, record.name, record.ciphertext))

    def _policy_key(self, tx: Any, policy: str) -> bytes:
        """A policy's data key (it never changes once made), unwrapped once."""
        key = self._keys.get(policy)
        if key is None:
            wrapped = tx.get_policy_key(policy)
            if wrapped is None:
                raise SpmError(f"secrets: policy '{policy}' has no data key")
            key = self._keys[policy] = unwrap_policy_key(self.master, policy, wrapped)
        return key

    def _value(self, tx: Any, key: bytes, policy: str, name: str) -> sv.Value:
        """A secret's value, decrypted at most once per ``CURRENT_TTL`` per process."""
        cached = self._values.get((policy, name))
        if cached is not None and time.monotonic() - cached[0] < CURRENT_TTL:
            return cached[1]
        value = self._open_value(key, policy, tx.get_secret(policy, name))
        self._values[(policy, name)] = (time.monotonic(), value)
        return value

    def _store_value(
        self,
        tx: Any,
        key: bytes,
        policy: str,
        name: str,
        kind: str,
        definition: str,
        value: sv.Value,
    ) -> None:
        self._values.pop((policy, name), None)
        blob = seal_secret(key, policy, name, json.dumps(value).encode())
        tx.put_secret(
            SecretRecord(
                policy=policy,
                name=name,
                kind=kind,
                definition_digest=definition,
                ciphertext=blob,
                created_at=datetime.now(UTC),
            )
        )

    # --- workload attestation -------------------------------------------------------------

    def new_nonce(self) -> tuple[bytes, datetime]:
        """A fresh nonce for one attestation (self-authenticating: nothing is written)."""
        return self.nonces.issue()

    def attest(
        self,
        policy_name: str,
        service_name: str,
        *,
        nonce: bytes,
        evidence: bytes,
        hpke_public_key: bytes,
        csr_pem: bytes,
    ) -> AttestResult:
        """Verify a workload and release its certificate and secrets, or refuse and
        audit why. A genuine nonce is spent whatever the outcome, in the same
        commit as the release or the refusal."""
        detail: dict[str, Any] = {"service": service_name}
        refusal: Refused | None = None
        now = datetime.now(UTC)
        nonce_state, nonce_expires = self.nonces.check(nonce, now)
        checked: tuple[PolicyRecord, Policy, Claims, x509.CertificateSigningRequest] | None = None
        try:
            record, policy = self.policy(policy_name)
            detail["policy_version"] = record.version
            if policy.service(service_name) is None:
                raise Refused(f"policy: '{policy_name}' has no service '{service_name}'", 404)
            if nonce_state != "ok":
                raise Refused(f"nonce: the nonce is {nonce_state}")
            claims = self._verify(policy, evidence, now)
            detail["kind"] = claims.kind
            detail["measurement"] = next(iter(claims.measurements.values()), None)
            self._match(policy, service_name, claims)
            csr = _load_csr(csr_pem)
            expected = workload_report_data(nonce, hpke_public_key, csr_public_key_sha256(csr))
            if claims.report_data_bytes != expected:
                raise Refused(
                    "report_data: the evidence does not bind this nonce, HPKE key and CSR key"
                )
            checked = (record, policy, claims, csr)
        except Refused as exc:
            refusal = exc

        def decide(tx: Any) -> AttestResult | Refused:
            nonlocal refusal
            if nonce_expires is not None:
                if not tx.spend_nonce(nonce, nonce_expires):
                    refusal = Refused("nonce: the nonce is used")
                self._spent += 1
                if self._spent % PRUNE_EVERY == 0:
                    tx.prune(now)
            if refusal is not None or checked is None:
                assert refusal is not None
                tx.append_audit(
                    "attestation.refused", policy_name, {**detail, "reason": str(refusal)}
                )
                return refusal
            record, policy, claims, csr = checked
            return self._release(
                tx, record, policy, service_name, claims, nonce, hpke_public_key, csr, now
            )

        outcome = self.group.run(decide)
        if isinstance(outcome, Refused):
            raise outcome
        return outcome

    def _verify(self, policy: Policy, evidence: bytes, now: datetime) -> Claims:
        platforms = policy.platforms
        try:
            ev = Evidence.parse(evidence)
            if ev.kind not in platforms.accept:
                raise Refused(f"platform: {ev.kind} evidence is not accepted by this policy")
            root = platforms.simulation_root.encode() if platforms.simulation_root else None
            claims = verify(ev, at=now, sim_root=root, allow_debug=platforms.allow_debug)
        except SecflError as exc:
            if isinstance(exc, Refused):
                raise
            raise Refused(f"evidence: {exc}") from None
        if claims.kind != "simulated":
            if claims.tcb_status == "unknown":
                if not platforms.allow_unknown_tcb:
                    raise Refused(
                        "tcb: the TCB status is unknown (no collateral) and the policy requires one"
                    )
            elif TCB_ORDER.index(claims.tcb_status) > TCB_ORDER.index(platforms.min_tcb_status):
                raise Refused(
                    f"tcb: status {claims.tcb_status} is below the policy's minimum "
                    f"{platforms.min_tcb_status}"
                )
        return claims

    @staticmethod
    def _match(policy: Policy, service_name: str, claims: Claims) -> None:
        service = policy.service(service_name)
        assert service is not None
        for identity in service.identities(claims.kind):
            if all(
                str(claims.measurements.get(k, "")).lower() == str(v).lower()
                if isinstance(v, str)
                else claims.measurements.get(k) == v
                for k, v in identity.items()
            ):
                return
        mr = next(iter(claims.measurements.values()), "")
        raise Refused(
            f"measurement: {claims.kind} measurement {mr} is not accepted for service "
            f"'{service_name}'"
        )

    def _release(
        self,
        tx: Any,
        record: PolicyRecord,
        policy: Policy,
        service_name: str,
        claims: Claims,
        nonce: bytes,
        hpke_public_key: bytes,
        csr: x509.CertificateSigningRequest,
        now: datetime,
    ) -> AttestResult:
        service = policy.service(service_name)
        assert service is not None
        token = pysecrets.token_urlsafe(32)
        expires = now + timedelta(seconds=self.session_ttl)
        key = self._policy_key(tx, policy.name)
        values: dict[str, sv.Value] = {}
        ca = self._value(tx, key, policy.name, policy.identity_ca)
        parts = service.released_parts()
        for volume_name in service.volumes:  # a service opens its volumes: it gets their keys
            volume = policy.volume(volume_name)
            assert volume is not None
            parts[volume.key] = {"*"}
        for name, selectors in sorted(parts.items()):
            secret = policy.secret(name)
            assert secret is not None
            value = self._value(tx, key, policy.name, name)
            if sv.needs_renewal(secret, value, now):
                issuer = policy.secret(secret.issuer)  # type: ignore[union-attr]
                assert issuer is not None
                ca_value = self._value(tx, key, policy.name, issuer.name)
                value = sv.generate(secret, {issuer.name: ca_value}, now)
                self._store_value(
                    tx, key, policy.name, name, secret.kind, sv.definition_digest(secret), value
                )
                tx.append_audit("secret.renewed", policy.name, {"secret": name})
            values[name] = sv.restrict(value, selectors)
        cert = sv.issue_service_certificate(
            ca, csr, policy=policy.name, service=service_name,
            ttl_seconds=service.certificate_ttl, now=now,
        )  # fmt: skip
        sealed = sv.seal_release(
            values, hpke_public_key, sv.release_info(policy.name, service_name, nonce)
        )
        serial = format(cert.serial_number, "x")
        fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        tx.add_certificate(policy.name, service_name, serial, fingerprint, cert.not_valid_after_utc)
        tx.add_session(
            hashlib.sha256(token.encode()).digest(),
            policy.name,
            service_name,
            record.version,
            expires,
        )
        measurement = next(iter(claims.measurements.values()), None)
        tx.append_audit(
            "attestation.accepted",
            policy.name,
            {
                "service": service_name,
                "policy_version": record.version,
                "kind": claims.kind,
                "measurement": measurement,
                "tcb_status": claims.tcb_status,
                "simulated": claims.simulated,
            },
        )
        tx.append_audit(
            "certificate.issued",
            policy.name,
            {
                "service": service_name,
                "serial": serial,
                "not_after": cert.not_valid_after_utc.isoformat(),
            },
        )
        tx.append_audit(
            "secrets.released",
            policy.name,
            {"service": service_name, "secrets": sorted(values)},
        )
        return AttestResult(
            certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
            ca_certificate=ca["crt"],
            sealed_secrets=sealed,
            session_token=token,
            session_expires=expires,
            policy_digest=record.digest,
            policy_version=record.version,
            secret_names=sorted(values),
        )

    # --- counters -------------------------------------------------------------------------

    def increment(self, token: str, policy_name: str, counter: str) -> int:
        """Add one to a counter, if the session token's service may; durable on return."""
        return self.group.run(self._increment_op(token, policy_name, counter))

    async def increment_async(self, token: str, policy_name: str, counter: str) -> int:
        """:meth:`increment` for the event loop (the hot path of the HTTP API)."""
        return await self.group.run_async(self._increment_op(token, policy_name, counter))

    def _increment_op(self, token: str, policy_name: str, counter: str) -> Callable[[Any], int]:
        """Check the session's right to ``counter``; return the write that bumps it."""
        now = datetime.now(UTC)
        token_hash = hashlib.sha256(token.encode()).digest()
        session = self._session(token_hash)
        if session is None or session.policy != policy_name:
            raise Refused("session: unknown session token for this policy", 401)
        if session.expires_at <= now:
            raise Refused("session: the session token has expired; attest again", 401)
        _, policy = self.policy(policy_name, session.policy_version)
        service = policy.service(session.service)
        if service is None or counter not in service.counters:
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
        self, token: str, policy_name: str, volume: str, version: int, tag: str
    ) -> dict[str, Any]:
        """Accept a volume release as current if it is newer than the recorded one
        (the counter moves on); the same release again is fine; an older one, or the
        same version with another tag, is a rollback and refused."""
        session = self._session(hashlib.sha256(token.encode()).digest())
        now = datetime.now(UTC)
        if session is None or session.policy != policy_name or session.expires_at <= now:
            raise Refused("session: unknown or expired session token for this policy", 401)
        _, policy = self.policy(policy_name, session.policy_version)
        spec = policy.volume(volume)
        service = policy.service(session.service)
        if spec is None or spec.counter is None:
            raise Refused(f"volume: '{volume}' of '{policy_name}' is not rollback-protected", 404)
        if service is None or volume not in service.volumes:
            raise Refused(f"volume: service '{session.service}' may not open '{volume}'")
        tag = tag.lower()
        counter = spec.counter

        def record(tx: Any) -> dict[str, Any] | Refused:
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
            value = int(tx.increment(policy_name, counter))
            tx.append_audit(
                "volume.recorded",
                policy_name,
                {"volume": volume, "version": version, "tag": tag, "counter": value,
                 "service": session.service},
            )  # fmt: skip
            return {"volume": volume, "version": version, "tag": tag, "counter": value}

        outcome = self.group.run(record)
        if isinstance(outcome, Refused):
            raise outcome
        return outcome

    # --- revocations ----------------------------------------------------------------------

    def revoke(
        self, policy_name: str, statement: dict[str, str], signatures: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Record a board-approved revocation of a certificate serial."""
        _, policy = self.policy(policy_name)
        doc = {
            "policy": policy_name,
            "serial": str(statement.get("serial", "")).lower(),
            "service": str(statement.get("service", "")),
            "reason": str(statement.get("reason", "")),
        }
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
        with self.store.transaction() as tx:
            tx.add_revocation(policy_name, doc["serial"], doc["service"], doc["reason"], now)
            tx.append_audit("certificate.revoked", policy_name, {**doc, "approvers": approvers})
        return {**doc, "at": now.isoformat()}

    def revocations(self, policy_name: str) -> list[dict[str, Any]]:
        self.policy(policy_name)
        with self.store.read() as tx:
            rows = tx.revocations(policy_name)
        return [
            {"serial": r.serial, "service": r.service, "reason": r.reason, "at": _iso(r.at)}
            for r in rows
        ]

    # --- audit ----------------------------------------------------------------------------

    def _audit_refusal(self, event: str, policy: str | None, detail: dict[str, Any]) -> None:
        self.group.run(lambda tx: tx.append_audit(event, policy, detail))


def revocation_digest(doc: dict[str, str]) -> str:
    """SHA-256 (hex) of a revocation statement's canonical JSON; board members sign it."""
    return hashlib.sha256(
        json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem)
        valid = csr.is_signature_valid
    except Exception:
        raise Refused("csr: not a PEM certificate signing request", 400) from None
    if not valid:
        raise Refused("csr: the CSR's signature does not verify", 400)
    return csr


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
