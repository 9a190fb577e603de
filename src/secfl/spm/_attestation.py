"""Workload attestation: the nonce, the evidence checks, and the release.

A workload proves what it runs (evidence over a fresh nonce, its HPKE key and its
CSR key); if the claims match its service in the current policy, it receives a
certificate from the policy's identity CA, its secrets sealed to its HPKE key, and
a session token. The nonce is spent, and the decision audited, in one commit.

:class:`Attestor` does this for :class:`~secfl.spm._service.Spm`, with what it is
given: the policies, the nonce issuer, the secret vault and the group commit.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secfl._internal.canonical import canonical_json
from secfl._internal.values import one_line
from secfl.errors import IntegrityError, Refused, SecflError, SpmError
from secfl.policy._model import Policy
from secfl.policy._new_version import code_pinned_by_counter
from secfl.policy._secrets import CertSecret
from secfl.spm import _sealing as sv
from secfl.spm._evidence_checks import check_evidence, check_measurements, claims_identity
from secfl.spm._groupcommit import GroupCommit
from secfl.spm._issued import EVENT as ISSUED_EVENT
from secfl.spm._issued import issued_change, issued_detail
from secfl.spm._nonces import NonceIssuer
from secfl.spm._policy_cache import PolicyCache
from secfl.spm._refusals import RefusalBudget
from secfl.spm._renewal import end_replaced
from secfl.spm._report_data import csr_public_key_sha256, workload_report_data
from secfl.spm._revocation import revocation_keys, revoked_reason
from secfl.spm._sealing import release_key
from secfl.spm._site_key import check_site_signature, site_key_claim
from secfl.spm._store import PolicyRecord
from secfl.spm._tx import Tx
from secfl.spm._vault import SecretVault
from secfl.tee._claims import Claims

if TYPE_CHECKING:  # (the fetching is loaded by an SPM started with --pccs only)
    from secfl.spm._amd_crl import AmdCrls
    from secfl.spm._collateral import CollateralSource

__all__ = [
    "PRUNE_EVERY",
    "AttestResult",
    "Attestor",
    "Refused",
]

#: Expired sessions and spent nonces are pruned every this many attestations.
PRUNE_EVERY = 1000


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
    #: The certificate's serial (lowercase hex).
    serial: str = ""


class Attestor:
    """Attests workloads against the current version of their policy and releases
    what their service may receive; a session lasts as long as the certificate
    issued with it."""

    def __init__(
        self,
        *,
        policies: PolicyCache,
        nonces: NonceIssuer,
        vault: SecretVault,
        group: GroupCommit,
        refusals: RefusalBudget | None = None,
        collateral: CollateralSource | None = None,
        amd_crls: AmdCrls | None = None,
    ) -> None:
        self.policies = policies
        #: Intel collateral for TCB appraisal (``secfl spm serve --pccs``), if any.
        self.collateral = collateral
        #: AMD's CRLs (``--amd-crl DIR``) or the opt-out (``--no-amd-crl``); None:
        #: neither, and SEV-SNP evidence is refused.
        self.amd_crls = amd_crls
        self.nonces = nonces
        self.vault = vault
        self.group = group
        self.refusals = refusals or RefusalBudget()
        self._spent = 0

    def attest(
        self,
        policy_name: str,
        service_name: str,
        *,
        nonce: bytes,
        evidence: bytes,
        hpke_public_key: bytes,
        csr_pem: bytes,
        replaces: str | None = None,
        site_signature: str | None = None,
    ) -> AttestResult:
        """Verify a workload and release its certificate and secrets, or refuse and
        audit why. A genuine nonce is spent whatever the outcome, in the same
        commit as the release or the refusal. ``replaces``: the session token of this
        workload's last attestation, which ends in the same commit
        (:mod:`secfl.spm._renewal`). ``site_signature``: for a service whose policy
        entry names a ``site_key``, that key's signature over this enrolment
        (:mod:`secfl.spm._site_key`); a service that names none needs none."""
        detail: dict[str, Any] = {"service": service_name}
        refusal: Refused | None = None
        now = datetime.now(UTC)
        nonce_state, nonce_expires = self.nonces.check(nonce, now)
        checked: tuple[PolicyRecord, Policy, Claims, x509.CertificateSigningRequest] | None = None
        verified = False  # evidence that verified: its refusals have a budget of their own
        genuine = False  # the policy's code, bound to this nonce: audited one by one
        try:
            record, policy = self.policies.get(policy_name)
            detail["policy_version"] = record.version
            service = policy.service(service_name)
            if service is None:
                raise Refused(
                    f"policy: '{policy_name}' has no service '{service_name}' "
                    f"(its services: {policy.service_list()})",
                    404,
                )
            pinned = code_pinned_by_counter(policy, service_name)
            if pinned:
                raise Refused(
                    f"policy: version {record.version} pins code volume '{pinned[0]}' by a "
                    "counter, so its key holder could change the code without the board; the "
                    "board submits a version that pins it by its tag"
                )
            if nonce_state != "ok":
                raise Refused(f"nonce: the nonce is {nonce_state}")
            claims = check_evidence(policy, evidence, now, self.collateral, self.amd_crls)
            verified = True
            detail["kind"] = claims.kind
            detail["measurement"] = next(iter(claims.measurements.values()), None)
            check_measurements(policy, service_name, claims.kind, claims.measurements)
            try:
                release_key(hpke_public_key)
            except SpmError as exc:
                raise Refused(str(exc), 400) from None
            csr = _load_csr(csr_pem)
            expected = workload_report_data(nonce, hpke_public_key, csr_public_key_sha256(csr))
            if claims.report_data_bytes != expected:
                raise Refused(
                    "report_data: the evidence does not bind this nonce, HPKE key and CSR key"
                )
            # Only now is it the policy's code, and fresh: evidence that merely verifies
            # could be one quote (of any code, from any machine of an accepted kind)
            # replayed with a new nonce each time, each refusal a permanent audit entry
            # outside the refusal budget (a review)
            genuine = True
            if service.site_key is not None:
                # every site runs the same code: the name it enrols under is its host's
                # choice, and the site key is what tells one site from another
                check_site_signature(
                    service.site_key, policy_name, service_name, expected, site_signature
                )
            refusal_reason = revoked_reason(
                self.policies.revoked(policy_name), service_name, "", claims_identity(claims)
            )
            if refusal_reason is not None:
                raise Refused(f"revoked: {refusal_reason}")
            checked = (record, policy, claims, csr)
        except Refused as exc:  # its text may quote the sender's (a certificate's name)
            refusal = Refused(one_line(str(exc)), exc.status)

        def decide(tx: Tx) -> AttestResult | Refused:
            nonlocal refusal
            if nonce_expires is not None:
                # Spent in the database and in memory: a nonce row deleted from the
                # database must not let the same evidence attest twice.
                if not tx.nonces.spend(nonce, nonce_expires) or self.nonces.seen(nonce, now):
                    refusal = Refused("nonce: the nonce is used")
                self._spent += 1
                if self._spent % PRUNE_EVERY == 0:
                    tx.sessions.prune(now)
                    tx.nonces.prune(now)
            if refusal is not None or checked is None:
                assert refusal is not None
                refused = {**detail, "reason": one_line(str(refusal))}
                if genuine:
                    tx.audit.append("attestation.refused", policy_name, refused)
                else:  # no genuine nonce or quote: anyone can send these, without end
                    lane = "evidence" if verified else "unverified"
                    self.refusals.append(tx, "attestation.refused", policy_name, refused, lane=lane)
                return refusal
            record, policy, claims, csr = checked
            try:
                with tx.savepoint():
                    result = self._release(
                        tx, record, policy, service_name, claims, nonce, hpke_public_key, csr, now
                    )
                    end_replaced(tx, policy.name, service_name, replaces, result.serial, now)
                    return result
            except Exception as exc:  # whatever failed, the nonce stays spent and it is audited
                failed = exc if isinstance(exc, Refused) else None
                if isinstance(exc, IntegrityError):  # the database's doing: its own line
                    failed = Refused(str(exc), 400)
                reason = str(exc) if isinstance(exc, SecflError) else type(exc).__name__
                refusal = failed or Refused(f"release: {reason}", 500)
                tx.audit.append(
                    "attestation.refused", policy_name, {**detail, "reason": one_line(str(refusal))}
                )
                return refusal

        outcome = self.group.run(decide)
        if isinstance(outcome, Refused):
            raise outcome
        return outcome

    def _release(
        self,
        tx: Tx,
        record: PolicyRecord,
        policy: Policy,
        service_name: str,
        claims: Claims,
        nonce: bytes,
        hpke_public_key: bytes,
        csr: x509.CertificateSigningRequest,
        now: datetime,
    ) -> AttestResult:
        from secfl.spm._sessions import current_version  # (it imports this module)

        current = current_version(tx, policy.name)
        if current is not None and current > record.version:
            # the version was read outside this write: a board's new version (one that
            # drops this measurement, say) may have committed meanwhile
            raise Refused(
                f"policy: version {current} of '{policy.name}' replaced version "
                f"{record.version} while this attestation was checked: attest again",
                409,
            )
        # revoked while this attestation was checked (the check above read a cached
        # view, which another SPM sharing the database does not refresh: a review)
        identity = claims_identity(claims)
        keys = revocation_keys(service_name, "", identity)
        revoked = revoked_reason(tx.revocations.of(policy.name, keys), service_name, "", identity)
        if revoked is not None:
            raise Refused(f"revoked: {revoked}")
        service = policy.service(service_name)
        assert service is not None
        # what the session was attested as, with the site key that signed it: a later
        # version that names another key (or a key where there was none) ends it
        attested = {**identity, **site_key_claim(service.site_key)}
        token = secrets.token_urlsafe(32)
        key = self.vault.policy_key(tx, policy.name)
        values: dict[str, sv.Value] = {}
        ca_secret = policy.secret(policy.identity_ca)
        assert ca_secret is not None
        ca = self.vault.value(
            tx, key, policy.name, policy.identity_ca, sv.definition_digest(ca_secret)
        )
        parts = service.released_parts()
        for volume_name in service.volumes:  # a service opens its volumes: it gets their keys
            volume = policy.volume(volume_name)
            assert volume is not None
            parts[volume.key] = {"*"}
        for name, selectors in sorted(parts.items()):
            secret = policy.secret(name)
            assert secret is not None
            value = self.vault.value(tx, key, policy.name, name, sv.definition_digest(secret))
            if isinstance(secret, CertSecret) and sv.needs_renewal(secret, value, now):
                issuer = policy.secret(secret.issuer)
                assert issuer is not None
                ca_value = self.vault.value(
                    tx, key, policy.name, issuer.name, sv.definition_digest(issuer)
                )
                value = sv.generate(secret, {issuer.name: ca_value}, now)
                definition = sv.definition_digest(secret)
                self.vault.store_value(
                    tx, key, policy.name, name, secret.kind, definition, value, "renewed"
                )
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
        not_after = cert.not_valid_after_utc
        # the session lives as long as its certificate: the workload attests again
        # before both end (two thirds in), and the revocation list names the
        # certificate of a session the current version no longer accepts only while
        # the session is stored (an hour's session left a dropped build's day-long
        # certificate unlisted, and a run longer than the hour without a session)
        expires = not_after
        tx.certificates.add(policy.name, service_name, serial, fingerprint, not_after)
        tx.sessions.add(
            hashlib.sha256(token.encode()).digest(),
            policy.name,
            service_name,
            record.version,
            expires,
            serial=serial,
            identity=canonical_json(attested).decode("utf-8"),
        )
        measurement = next(iter(claims.measurements.values()), None)
        tx.audit.append(
            "attestation.accepted",
            policy.name,
            {
                "service": service_name,
                "policy_version": record.version,
                "kind": claims.kind,
                "measurement": measurement,
                "tcb_status": claims.tcb_status,
                "simulated": claims.simulated,
                # what a board's `secfl revoke --kind platform --subject` names
                "platform": claims_identity(claims)["platform"],
            },
        )
        # with the full attested identity, into the SPM's index of issued certificates
        # (secfl.spm._issued): what the revocation list implies must not rest on the
        # session row, which the database's host can delete
        issued = issued_detail(service_name, serial, not_after, record.version, attested)
        tx.audit.append(ISSUED_EVENT, policy.name, issued)
        change = issued_change(policy.name, issued)
        assert change is not None
        tx.note(change)
        tx.audit.append(
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
            serial=serial,
        )


def _load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem)
        valid = csr.is_signature_valid
    except Exception:
        raise Refused("csr: not a PEM certificate signing request", 400) from None
    if not valid:
        raise Refused("csr: the CSR's signature does not verify", 400)
    return csr
