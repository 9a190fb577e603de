"""Revocation by the board: what a statement names, what it signs, and who it stops.

A revocation names a certificate, a service, a measurement or a platform; a
readmission lifts one. Both are statements the board signs (m-of-n, like a policy
version). A revoked certificate ends the sessions attested with it; a revoked
service, measurement or platform also cannot attest again until readmitted, which
is what the clone audit's "revocation requested" needs to keep a participant out.
"""

from __future__ import annotations

import json
from typing import Any

from secfl._internal.canonical import canonical_sha256
from secfl.errors import SpmError
from secfl.spm._records import REVOCATION_KINDS, SessionRecord

__all__ = [
    "platform_id",
    "revocation_digest",
    "revocation_doc",
    "revoked_reason",
    "session_identity",
]


def revocation_doc(policy: str, statement: dict[str, Any]) -> dict[str, str]:
    """The statement board members sign to revoke (or readmit) something.

    ``{"policy", "kind", "subject", "service", "reason"}`` (+ ``"action": "readmit"``
    to lift a revocation). ``kind``: ``certificate`` (subject: its serial, hex),
    ``service`` (a service name: none of its certificates or sessions count, and it
    cannot attest again until readmitted), ``measurement`` (code, for every service),
    ``platform`` (a machine: SNP chip ID, simulated platform certificate digest...).
    The older form ``{"serial", "service", "reason"}`` revokes one certificate.
    """

    def text(name: str, limit: int = 1024) -> str:
        value = statement.get(name, "")
        if not isinstance(value, str) or len(value) > limit:
            raise SpmError(f"revocation: '{name}' must be a string of at most {limit} characters")
        return value

    if "kind" not in statement:
        serial = text("serial", 64).lower()
        if not serial:
            raise SpmError("revocation: name a 'kind' and 'subject' (or a certificate 'serial')")
        return {"policy": policy, "serial": serial, "service": text("service", 128),
                "reason": text("reason"), "kind": "certificate", "subject": serial}  # fmt: skip
    kind, subject = text("kind", 32), text("subject", 256)
    if kind not in REVOCATION_KINDS:
        raise SpmError(f"revocation: kind must be one of {', '.join(REVOCATION_KINDS)}")
    if not subject:
        raise SpmError("revocation: 'subject' names what is revoked")
    if kind in ("certificate", "measurement", "platform"):
        subject = subject.lower()
    doc = {"policy": policy, "kind": kind, "subject": subject,
           "service": text("service", 128), "reason": text("reason")}  # fmt: skip
    action = text("action", 16)
    if action not in ("", "revoke", "readmit"):
        raise SpmError("revocation: action must be 'revoke' or 'readmit'")
    if action == "readmit":
        doc["action"] = "readmit"
    return doc


def revocation_digest(doc: dict[str, str]) -> str:
    """SHA-256 (hex) of a revocation statement's canonical JSON; board members sign it.
    (The legacy form is signed without the ``kind``/``subject`` it implies.)"""
    if "serial" in doc:
        doc = {k: v for k, v in doc.items() if k not in ("kind", "subject")}
    return canonical_sha256(doc)


def session_identity(session: SessionRecord) -> dict[str, Any]:
    """What a session's workload was attested as: kind, measurements, platform."""
    try:
        doc = json.loads(session.identity)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    return {
        "kind": str(doc.get("kind", "")),
        "measurements": dict(doc.get("measurements") or {}),
        "platform": str(doc.get("platform", "")),
    }


def platform_id(platform: dict[str, str]) -> str:
    """The ID a ``platform`` revocation names: the machine the evidence came from."""
    for key in ("chip_id", "pck_sha256", "platform_cert_sha256"):
        if platform.get(key):
            return str(platform[key]).lower()
    return ""


def revoked_reason(
    revoked: set[tuple[str, str]], service: str, serial: str, identity: dict[str, Any]
) -> str | None:
    """Why a workload is revoked (None if it is not)."""
    if serial and ("certificate", serial) in revoked:
        return f"certificate {serial} is revoked by the board"
    if ("service", service) in revoked:
        return f"service '{service}' is revoked by the board until it readmits it"
    for value in identity.get("measurements", {}).values():
        if ("measurement", str(value).lower()) in revoked:
            return f"measurement {value} is revoked by the board"
    pid = identity.get("platform", "")
    if pid and ("platform", pid) in revoked:
        return f"platform {pid} is revoked by the board"
    return None
