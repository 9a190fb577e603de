"""The SPM's HTTP API (FastAPI): a thin layer over :class:`secfl.spm.service.Spm`.

Every refusal answers with its HTTP status and ``{"error": "<check>: <why>"}``;
nothing is released on a refusal. Bodies above ``MAX_BODY`` bytes are refused
before they are read.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, JsonValue
from starlette.exceptions import HTTPException as StarletteHTTPException

from secfl import __version__
from secfl.errors import SecflError
from secfl.spm.apierrors import SpmApi, http_refusal, validation_message
from secfl.spm.service import Refused, Spm

MAX_BODY = 1 << 20
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
HEX = r"^([0-9a-fA-F]{2})*$"
AUDIT_HEAD_DOMAIN = "secfl/audit-head/v1"


class Problem(BaseModel):
    error: str


class AttestationOut(BaseModel):
    evidence: str = Field(description="Evidence JSON (configfs-tsm form, base64url fields)")
    tls_spki_sha256: str
    kind: str


class SignatureIn(BaseModel):
    member: str = Field(max_length=128)
    algorithm: str = Field(max_length=32)
    domain: str = Field(max_length=64)
    digest: str = Field(max_length=64)
    signature: str = Field(max_length=512)


class PolicySubmission(BaseModel):
    document: str = Field(max_length=MAX_BODY, description="The policy, YAML or JSON")
    signatures: list[SignatureIn] = Field(max_length=64)


class PolicyOut(BaseModel):
    name: str
    version: int
    digest: str
    predecessor: str
    document: str | None = None


class NonceOut(BaseModel):
    nonce: str
    expires_at: datetime


class AttestIn(BaseModel):
    nonce: str = Field(pattern=HEX, max_length=128)
    evidence: str = Field(max_length=65536, description="Evidence: hex or configfs-tsm JSON")
    hpke_public_key: str = Field(pattern=HEX, max_length=256)
    csr: str = Field(max_length=16384, description="PEM certificate signing request")


class AttestOut(BaseModel):
    certificate: str
    ca_certificate: str
    sealed_secrets: str = Field(description="HPKE-sealed secret values, base64")
    secrets: list[str]
    session_token: str
    session_expires: datetime
    policy_digest: str
    policy_version: int


class CounterOut(BaseModel):
    counter: str
    value: int


class EventIn(BaseModel):
    event: str = Field(pattern=r"^[a-z][a-z0-9.-]{0,63}$")
    detail: dict[str, JsonValue] = Field(default_factory=dict)


class EventOut(BaseModel):
    seq: int


class VolumeIn(BaseModel):
    version: int = Field(ge=1, le=2**62)
    tag: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    proof: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$",
        description="HMAC under the volume's key (secfl.spm.volumes.record_proof)",
    )


class VolumeOut(BaseModel):
    volume: str
    version: int
    tag: str
    counter: int | None


class AuditOut(BaseModel):
    entries: list[dict[str, Any]]
    head_seq: int
    head_hash: str
    head_signature: str = Field(description="ECDSA P-256 by the SPM's TLS key, base64")


class RevocationStatement(BaseModel):
    """What the board revokes (or readmits): ``kind`` + ``subject``, or a ``serial``."""

    kind: Literal["certificate", "service", "measurement", "platform"] | None = None
    subject: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,256}$")
    action: Literal["revoke", "readmit"] | None = None
    serial: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{1,64}$")
    service: str = Field(default="", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$")
    reason: str = Field(default="", max_length=1024)


class RevocationIn(BaseModel):
    statement: RevocationStatement
    signatures: list[SignatureIn] = Field(max_length=64)


class RevocationsOut(BaseModel):
    revocations: list[dict[str, Any]]


PolicyName = Annotated[str, Path(pattern=NAME)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem} for code in (400, 401, 403, 404, 409, 413)
}


def _hex(value: str, field: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise Refused(f"{field}: not hex", 400) from None


def head_message(seq: int, head_hash: str) -> bytes:
    return f"{AUDIT_HEAD_DOMAIN}\n{seq}\n{head_hash}".encode()


def create_app(spm: Spm) -> FastAPI:
    """The ASGI application serving ``spm``."""
    app = SpmApi(  # every refusal is {"error": ...}: secfl.spm.apierrors
        title="secfl Security Policy Manager", version=__version__, max_body_size=MAX_BODY
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = http_refusal(exc.status_code, exc.detail, MAX_BODY)
        return JSONResponse({"error": reason}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(SecflError)
    async def secfl_error(_: Request, exc: SecflError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/attestation", responses=ERRORS)
    def attestation(
        nonce: Annotated[str, Query(pattern=HEX, min_length=16, max_length=128)],
    ) -> AttestationOut:
        return AttestationOut(**spm.attestation(_hex(nonce, "nonce")))

    @app.post("/v1/policies", responses=ERRORS)
    def submit_policy(body: PolicySubmission) -> PolicyOut:
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

    @app.post("/v1/nonce")
    def nonce() -> NonceOut:
        value, expires = spm.new_nonce()
        return NonceOut(nonce=value.hex(), expires_at=expires)

    @app.post("/v1/policies/{name}/services/{service}/attest", responses=ERRORS)
    def attest(
        name: PolicyName, service: Annotated[str, Path(pattern=NAME)], body: AttestIn
    ) -> AttestOut:
        result = spm.attest(
            name,
            service,
            nonce=_hex(body.nonce, "nonce"),
            evidence=body.evidence.encode(),
            hpke_public_key=_hex(body.hpke_public_key, "hpke_public_key"),
            csr_pem=body.csr.encode(),
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

    @app.post("/v1/policies/{name}/counters/{counter}/increment", responses=ERRORS)
    async def increment(
        name: PolicyName,
        counter: Annotated[str, Path(pattern=NAME)],
        authorization: Annotated[str | None, Header(max_length=256)] = None,
    ) -> CounterOut:
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not token:
            raise Refused(
                "session: a 'Authorization: Bearer <session token>' header is required", 401
            )
        value = await spm.increment_async(token, name, counter)
        return CounterOut(counter=counter, value=value)

    @app.post("/v1/policies/{name}/events", responses=ERRORS)
    def report(
        name: PolicyName,
        body: EventIn,
        authorization: Annotated[str | None, Header(max_length=256)] = None,
    ) -> EventOut:
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not token:
            raise Refused(
                "session: a 'Authorization: Bearer <session token>' header is required", 401
            )
        return EventOut(seq=spm.report(token, name, body.event, dict(body.detail)))

    @app.get("/v1/policies/{name}/counters/{counter}", responses=ERRORS)
    def get_counter(name: PolicyName, counter: Annotated[str, Path(pattern=NAME)]) -> CounterOut:
        return CounterOut(counter=counter, value=spm.counter(name, counter))

    @app.get("/v1/policies/{name}/volumes/{volume}", responses=ERRORS)
    def volume_state(name: PolicyName, volume: Annotated[str, Path(pattern=NAME)]) -> VolumeOut:
        return VolumeOut(**spm.volume_state(name, volume))

    @app.post("/v1/policies/{name}/volumes/{volume}", responses=ERRORS)
    def record_volume(
        name: PolicyName,
        volume: Annotated[str, Path(pattern=NAME)],
        body: VolumeIn,
        authorization: Annotated[str | None, Header(max_length=256)] = None,
    ) -> VolumeOut:
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not token:
            raise Refused(
                "session: a 'Authorization: Bearer <session token>' header is required", 401
            )
        return VolumeOut(
            **spm.record_volume(token, name, volume, body.version, body.tag, body.proof)
        )

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

    @app.post("/v1/policies/{name}/revocations", responses=ERRORS)
    def revoke(name: PolicyName, body: RevocationIn) -> dict[str, Any]:
        return spm.revoke(
            name,
            body.statement.model_dump(exclude_none=True),
            [s.model_dump() for s in body.signatures],
        )

    @app.get("/v1/policies/{name}/revocations", responses=ERRORS)
    def revocations(name: PolicyName) -> RevocationsOut:
        return RevocationsOut(revocations=spm.revocations(name))

    return app
