"""The Security Policy Manager's decisions, apart from HTTP.

:class:`Spm` accepts board-approved policy versions, attests workloads against
them and releases certificates and secrets only to matching evidence, keeps
monotonic counters, records revocations, and writes every decision to the
hash-chained audit log in the same transaction as the change it records.
The FastAPI app (``secfl.spm._app``) is a thin layer over this class.

It is assembled from parts with one job each, and passes them what they need:
:class:`~secfl.spm._policy_cache.PolicyCache` (policy versions and revocations),
:class:`~secfl.spm._policy_intake.PolicyIntake` (the board's new policy versions),
:class:`~secfl.spm._attestation.Attestor` (workload attestation and release),
:class:`~secfl.spm._sessions.SessionGate` (session tokens, checked at each use),
:class:`~secfl.spm._revoker.Revoker` (the board's revocation statements),
:class:`~secfl.spm._volume_records.VolumeRecords` (rollback-protected volumes),
:class:`~secfl.spm._vault.SecretVault` (secret values at rest) and
:class:`~secfl.spm._groupcommit.GroupCommit` (many writes, one durable commit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from secfl.errors import Refused
from secfl.policy._model import Policy
from secfl.policy._round_counter import round_counter
from secfl.policy._signatures import REVOCATION_DOMAIN
from secfl.spm._attestation import Attestor, AttestResult
from secfl.spm._audit import PAGE_CHARS, AuditEntry
from secfl.spm._collateral_floors import AuditedFloors
from secfl.spm._events import check_round
from secfl.spm._groupcommit import GroupCommit
from secfl.spm._identity import SpmIdentity
from secfl.spm._increment import Increment
from secfl.spm._masterkey import MasterKey
from secfl.spm._nonces import NonceIssuer
from secfl.spm._policy_cache import CURRENT_TTL, PolicyCache
from secfl.spm._policy_intake import PolicyIntake
from secfl.spm._refusals import RefusalBudget
from secfl.spm._report_data import spm_report_data
from secfl.spm._revocation import revocation_digest, revocation_doc
from secfl.spm._revoker import Revoker
from secfl.spm._sessions import SessionGate, current_version, refuse_revoked, refuse_superseded
from secfl.spm._status import StatusDesk
from secfl.spm._status_index import StatusIndex
from secfl.spm._store import PolicyRecord, Store
from secfl.spm._tx import Tx
from secfl.spm._vault import SecretVault
from secfl.spm._volume_records import VolumeRecords
from secfl.tee._platforms import Platform
from secfl.tee._simulated import SimulatedPlatform

if TYPE_CHECKING:  # (the fetching is loaded by an SPM started with --pccs only)
    from secfl.spm._amd_crl import AmdCrls
    from secfl.spm._collateral import CollateralSource

# Besides Spm: names kept importable from here for the callers that take them from here.
__all__ = [
    "CURRENT_TTL",
    "REVOCATION_DOMAIN",
    "AttestResult",
    "Refused",
    "Spm",
    "revocation_digest",
    "revocation_doc",
]


#: What a service of role ``any`` (a Flower SuperLink or site, which run no secfl
#: aggregator) may write to the audit log through :meth:`Spm.report`.
ROLE_ANY_EVENTS = "flower."


class Spm:
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
        status_index: StatusIndex | None = None,
        collateral: CollateralSource | None = None,
        amd_crls: AmdCrls | None = None,
    ) -> None:
        self.store = store
        self.master = master
        self.platform = platform
        self.identity = identity
        self.measurement = measurement
        self.nonces = NonceIssuer(master.derive("attestation-nonce"), nonce_ttl)
        self.group = GroupCommit(store)
        self.policies = PolicyCache(store)
        self.vault = SecretVault(master, identity.key)
        self.sessions = SessionGate(store, self.policies)
        #: What anyone can make the SPM refuse, written to the log within a budget.
        self.refusals = RefusalBudget()
        if collateral is not None and store.integrity is not None:
            # What verified collateral raised must hold across restarts: the audit log.
            collateral.floors = AuditedFloors(store, self.group)
        if amd_crls is not None and amd_crls.folder is not None and store.integrity is not None:
            amd_crls.floors = AuditedFloors(store, self.group)  # the same: AMD's CRLs
        self.attestor = Attestor(
            policies=self.policies,
            nonces=self.nonces,
            vault=self.vault,
            group=self.group,
            refusals=self.refusals,
            collateral=collateral,
            amd_crls=amd_crls,
        )
        self.intake = PolicyIntake(store, self.policies, self.vault, self._audit_refusal)
        self.revoker = Revoker(store, self.policies, self.group, self.refusals)
        self.volumes = VolumeRecords(store, self.policies, self.sessions, self.vault, self.group)
        #: ``secfl status`` answers, from the verified log's facts (filled at start by
        #: :func:`~secfl.spm._state.verify_state` when given; else at the first request).
        self.status_desk = StatusDesk(self, status_index or StatusIndex())
        self._closed = False

    @property
    def nonce_ttl(self) -> float:
        """Seconds an attestation nonce stays valid."""
        return self.nonces.ttl

    @nonce_ttl.setter
    def nonce_ttl(self, seconds: float) -> None:
        self.nonces.ttl = seconds

    def close(self) -> None:
        """Finish the pending commits (and tell the log what the refusal budget left
        out), then close the store. Once: later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # stopping either way; the count is a courtesy
            self.group.run(self.refusals.flush)
        self.group.close()
        if self.attestor.collateral is not None:
            self.attestor.collateral.close()
        self.store.close()

    # --- the SPM's own attestation --------------------------------------------------------

    def attestation(self, nonce: bytes) -> dict[str, Any]:
        """Evidence binding ``nonce`` and the SPM's TLS key (for ``GET /v1/attestation``)."""
        if not 8 <= len(nonce) <= 64:
            raise Refused("attestation: the nonce must be 8 to 64 bytes", 400)
        report_data = spm_report_data(nonce, self.identity.spki_sha256)
        if self.measurement is not None and isinstance(self.platform, SimulatedPlatform):
            evidence = self.platform.get_evidence(report_data, measurement=self.measurement)
        else:
            evidence = self.platform.get_evidence(report_data)
        answer: dict[str, Any] = {
            "evidence": evidence.to_json(),
            "tls_spki_sha256": self.identity.spki_sha256,
            "kind": evidence.kind,
        }
        crls = self.attestor.amd_crls
        if evidence.kind == "snp" and crls is not None:  # what a client checks it against
            answer["amd_crls"] = crls.served()
        return answer

    # --- workload attestation (secfl.spm._attestation) ------------------------------------

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
        replaces: str | None = None,
        site_signature: str | None = None,
    ) -> AttestResult:
        """Verify a workload and release its certificate and secrets, or refuse and
        audit why (:meth:`Attestor.attest <secfl.spm._attestation.Attestor.attest>`);
        ``replaces``: the session token this renews (that session ends);
        ``site_signature``: the site key's, for a service that names one."""
        return self.attestor.attest(
            policy_name,
            service_name,
            nonce=nonce,
            evidence=evidence,
            hpke_public_key=hpke_public_key,
            csr_pem=csr_pem,
            replaces=replaces,
            site_signature=site_signature,
        )

    # --- policies -------------------------------------------------------------------------

    def policy(self, name: str, version: int | None = None) -> tuple[PolicyRecord, Policy]:
        """A policy version (default: the current one, re-read at most every
        ``CURRENT_TTL`` seconds: a replica sharing the database sees another
        replica's new version within that time)."""
        return self.policies.get(name, version)

    def submit_policy(self, document: str, signatures: list[dict[str, Any]]) -> PolicyRecord:
        """Accept a new policy or version if its board rule is met and it follows the
        current version; otherwise refuse it, change nothing, and audit the refusal."""
        return self.intake.submit(document, signatures)

    # --- counters -------------------------------------------------------------------------

    async def increment_async(
        self,
        token: str,
        policy_name: str,
        counter: str,
        expect: int | None = None,
        round: dict[str, Any] | None = None,
        *,
        request: str | None = None,
    ) -> int:
        """Add one to a counter, if the session token's service may (and, given
        ``expect``, only if the counter is at that value); durable on return. Runs on
        the event loop (the hot path of the HTTP API); the write goes to the group commit."""
        op = self._increment_op(token, policy_name, counter, expect, round, request)
        return await self.group.run_async(op)

    def _increment_op(
        self,
        token: str,
        policy_name: str,
        counter: str,
        expect: int | None = None,
        round: dict[str, Any] | None = None,
        request: str | None = None,
    ) -> Callable[[Tx], int]:
        """Check the session's right to ``counter``; return the write that bumps it.

        With ``expect``, the write is a compare-and-increment inside the transaction:
        a counter at any other value is refused (409) and left as it is, so an
        aggregator that lost the counter to another one learns it in the same request
        that would have moved it, without burning a value (a read before the increment
        could not promise that: another aggregator may move it in between).

        Only a session attested under the policy's current version may move a counter:
        once the board approved a new version, the old version's run must not commit
        another round (it is checked again inside the write, so a version accepted
        while the increment waited for its commit counts too).

        With ``round`` (an aggregator's ``fl.round`` detail, checked as :meth:`report`
        checks it), the round the increment commits is logged in the same transaction,
        at the counter value it gets: the log never has the round without its counter,
        nor the counter without its round, and the aggregator saves a request a round.
        So no other service moves the federation's round counter
        (:mod:`secfl.policy._round_counter`).

        ``request`` names a compare-and-increment, so that the same request sent again
        after its answer was lost gets the same answer (:mod:`secfl.spm._increment`)."""
        session, service = self.sessions.admit(token, policy_name)
        if counter not in service.counters:
            raise Refused(f"counter: service '{session.service}' may not increment '{counter}'")
        record, policy = self.policies.get(policy_name)
        if service.role != "aggregator" and counter == round_counter(policy):
            raise Refused(  # a version stored before new versions were refused this (a review)
                f"counter: '{counter}' is the federation's round counter, which only the "
                f"aggregator moves (with the round it commits), not service "
                f"'{session.service}' (role {service.role}): the board removes it from the "
                "service's counters in a new version"
            )
        if round is not None:
            if service.role != "aggregator":  # a round is an aggregator's (as report's)
                raise Refused(f"report: service '{session.service}' is not an aggregator")
            round = check_round({**round, "counter": 0})
        if request is not None and expect is None:
            raise Refused("counter: a request name goes with expect (a compare-and-increment)", 400)
        refuse_superseded(record.version, session.policy_version, policy_name)
        return Increment(policy_name, counter, session, expect=expect, round=round, request=request)

    def report(self, token: str, policy_name: str, event: str, detail: dict[str, Any]) -> int:
        """Write an aggregator's finding (e.g. the audit's exclusions) to the audit log,
        as ``fl.<event>`` naming the reporting service; returns the entry's number."""
        session, service = self.sessions.admit(token, policy_name)
        if service.role not in ("aggregator", "any"):
            raise Refused(f"report: service '{session.service}' is not an aggregator")
        if service.role == "any" and not event.startswith(ROLE_ANY_EVENTS):
            # a Flower site's code posted the aggregator's findings (`secfl status` shows
            # them as the aggregator's exclusions, 20 push real ones out): found by a review
            raise Refused(
                f"report: service '{session.service}' (role any) may report {ROLE_ANY_EVENTS}* "
                "events only: audit findings, rounds and models are an aggregator's"
            )
        entry = {**detail, "service": session.service}

        def write(tx: Tx) -> int:
            # a session of a replaced version writes nothing (its view of the run, a
            # round's counter say, is no longer the policy's)
            refuse_superseded(current_version(tx, policy_name), session.policy_version,
                              policy_name)  # fmt: skip
            refuse_revoked(tx, policy_name, session)
            return int(tx.audit.append(f"fl.{event}", policy_name, entry).seq)

        return int(self.group.run(write))

    def counter(self, policy_name: str, counter: str) -> int:
        """The value of a counter (anyone may read it), or :class:`Refused` (404)."""
        return self.counter_state(policy_name, counter)[0]

    def counter_state(self, policy_name: str, counter: str) -> tuple[int, str | None]:
        """A counter's value and the name of the compare-and-increment that took it
        there (None if unnamed), or :class:`Refused` (404). The name comes from the
        floors, the value from the database: when they disagree (another SPM sharing the
        database committed, or this one's commit is not applied yet) the floors catch up
        from the log first, so that a committed name is not reported as none."""
        for attempt in (1, 2):
            with self.store.read() as tx:
                value = tx.counters.get(policy_name, counter)
                floors = tx.floors
            if value is None:
                raise Refused(f"counter: '{policy_name}' has no counter '{counter}'", 404)
            newest = None if floors is None else floors.requests.get((policy_name, counter))
            if newest is not None and newest[0] == value:
                return value, newest[1]
            if attempt == 2 or floors is None:
                return value, None
            self.store.sync()
        raise AssertionError("unreachable")

    def request_at(self, policy_name: str, counter: str, value: int) -> str | None:
        """The name of the compare-and-increment that took the counter to ``value``: None
        if unnamed, or older than the SPM remembers (``HISTORY_KEPT`` per counter,
        :mod:`secfl.spm._integrity`);
        :class:`Refused` (404 no such counter, 409 a value not reached yet). A board reset
        that finds two checkpoints at ``value`` (two aggregators forked there) asks."""
        current, newest = self.counter_state(policy_name, counter)
        if value > current:
            raise Refused(
                f"counter: '{counter}' of '{policy_name}' is at {current}, not yet at {value}",
                409,
            )
        if value == current:
            return newest
        with self.store.read() as tx:
            floors = tx.floors
        if floors is None:
            return None
        return floors.history.get((policy_name, counter), {}).get(value)

    # --- rollback-protected volumes (secfl.spm._volume_records) ---------------------------

    def volume_state(self, policy_name: str, volume: str) -> dict[str, Any]:
        """The newest recorded release of a counter-protected volume (version 0: none yet)."""
        return self.volumes.state(policy_name, volume)

    def record_volume(
        self, token: str, policy_name: str, volume: str, version: int, tag: str, proof: str
    ) -> dict[str, Any]:
        """Accept a volume release as current if it is newer than the recorded one
        (:meth:`~secfl.spm._volume_records.VolumeRecords.record`)."""
        return self.volumes.record(token, policy_name, volume, version, tag, proof)

    # --- revocations (secfl.spm._revoker) -------------------------------------------------

    def revoke(
        self, policy_name: str, statement: dict[str, str], signatures: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Record a board-approved revocation, or readmission (``action: readmit``), of a
        certificate, a service, a measurement or a platform (see :func:`revocation_doc`)."""
        return self.revoker.revoke(policy_name, statement, signatures)

    def revocations(self, policy_name: str) -> list[dict[str, Any]]:
        """The board's revocations, then every live certificate they imply."""
        return self.revoker.revocations(policy_name)

    def revocation_list(self, policy_name: str) -> tuple[int, list[dict[str, Any]]]:
        """The list's sequence number (the audit head it was read at) and the list."""
        return self.revoker.revocation_list(policy_name)

    # --- audit ----------------------------------------------------------------------------

    def audit_page(self, since: int, limit: int) -> tuple[list[AuditEntry], tuple[int, str]]:
        """Entries after ``since`` (at most ``limit``, and :data:`PAGE_CHARS` of detail)
        and the head, read from one snapshot whose head was checked (its MAC, and that
        it did not go back) before the SPM signs it."""
        self.store.sync()
        with self.store.read() as tx:
            head = tx.audit.head()
            self.store.check_head(tx, head)
            return tx.audit.since(since, limit, chars=PAGE_CHARS), head

    def _audit_refusal(
        self, event: str, policy: str | None, detail: dict[str, Any], *, verified: bool = False
    ) -> None:
        """Audit a refusal: one by one if ``verified`` (the board signed what was
        refused), else within the :class:`RefusalBudget`."""
        if verified:
            self.group.run(lambda tx: tx.audit.append(event, policy, detail))
        else:
            self.group.run(lambda tx: self.refusals.append(tx, event, policy, detail))
