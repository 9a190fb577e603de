"""The SPM client: talks only to an SPM it has verified by attestation or pin.

First contact (:meth:`SpmClient.verify`): fetch the SPM's self-signed TLS
certificate, connect trusting exactly that certificate, ask for evidence over a
fresh nonce, and check that the evidence is genuine, has an expected measurement
and binds the SHA-256 of the certificate's key. That digest is the pin. Later
clients are built with the pin (:class:`SpmClient`) and refuse any SPM whose key
does not match it. Certificate verification is never switched off: the fetched
certificate is only a candidate until the pin or the evidence vouches for it,
and every request then runs over TLS that verifies against it.

This module holds the first contact and the SPM's API. The pinned connection and
its requests are :class:`~secfl.spm._client_transport.SpmTransport`'s (the base of
:class:`SpmClient`), the fetch of a candidate certificate is in
:mod:`secfl.spm._client_tls`, and the checks of an attested SPM's claims
(:func:`~secfl.spm._client_identity.expected_identity`,
:func:`~secfl.spm._client_identity.appraise`) in :mod:`secfl.spm._client_identity`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secfl.errors import SecflError, SpmError, SpmRefused, VerificationError
from secfl.spm._audit import head_message
from secfl.spm._client_identity import appraise, expected_identity
from secfl.spm._client_tls import fetch_certificate
from secfl.spm._client_transport import SpmTransport
from secfl.spm._report_data import spki_sha256, spm_report_data
from secfl.spm._volumes import record_proof
from secfl.tee._amd_crl import CrlLookup, served_lookup
from secfl.tee._claims import Claims, TcbStatus
from secfl.tee._evidence import Evidence
from secfl.tee._intel_collateral import IntelCollateral
from secfl.tee._verify import verify

#: A compare-and-increment's name (128 bits, hex).
_REQUEST = re.compile(r"[0-9a-f]{32}")
#: The highest sequence number a revocation list may carry (an audit seq: 64-bit signed).
MAX_SEQUENCE = 2**63 - 1

__all__ = ["MAX_SEQUENCE", "SpmClient", "SpmRefused"]


def _shown(value: Any) -> str:
    """A value the SPM sent, shown in a refusal: its type, or a short number."""
    if type(value) is int:
        return str(value) if abs(value) < 10**20 else f"{len(str(abs(value)))} digits"
    return "nothing" if value is None else type(value).__name__


class SpmClient(SpmTransport):
    """A client bound to one SPM by the SHA-256 of its TLS key (``pin``)."""

    # --- first contact --------------------------------------------------------------------

    @classmethod
    def verify(
        cls,
        url: str,
        *,
        expect_measurement: str | Sequence[str],
        sim_root: bytes | None = None,
        allow_debug: bool = False,
        timeout: float = 30.0,
        at: datetime | None = None,
        collateral: Callable[[bytes], IntelCollateral] | None = None,
        min_tcb: TcbStatus = "UpToDate",
        amd_crl: CrlLookup | None = None,
    ) -> tuple[SpmClient, Claims]:
        """Attest the SPM at ``url`` and return a client pinned to its key, with its claims.

        ``collateral`` (for example :meth:`PccsClient.get_collateral`) gives the Intel
        collateral of the SPM's quote: its TCB is then appraised and must be at least
        ``min_tcb``. Without it an SGX or TDX SPM's TCB is ``unknown``. An SEV-SNP SPM's
        chain is checked against AMD's CRL of its kind and product: ``amd_crl``'s, else
        the one the SPM serves beside its evidence; with neither it is refused."""
        expected: list[str] = (
            [expect_measurement] if isinstance(expect_measurement, str) else [*expect_measurement]
        )
        _, cert = fetch_certificate(url, timeout)
        pin = spki_sha256(cert.public_key())
        client = cls(url, pin=pin, timeout=timeout)
        nonce = os.urandom(32)
        doc = client._request("GET", "/v1/attestation", params={"nonce": nonce.hex()})
        try:
            evidence = Evidence.parse(str(doc["evidence"]).encode())
        except (KeyError, TypeError):
            raise VerificationError("spm: the attestation answer has no evidence") from None
        try:
            crl = None
            if evidence.kind == "snp":
                crl = amd_crl if amd_crl is not None else served_lookup(doc.get("amd_crls"))
            claims = verify(
                evidence, at=at, sim_root=sim_root, allow_debug=allow_debug, amd_crl=crl
            )
            if collateral is not None:
                claims = appraise(evidence, claims, collateral, min_tcb, at, allow_debug)
        except SecflError:
            client.close()
            raise
        try:
            expected_identity(claims, expected)
        except VerificationError:
            client.close()
            raise
        if claims.report_data_bytes != spm_report_data(nonce, pin):
            client.close()
            raise VerificationError(
                "key binding: the SPM's evidence does not bind this nonce and its TLS key"
            )
        return client, claims

    # --- the API --------------------------------------------------------------------------

    def submit_policy(
        self, document: str, signatures: Sequence[Any], *, patience: float = 60.0
    ) -> dict[str, Any]:
        """Submit a version; while the SPM is busy reading others' documents (503),
        ask again for up to ``patience`` seconds (a refused submission changes nothing,
        so sending it again is harmless)."""
        sigs = [s if isinstance(s, dict) else s.model_dump(mode="json") for s in signatures]
        body = {"document": document, "signatures": sigs}
        deadline = time.monotonic() + patience
        while True:
            try:
                return self._request("POST", "/v1/policies", json=body)
            except SpmRefused as exc:
                if exc.status != 503 or time.monotonic() >= deadline:
                    raise
            time.sleep(0.5 + secrets.randbelow(1000) / 1000)

    def policy(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/policies/{name}")

    def nonce(self) -> bytes:
        return bytes.fromhex(self._request("POST", "/v1/nonce")["nonce"])

    def attest(
        self,
        policy: str,
        service: str,
        *,
        nonce: bytes,
        evidence: Evidence | bytes,
        hpke_public_key: bytes,
        csr_pem: bytes,
        replaces: str | None = None,
        site_signature: str | None = None,
    ) -> dict[str, Any]:
        """``replaces``: the session token of this workload's last attestation (that
        session ends when this one opens); ``site_signature``: the site key's signature
        over this enrolment (:mod:`secfl.spm._site_key`)."""
        text = evidence.to_json() if isinstance(evidence, Evidence) else evidence.hex()
        body = {
            "nonce": nonce.hex(),
            "evidence": text,
            "hpke_public_key": hpke_public_key.hex(),
            "csr": csr_pem.decode(),
        }
        if replaces is not None:
            body["replaces"] = replaces
        if site_signature is not None:
            body["site_signature"] = site_signature
        doc = self._request("POST", f"/v1/policies/{policy}/services/{service}/attest", json=body)
        doc["sealed_secrets"] = base64.b64decode(doc["sealed_secrets"])
        return doc

    def increment(
        self,
        policy: str,
        counter: str,
        token: str,
        expect: int | None = None,
        round: dict[str, Any] | None = None,
        request: str | None = None,
    ) -> int:
        """The counter moved on by one; with ``expect``, only if it is at that value
        (else :class:`~secfl.errors.SpmRefused` 409 and the counter unchanged); with
        ``round``, the round it commits is logged with it (``fl.round``, at the new value).
        ``request`` names the compare-and-increment (random if not given)."""
        body: dict[str, Any] = {}
        if expect is not None:  # named: sent again after a lost answer, it is answered
            body["expect"] = expect
            body["request"] = request or secrets.token_hex(16)
        if round is not None:
            body["round"] = round
        doc = self._request(
            "POST",
            f"/v1/policies/{policy}/counters/{counter}/increment",
            json=body or None,
            headers={"Authorization": f"Bearer {token}"},
            resend=expect is not None,  # named: sent again, it is answered, not refused
        )
        return int(doc["value"])

    def report(self, policy: str, event: str, detail: dict[str, Any], token: str) -> int:
        """Write an aggregator's finding to the SPM's audit log (``fl.<event>``)."""
        doc = self._request(
            "POST",
            f"/v1/policies/{policy}/events",
            json={"event": event, "detail": detail},
            headers={"Authorization": f"Bearer {token}"},
        )
        return int(doc["seq"])

    def counter(self, policy: str, counter: str) -> int:
        return self.counter_state(policy, counter)[0]

    def counter_state(self, policy: str, counter: str) -> tuple[int, str | None]:
        """The counter's value, and the name of the compare-and-increment that took it
        there (None if unnamed)."""
        doc = self._request("GET", f"/v1/policies/{policy}/counters/{counter}")
        value, request = doc["value"], doc.get("request")
        if type(value) is not int or value < 0:
            raise SpmError(f"spm: counter '{counter}' is not a non-negative integer")
        if request is not None and not (isinstance(request, str) and _REQUEST.fullmatch(request)):
            raise SpmError(f"spm: counter '{counter}' has a malformed request name")
        return value, request

    def request_at(self, policy: str, counter: str, value: int) -> str | None:
        """The name of the compare-and-increment that took the counter to ``value`` (None
        if unnamed, or older than the SPM remembers)."""
        doc = self._request("GET", f"/v1/policies/{policy}/counters/{counter}/requests/{value}")
        request = doc.get("request")
        if doc.get("value") != value:
            raise SpmError(f"spm: the SPM answered for another value of counter '{counter}'")
        if request is not None and not (isinstance(request, str) and _REQUEST.fullmatch(request)):
            raise SpmError(f"spm: counter '{counter}' has a malformed request name")
        return request

    def volume_state(self, policy: str, volume: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/policies/{policy}/volumes/{volume}")

    def record_volume(
        self, policy: str, volume: str, *, version: int, tag: str, token: str, volume_key: bytes
    ) -> dict[str, Any]:
        """Record a release of a rollback-protected volume this launcher opened with
        ``volume_key`` (the proof that it did is computed here; the key is not sent)."""
        token_sha256 = hashlib.sha256(token.encode()).hexdigest()
        proof = record_proof(volume_key, policy, volume, version, tag, token_sha256)
        return self._request(
            "POST",
            f"/v1/policies/{policy}/volumes/{volume}",
            json={"version": version, "tag": tag, "proof": proof},
            headers={"Authorization": f"Bearer {token}"},
        )

    def audit(self, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        """Audit entries after ``since``, with the head checked against the pinned key."""
        doc = self._request("GET", "/v1/audit", params={"since": since, "limit": limit})
        assert self._key is not None
        try:
            self._key.verify(
                base64.b64decode(doc["head_signature"]),
                head_message(int(doc["head_seq"]), str(doc["head_hash"])),
                ec.ECDSA(hashes.SHA256()),
            )
        except Exception:
            raise VerificationError(
                "audit: the log head is not signed by the pinned SPM key"
            ) from None
        return doc

    def revoke(
        self, policy: str, statement: dict[str, str], signatures: Sequence[Any]
    ) -> dict[str, Any]:
        sigs = [s if isinstance(s, dict) else s.model_dump(mode="json") for s in signatures]
        return self._request(
            "POST",
            f"/v1/policies/{policy}/revocations",
            json={"statement": statement, "signatures": sigs},
        )

    def revocations(self, policy: str) -> list[dict[str, Any]]:
        """What the board revoked in ``policy`` (kind, subject, service, reason, at)."""
        return self.revocation_list(policy)[1]

    def revocation_list(self, policy: str) -> tuple[int, list[dict[str, Any]]]:
        """``policy``'s revocation list and its sequence number (the SPM's audit head
        when it was read: a list read from newer data has a higher one), bounded: a
        number that is not an integer from 0 to :data:`MAX_SEQUENCE` is refused."""
        doc = self._request("GET", f"/v1/policies/{policy}/revocations")
        rows = doc.get("revocations") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise SpmError("spm: the SPM's list of revocations is malformed")
        sequence = doc.get("sequence")
        if type(sequence) is not int or not 0 <= sequence <= MAX_SEQUENCE:
            raise SpmError(
                "spm: the SPM's revocation list has no valid sequence number (an integer "
                f"from 0 to 2**63-1, got {_shown(sequence)}): an SPM older than this client, "
                "or not an SPM"
            )
        return sequence, rows

    def status(self, policy: str) -> dict[str, Any]:
        """The policy's state (version and approvers, the last round, attestations, the
        clone audit's findings), checked against the API's schema."""
        from pydantic import ValidationError

        from secfl.spm._api_models import StatusOut

        doc = self._request("GET", f"/v1/policies/{policy}/status")
        try:
            return StatusOut.model_validate(doc).model_dump()
        except ValidationError:
            raise SpmError("spm: the SPM's status answer is malformed") from None
