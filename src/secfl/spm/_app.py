"""The SPM's HTTP API (FastAPI): a thin layer over :class:`secfl.spm._service.Spm`.

Every refusal answers with its HTTP status and ``{"error": "<check>: <why>"}``;
nothing is released on a refusal. Bodies above ``MAX_BODY`` bytes are refused
before they are read. The bodies are in :mod:`secfl.spm._api_models`; here each
group of routes is registered by its own function, for :func:`create_app`.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from secfl import __version__
from secfl.errors import Refused, SecflError
from secfl.spm._api_models import (
    HEX,
    MAX_BODY,
    NAME,
    AttestationOut,
    AttestIn,
    AttestOut,
    AuditOut,
    CounterOut,
    CounterStateOut,
    EventIn,
    EventOut,
    IncrementIn,
    NonceOut,
    PolicyOut,
    PolicySubmission,
    Problem,
    RevocationIn,
    RevocationsOut,
    StatusOut,
    VolumeIn,
    VolumeOut,
)
from secfl.spm._apierrors import SpmApi, http_refusal, validation_message
from secfl.spm._audit import head_message
from secfl.spm._events import check_event
from secfl.spm._increment_route import IncrementRoute
from secfl.spm._reading import ReadingTurns
from secfl.spm._service import Spm

__all__ = ["MAX_BODY", "create_app"]

PolicyName = Annotated[str, Path(pattern=NAME)]
PathName = Annotated[str, Path(pattern=NAME)]
Authorization = Annotated[str | None, Header(max_length=256)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem} for code in (400, 401, 403, 404, 409, 413, 503)
}


def create_app(spm: Spm) -> SpmApi:
    """The ASGI application serving ``spm``."""
    app = SpmApi(  # every refusal is {"error": ...}: secfl.spm._apierrors
        title="secfl Security Policy Manager",
        version=__version__,
        max_body_size=MAX_BODY,
        # FastAPI's own telemetry reads the environment, which is the host's: with
        # FASTAPI_OTEL_AUTO_CONFIGURE and an OTLP endpoint set it would send every
        # request's route, policy names and timings to the host's collector
        telemetry={
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        },
    )
    app.front = lambda inner: IncrementRoute(inner, spm, MAX_BODY)  # the hot path
    _refusals(app)
    _spm_routes(app, spm)
    _policy_routes(app, spm)
    _attestation_routes(app, spm)
    _session_routes(app, spm)
    _audit_routes(app, spm)
    return app


def _hex(value: str, field: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise Refused(f"{field}: not hex", 400) from None


def _bearer(authorization: str | None) -> str:
    """The session token of an ``Authorization: Bearer`` header, or a 401 refusal."""
    token = (authorization or "").removeprefix("Bearer ").strip()
    if not token:
        raise Refused("session: a 'Authorization: Bearer <session token>' header is required", 401)
    return token


def _refusals(app: FastAPI) -> None:
    """Every error, whichever layer raised it, answers ``{"error": ...}``."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = http_refusal(exc.status_code, exc.detail, MAX_BODY)
        return JSONResponse({"error": reason}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        busy = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=busy)

    @app.exception_handler(SecflError)
    async def secfl_error(_: Request, exc: SecflError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)


def _spm_routes(app: FastAPI, spm: Spm) -> None:
    """The SPM itself: health, and its own evidence (what clients pin)."""

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/attestation", responses=ERRORS)
    def attestation(
        nonce: Annotated[str, Query(pattern=HEX, min_length=16, max_length=128)],
    ) -> AttestationOut:
        return AttestationOut(**spm.attestation(_hex(nonce, "nonce")))


def _policy_routes(app: FastAPI, spm: Spm) -> None:
    """Board-approved policy versions and revocations."""

    # Anyone may submit, and a document is read before a signature can be checked: a
    # few at a time, the rest in turn (secfl.spm._reading)
    reading = ReadingTurns()

    @app.post("/v1/policies", responses=ERRORS)
    def submit_policy(body: PolicySubmission, request: Request) -> PolicyOut:
        with reading.turn(request.client.host if request.client else ""):
            record = spm.submit_policy(body.document, [s.model_dump() for s in body.signatures])
        return PolicyOut(
            name=record.name,
            version=record.version,
            digest=record.digest,
            predecessor=record.predecessor,
        )

    @app.get("/v1/policies/{name}", responses=ERRORS)
    def get_policy(name: PolicyName) -> PolicyOut:
        record, _ = spm.policy(name)
        return PolicyOut(
            name=record.name,
            version=record.version,
            digest=record.digest,
            predecessor=record.predecessor,
            document=record.document,
        )

    @app.post("/v1/policies/{name}/revocations", responses=ERRORS)
    def revoke(name: PolicyName, body: RevocationIn) -> dict[str, Any]:
        return spm.revoke(
            name,
            body.statement.model_dump(exclude_none=True),
            [s.model_dump() for s in body.signatures],
        )

    @app.get("/v1/policies/{name}/revocations", responses=ERRORS)
    def revocations(name: PolicyName) -> RevocationsOut:
        sequence, rows = spm.revocation_list(name)
        return RevocationsOut(sequence=sequence, revocations=rows)

    @app.get("/v1/policies/{name}/status", responses=ERRORS)
    async def status(name: PolicyName) -> StatusOut:
        """The policy's state for its board and operators (``secfl status``): open to
        anyone who can reach the SPM, like the policy and the audit log it comes from;
        computed one at a time, from what the SPM keeps of its verified log
        (:mod:`secfl.spm._status`)."""
        return StatusOut.model_validate(await spm.status_desk.status_async(name))


