"""Revocation by the board: what a statement names, what it signs, and who it stops.

A revocation names a certificate, a service, a measurement or a platform; a
readmission lifts one. Both are statements the board signs (m-of-n, like a policy
version). A revoked certificate ends the sessions attested with it; a revoked
service, measurement or platform also cannot attest again until readmitted, which
is what the clone audit's "revocation requested" needs to keep a participant out.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from secfl._internal.canonical import canonical_sha256
from secfl._internal.values import shown
from secfl.errors import SpmError
from secfl.spm._records import REVOCATION_KINDS, SessionRecord, normalise_serial

__all__ = [
    "expired",
    "expires_text",
    "platform_id",
    "platform_ids",
    "revocation_digest",
    "revocation_doc",
    "revocation_keys",
    "revoked_reason",
    "session_identity",
]


def _check_serial(serial: str) -> None:
    """A certificate is named by its serial in one spelling only: the list stores it
    normalised, and the audit entry keeps what was signed, so another spelling
    (``0ab``, ``0x…``, colons) made the revocation look deleted at the next start and
    the SPM never started again (found by a review)."""
    try:
        normal = normalise_serial(serial)
    except SpmError:
        normal = ""
    if serial != normal:
        raise SpmError(
            "revocation: a certificate subject is its serial in lowercase hex, without 0x, "
            "colons or leading zeros (as `secfl revoke` writes it)"
        )


#: The fields of a statement, in its form by ``kind`` and in the older form by ``serial``.
_FIELDS = ("kind", "subject", "service", "reason", "action", "lifts", "expires")

#: How a statement's ``expires`` is written: one spelling (UTC, to the second), so that
#: every member who signs it gets the same digest.
_EXPIRES = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_OLDER_FIELDS = ("serial", "service", "reason")


def _check_fields(statement: dict[str, Any]) -> None:
    """Refuse a field the statement's form does not carry (see :func:`revocation_doc`)."""
    older = "kind" not in statement
    for name in statement:
        if name in (_OLDER_FIELDS if older else _FIELDS):
            continue
        if older and name in _FIELDS:
            raise SpmError(
                f"revocation: the older form (a certificate 'serial', no 'kind') carries no "
                f"'{shown(str(name)[:32])}': name a 'kind' and 'subject' instead"
            )
        if name == "serial":
            raise SpmError(
                "revocation: 'serial' goes with the older form only (no 'kind'); a "
                "certificate is kind 'certificate' with its serial as 'subject'"
            )
        raise SpmError(f"revocation: '{shown(str(name)[:32])}' is not a field of a statement")


def revocation_doc(policy: str, statement: dict[str, Any]) -> dict[str, str]:
    """The statement board members sign to revoke (or readmit) something.

    ``{"policy", "kind", "subject", "service", "reason"}`` (+ ``"action": "readmit"``
    and ``"lifts"``, the digest of the revocation statement it lifts, to lift a
    revocation: a readmission signed for one revocation never lifts a later one of the
    same subject). ``kind``: ``certificate`` (subject: its serial, hex),
    ``service`` (a service name: none of its certificates or sessions count, and it
    cannot attest again until readmitted), ``measurement`` (code, for every service),
    ``platform`` (a machine: Intel PPID or PCK digest, SNP chip ID but never zeros,
    the simulated platform certificate's digest: :func:`platform_ids`).
    ``"expires"`` (optional, ``YYYY-MM-DDTHH:MM:SSZ``): after it, the SPM no longer
    applies the statement (:func:`expired`).
    The older form ``{"serial", "service", "reason"}`` revokes one certificate, and
    carries nothing else: a field either form cannot carry (an ``action`` or ``lifts``
    beside a ``serial``, say) is refused, never dropped, for the digest is of what is
    kept: a member who signed "readmit" in the older form signed a revocation (found
    by a review).
    """

    def text(name: str, limit: int = 1024) -> str:
        value = statement.get(name, "")
        if not isinstance(value, str) or len(value) > limit:
            raise SpmError(f"revocation: '{name}' must be a string of at most {limit} characters")
        return value

    _check_fields(statement)
    if "kind" not in statement:
        serial = text("serial", 64).lower()
        if not serial:
            raise SpmError("revocation: name a 'kind' and 'subject' (or a certificate 'serial')")
        _check_serial(serial)
        return {"policy": policy, "serial": serial, "service": text("service", 128),
                "reason": text("reason"), "kind": "certificate", "subject": serial}  # fmt: skip
    kind, subject = text("kind", 32), text("subject", 256)
    if kind not in REVOCATION_KINDS:
        raise SpmError(f"revocation: kind must be one of {', '.join(REVOCATION_KINDS)}")
    if not subject:
        raise SpmError("revocation: 'subject' names what is revoked")
    if kind in ("certificate", "measurement", "platform"):
        subject = subject.lower()
        # '0xab', ' ab', 'ab:cd' would never match a measurement or a machine's ID (a
        # certificate's serial is normalised where it is stored, as it always was)
        if kind == "certificate":
            _check_serial(subject)
        elif not set(subject) <= HEX_DIGITS:
            raise SpmError(
                f"revocation: a {kind} subject is lowercase hex digits only (no 0x, colons "
                "or spaces)"
            )
    if kind == "platform" and not subject.strip("0"):
        raise SpmError(
            "revocation: a platform ID of zeros (a masked SEV-SNP chip ID) names no one "
            "machine; revoke its measurement or its service instead"
        )
    doc = {"policy": policy, "kind": kind, "subject": subject,
           "service": text("service", 128), "reason": text("reason")}  # fmt: skip
    action = text("action", 16)
    if action not in ("", "revoke", "readmit"):
        raise SpmError("revocation: action must be 'revoke' or 'readmit'")
    lifts = text("lifts", 64)
    if action == "readmit":
        if not re.fullmatch(r"[0-9a-f]{64}", lifts):
            raise SpmError(
                "revocation: a readmission names the revocation it lifts ('lifts': the "
                "digest of its statement, as `secfl revocations` lists it)"
            )
        doc["action"] = "readmit"
        doc["lifts"] = lifts
    elif lifts:
        raise SpmError("revocation: 'lifts' goes with a readmission only")
    if "expires" in statement:
        doc["expires"] = expires_text(text("expires", 64))
    return doc


