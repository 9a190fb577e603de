"""The SPM client: talks only to an SPM it has verified by attestation or pin.

First contact (:meth:`SpmClient.verify`): fetch the SPM's self-signed TLS
certificate, connect trusting exactly that certificate, ask for evidence over a
fresh nonce, and check that the evidence is genuine, has an expected measurement
and binds the SHA-256 of the certificate's key. That digest is the pin. Later
clients are built with the pin (:class:`SpmClient`) and refuse any SPM whose key
does not match it. Certificate verification is never switched off: the fetched
certificate is only a candidate until the pin or the evidence vouches for it,
and every request then runs over TLS that verifies against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secfl._internal.canonical import canonical_json
from secfl._internal.values import one_line
from secfl.errors import SecflError, SpmError, SpmRefused, VerificationError
from secfl.spm._audit import head_message
from secfl.spm._https import AnswerLost, ConnectFailed, PinnedHttps, RequestFailed
from secfl.spm._report_data import spki_sha256, spm_report_data
from secfl.spm._volumes import record_proof
from secfl.tee._claims import TCB_ORDER, Claims, TcbStatus
from secfl.tee._evidence import Evidence
from secfl.tee._intel_collateral import IntelCollateral
from secfl.tee._verify import verify

#: A compare-and-increment's name (128 bits, hex).
_REQUEST = re.compile(r"^[0-9a-f]{32}$")

__all__ = ["SpmClient", "SpmRefused"]


def appraise(
    evidence: Evidence,
    claims: Claims,
    collateral: Callable[[bytes], IntelCollateral],
    min_tcb: TcbStatus,
    at: datetime | None = None,
    allow_debug: bool = False,
) -> Claims:
    """``claims`` of Intel ``evidence`` (already verified) appraised with its collateral,
    or :class:`VerificationError` when its TCB is below ``min_tcb``."""
    if claims.kind not in ("sgx", "tdx"):
        raise VerificationError(
            f"pccs: the SPM's evidence is {claims.kind}; a PCCS appraises SGX and TDX only"
        )
    claims = verify(evidence, at=at, collateral=collateral(evidence.quote), allow_debug=allow_debug)
    status = claims.tcb_status
    if status == "unknown" or TCB_ORDER.index(status) > TCB_ORDER.index(min_tcb):
        raise VerificationError(f"tcb: the SPM's TCB status is {status}, below {min_tcb}")
    return claims


def _address(url: str) -> tuple[str, int]:
    try:  # urlsplit and .port raise ValueError ('https://[::1', ':99999', ':abc')
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SpmError(f"spm: '{url}' is not a URL: give https://HOST:PORT") from None
    if parts.scheme != "https" or not parts.hostname:
        raise SpmError(f"spm: '{url}' is not an https:// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SpmError(f"spm: '{url}' has parts an SPM URL has not: give https://HOST:PORT")
    return parts.hostname, port or 443


def _fetch_certificate(url: str, timeout: float) -> tuple[str, x509.Certificate]:
    """The certificate the SPM presents: a candidate, trusted only once checked."""
    host, port = _address(url)
    # not verified here (the pin is checked next); no TLS key log (SSLKEYLOGFILE)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # as get_server_certificate: the pin is the check
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise SpmError(f"spm: cannot reach {url}: {exc.strerror or exc}") from None
    if not der:
        raise SpmError(f"spm: {url} presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), cert


def expected_identity(claims: Claims, expected: Sequence[str]) -> None:
    """Refuse unless ``claims`` match one of ``expected``: each the kind's primary
    measurement (HEX), or claim fields (``FIELD=HEX,...``) that name code as a policy's
    identity must (:func:`~secfl.policy._model.pins_code`). A TD is named by its mrtd,
    rtmr1 and rtmr2 together: an SPM expected by its MRTD alone (the firmware) was any
    SPM booted on that firmware (found by a review)."""
    from secfl.policy._model import CODE_ALL, code_fields_text, pins_code
    from secfl.spm._evidence_checks import snp_guest_refusal

    primary = str(next(iter(claims.measurements.values()), "")).lower()
    guest = None  # why a matching SEV-SNP expectation still refused
    for text in expected:
        text = text.strip().lower()
        pins: dict[str, str] = {}
        if "=" not in text:
            if claims.kind in CODE_ALL or text != primary:
                continue
        else:
            pins = dict(part.partition("=")[::2] for part in text.split(","))
            if not pins_code(claims.kind, pins) or not all(  # type: ignore[arg-type]
                str(claims.measurements.get(k, "")).lower() == v for k, v in pins.items()
            ):
                continue
        guest = snp_guest_refusal(pins, claims.measurements) if claims.kind == "snp" else None
        if guest is None:
            return
    if guest is not None:
        raise VerificationError(f"measurement: {guest} in the expected measurement")
    if claims.kind in CODE_ALL and not any("=" in t for t in expected):
        raise VerificationError(
            f"measurement: a {claims.kind} SPM is named by {code_fields_text(claims.kind)} "
            "together: expect FIELD=HEX,... (its first measurement covers only the firmware)"
        )
    raise VerificationError(
        f"measurement: the SPM runs {claims.kind} measurement {primary}, which is not the "
        "expected one"
    )


class SpmClient:
    """A client bound to one SPM by the SHA-256 of its TLS key (``pin``)."""

    def __init__(self, url: str, *, pin: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.pin = pin.lower()
        self.timeout = timeout
        self._http: PinnedHttps | None = None
        self._key: ec.EllipticCurvePublicKey | None = None
        # the aggregator's overlapped commit calls from its own thread while the main
        # thread may call too: the certificate fetched (and pinned) once
        self._lock = threading.Lock()

    # --- connection -----------------------------------------------------------------------

    def _connect(self) -> PinnedHttps:
        with self._lock:
            return self._connect_locked()

    def _connect_locked(self) -> PinnedHttps:
        if self._http is None:
            pem, cert = _fetch_certificate(self.url, self.timeout)
            presented = spki_sha256(cert.public_key())
            if presented != self.pin:
                raise SpmError(
                    f"spm: the SPM at {self.url} presents key {presented}, not the pinned "
                    f"{self.pin}; refusing to talk to it"
                )
            key = cert.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise SpmError("spm: the SPM's TLS key is not an EC key")
            self._key = key
            context = ssl.create_default_context(cadata=pem)
            context.keylog_filename = None  # type: ignore[assignment]  # never SSLKEYLOGFILE
            prefix = urlsplit(self.url).path.rstrip("/")  # an SPM behind a path, if any
            self._http = PinnedHttps(*_address(self.url), context, self.timeout, prefix=prefix)
        return self._http

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The SPM's pinned TLS key: what imported secrets are sealed to."""
        self._connect()
        assert self._key is not None
        return self._key

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _drop(self, http: PinnedHttps) -> None:
        """Forget ``http`` (unless another thread already made a new one)."""
        with self._lock:
            if self._http is http:
                self._http = None
        http.close()

    def __enter__(self) -> SpmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        resend: bool = False,
    ) -> Any:
        """``method path``'s JSON answer. A failure to connect is tried once more on a
        fresh connection (the SPM may have restarted with a new certificate: it is
        fetched and pinned again); a request whose answer was lost is sent again only
        if that is harmless: a read, or ``resend`` (a named compare-and-increment)."""
        try:
            body = None if json is None else canonical_json(json)
        except (TypeError, ValueError) as exc:  # NaN, say: JSON cannot carry it
            raise SpmError(f"spm: {method} {path}: the request is not JSON: {exc}") from None
        for attempt in (1, 2):
            http = self._connect()
            try:
                reply = http.request(method, path, body=body, headers=headers, params=params)
                break
            except ConnectFailed as exc:
                self._drop(http)  # the SPM restarted with a new certificate: fetch, re-pin
                lost = isinstance(exc, AnswerLost) and method != "GET" and not resend
                if lost:
                    exc = AnswerLost(f"{exc}; not sent again: the SPM may have acted on it")
                if attempt == 2 or lost:
                    raise SpmError(f"spm: {method} {path} failed: {exc}") from None
            except RequestFailed as exc:
                raise SpmError(f"spm: {method} {path} failed: {exc}") from None
        try:
            doc = _json_loads(reply.body)
        except ValueError:
            doc = {}
        if reply.status >= 400:
            message = doc.get("error") if isinstance(doc, dict) else None
            if not isinstance(message, str) or not message:
                message = f"spm: HTTP {reply.status} for {path}"
            # the server's own words, on one line with nothing a terminal would act on:
            # before the pin is checked, the server may be anyone's
            raise SpmRefused(one_line(message), reply.status)
        return doc

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
    ) -> tuple[SpmClient, Claims]:
        """Attest the SPM at ``url`` and return a client pinned to its key, with its claims.

        ``collateral`` (for example :meth:`PccsClient.get_collateral`) gives the Intel
        collateral of the SPM's quote: its TCB is then appraised and must be at least
        ``min_tcb``. Without it an SGX or TDX SPM's TCB is ``unknown``."""
        expected: list[str] = (
            [expect_measurement] if isinstance(expect_measurement, str) else [*expect_measurement]
        )
        _, cert = _fetch_certificate(url, timeout)
        pin = spki_sha256(cert.public_key())
        client = cls(url, pin=pin, timeout=timeout)
        nonce = os.urandom(32)
        doc = client._request("GET", "/v1/attestation", params={"nonce": nonce.hex()})
        try:
            evidence = Evidence.parse(str(doc["evidence"]).encode())
        except (KeyError, TypeError):
            raise VerificationError("spm: the attestation answer has no evidence") from None
        try:
            claims = verify(evidence, at=at, sim_root=sim_root, allow_debug=allow_debug)
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
    ) -> dict[str, Any]:
        """``replaces``: the session token of this workload's last attestation (that
        session ends when this one opens)."""
        text = evidence.to_json() if isinstance(evidence, Evidence) else evidence.hex()
        body = {
            "nonce": nonce.hex(),
            "evidence": text,
            "hpke_public_key": hpke_public_key.hex(),
            "csr": csr_pem.decode(),
        }
        if replaces is not None:
            body["replaces"] = replaces
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
        if request is not None and not (isinstance(request, str) and _REQUEST.match(request)):
            raise SpmError(f"spm: counter '{counter}' has a malformed request name")
        return value, request

    def request_at(self, policy: str, counter: str, value: int) -> str | None:
        """The name of the compare-and-increment that took the counter to ``value`` (None
        if unnamed, or older than the SPM remembers)."""
        doc = self._request("GET", f"/v1/policies/{policy}/counters/{counter}/requests/{value}")
        request = doc.get("request")
        if doc.get("value") != value:
            raise SpmError(f"spm: the SPM answered for another value of counter '{counter}'")
        if request is not None and not (isinstance(request, str) and _REQUEST.match(request)):
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
        doc = self._request("GET", f"/v1/policies/{policy}/revocations")
        rows = doc.get("revocations") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise SpmError("spm: the SPM's list of revocations is malformed")
        return rows

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


def _json_loads(body: bytes) -> Any:
    return json.loads(body) if body else {}