def _attestation_routes(app: FastAPI, spm: Spm) -> None:
    """Workload attestation: a nonce, then evidence over it for the release."""

    @app.post("/v1/nonce")
    def nonce() -> NonceOut:
        value, expires = spm.new_nonce()
        return NonceOut(nonce=value.hex(), expires_at=expires)

    @app.post("/v1/policies/{name}/services/{service}/attest", responses=ERRORS)
    def attest(name: PolicyName, service: PathName, body: AttestIn) -> AttestOut:
        result = spm.attest(
            name,
            service,
            nonce=_hex(body.nonce, "nonce"),
            evidence=body.evidence.encode(),
            hpke_public_key=_hex(body.hpke_public_key, "hpke_public_key"),
            csr_pem=body.csr.encode(),
            replaces=body.replaces,
            site_signature=body.site_signature,
        )
        return AttestOut(
            certificate=result.certificate,
            ca_certificate=result.ca_certificate,
            sealed_secrets=base64.b64encode(result.sealed_secrets).decode(),
            secrets=result.secret_names,
            session_token=result.session_token,
            session_expires=result.session_expires,
            policy_digest=result.policy_digest,
            policy_version=result.policy_version,
        )


def _session_routes(app: FastAPI, spm: Spm) -> None:
    """Counters, findings and volume releases: writes need an attested session."""

    @app.post("/v1/policies/{name}/counters/{counter}/increment", responses=ERRORS)
    async def increment(
        name: PolicyName,
        counter: PathName,
        body: IncrementIn | None = None,
        authorization: Authorization = None,
    ) -> CounterOut:
        expect = body.expect if body is not None else None
        event = dict(body.round) if body is not None and body.round is not None else None
        request = body.request if body is not None else None
        value = await spm.increment_async(
            _bearer(authorization), name, counter, expect, event, request=request
        )
        return CounterOut(counter=counter, value=value)

    @app.post("/v1/policies/{name}/events", responses=ERRORS)
    def report(name: PolicyName, body: EventIn, authorization: Authorization = None) -> EventOut:
        token = _bearer(authorization)
        detail = check_event(body.event, dict(body.detail))
        return EventOut(seq=spm.report(token, name, body.event, detail))

    @app.get("/v1/policies/{name}/counters/{counter}", responses=ERRORS)
    def get_counter(name: PolicyName, counter: PathName) -> CounterStateOut:
        value, request = spm.counter_state(name, counter)
        return CounterStateOut(counter=counter, value=value, request=request)

    @app.get("/v1/policies/{name}/counters/{counter}/requests/{value}", responses=ERRORS)
    def get_request(
        name: PolicyName, counter: PathName, value: Annotated[int, Path(ge=0, le=2**62)]
    ) -> CounterStateOut:
        request = spm.request_at(name, counter, value)
        return CounterStateOut(counter=counter, value=value, request=request)

    @app.get("/v1/policies/{name}/volumes/{volume}", responses=ERRORS)
    def volume_state(name: PolicyName, volume: PathName) -> VolumeOut:
        return VolumeOut(**spm.volume_state(name, volume))

    @app.post("/v1/policies/{name}/volumes/{volume}", responses=ERRORS)
    def record_volume(
        name: PolicyName, volume: PathName, body: VolumeIn, authorization: Authorization = None
    ) -> VolumeOut:
        token = _bearer(authorization)
        return VolumeOut(
            **spm.record_volume(token, name, volume, body.version, body.tag, body.proof)
        )


def _audit_routes(app: FastAPI, spm: Spm) -> None:
    """The audit log, its head signed by the SPM's TLS key (what clients pinned)."""

    @app.get("/v1/audit", responses=ERRORS)
    def audit(
        since: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> AuditOut:
        entries, (seq, head_hash) = spm.audit_page(since, limit)
        signature = spm.identity.key.sign(head_message(seq, head_hash), ec.ECDSA(hashes.SHA256()))
        return AuditOut(
            entries=[e.to_dict() for e in entries],
            head_seq=seq,
            head_hash=head_hash,
            head_signature=base64.b64encode(signature).decode(),
        )