def expires_text(value: str) -> str:
    """``value`` if it is a statement's ``expires`` (``YYYY-MM-DDTHH:MM:SSZ``, a real
    time), else :class:`SpmError`."""
    if _EXPIRES.fullmatch(value):
        try:
            datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
            return value
        except ValueError:
            pass
    raise SpmError("revocation: 'expires' is a UTC time written YYYY-MM-DDTHH:MM:SSZ")


def expired(doc: dict[str, str], now: datetime) -> str | None:
    """Why a statement is no longer applied (None while it is): past its ``expires``, a
    statement signed and held back (by a member, or abandoned) no longer decides. A
    statement without ``expires`` never expires (as every one before it)."""
    if "expires" not in doc:
        return None
    until = datetime.strptime(doc["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    if now < until:
        return None
    return (
        f"revocation: this statement expired at {doc['expires']} (its signers meant it to be "
        "applied before then): to decide now, the board signs a new one"
    )


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
    platform = str(doc.get("platform", ""))
    named = doc.get("platforms")  # sessions attested before it have only "platform"
    if not isinstance(named, list) or not all(isinstance(p, str) for p in named):
        named = [platform] if platform else []
    identity: dict[str, Any] = {
        "kind": str(doc.get("kind", "")),
        "measurements": dict(doc.get("measurements") or {}),
        "platform": platform,
        "platforms": named[: len(PLATFORM_KEYS)],
    }
    # the site key that signed its enrolment (secfl.spm._site_key.site_key_claim)
    site_key = doc.get("site_key")
    if isinstance(site_key, str) and len(site_key) == 64 and set(site_key) <= HEX_DIGITS:
        identity["site_key"] = site_key
    # what the platform rules weighed (sessions attested before it lack them)
    if isinstance(doc.get("tcb_status"), str):
        identity["tcb_status"] = doc["tcb_status"]
        identity["debug"] = doc.get("debug") is True
        evaluation = doc.get("tcb_evaluation")
        if type(evaluation) is int:
            identity["tcb_evaluation"] = evaluation
        snp_tcb = doc.get("snp_tcb")
        if isinstance(snp_tcb, dict):
            identity["snp_tcb"] = {k: v for k, v in snp_tcb.items() if isinstance(v, str)}
        if doc.get("amd_crl_unchecked") is True:  # attested by an SPM with --no-amd-crl
            identity["amd_crl_unchecked"] = True
    return identity


HEX_DIGITS = frozenset("0123456789abcdef")

#: The claims that name a machine, best first: Intel's PPID (stable across TCB
#: recoveries, which issue a new PCK certificate), AMD's chip ID, the PCK certificate's
#: digest (what revocations named before the PPID), the simulated platform's.
PLATFORM_KEYS = ("ppid", "chip_id", "pck_sha256", "platform_cert_sha256")


def platform_ids(platform: dict[str, str]) -> list[str]:
    """Every ID a ``platform`` revocation may name for the machine the evidence came
    from. A masked or VLEK-signed SEV-SNP report's chip ID is zeros, which names no
    machine (every masked one): it is left out."""
    ids = []
    for key in PLATFORM_KEYS:
        value = str(platform.get(key, "")).lower()
        if value and value.strip("0"):
            ids.append(value)
    return ids


def platform_id(platform: dict[str, str]) -> str:
    """The ID shown for the machine the evidence came from (its first of
    :func:`platform_ids`; empty when none names it)."""
    ids = platform_ids(platform)
    return ids[0] if ids else ""


def revocation_keys(service: str, serial: str, identity: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (kind, subject) whose revocation would stop this workload: what
    :func:`revoked_reason` looks for, to look up only those."""
    keys = {("service", service)}
    if serial:
        keys.add(("certificate", serial))
    keys |= {("measurement", str(v).lower()) for v in identity.get("measurements", {}).values()}
    named = identity.get("platforms")
    if not isinstance(named, list):
        named = [identity.get("platform", "")]
    keys |= {("platform", pid) for pid in named if pid}
    return keys


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
    named = identity.get("platforms")
    if not isinstance(named, list):
        named = [identity.get("platform", "")]
    for pid in named:
        if pid and ("platform", pid) in revoked:
            return f"platform {pid} is revoked by the board"
    return None
