"""A site's enrolment key: who may attest a workload as a service that names one.

The service name a workload enrols under is its host's choice, and the SPM checks only
that the evidence shows code the service accepts. Every site of a federation runs the
same collaborator, so every site's genuine TEE matches every site's service: a site's
host could enrol its own TEE as another site, receive that site's certificate and keys,
and take a second seat in the federation (or get the other site flagged by the clone
audit). A policy closes this by naming each site's *site key* (``site_key`` of the
service: an Ed25519 or ECDSA P-256 public key); the site's operator holds the private
key, and the workload enrolling as that service must sign, with it:

    statement(SITE_DOMAIN, SHA-256(canonical JSON of
        {"policy": P, "service": S, "report_data": hex(report_data)}))

where ``report_data`` is what the evidence binds (:func:`workload_report_data`: the
SPM's nonce, the HPKE key the secrets are sealed to, the CSR's key). The signature is
thus good for this one attestation, of this service, of this policy: replayed with
another nonce, or presented for another service, it does not verify. Ed25519 signs the
statement, ECDSA P-256 its SHA-256 (DER), as board signatures do
(:mod:`secfl.policy._signatures`).

The key is the site's own credential, not the code's: it is read from a file its host
names (``SECFL_SITE_KEY``, :func:`load_site_key`) and is not part of any measurement.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from secfl._internal import files
from secfl._internal.canonical import canonical_json
from secfl.errors import PolicyError, Refused, SpmError
from secfl.policy import _keys as keys
from secfl.policy._signatures import statement

if TYPE_CHECKING:
    from secfl.policy._model import Policy

__all__ = [
    "MAX_KEY_FILE",
    "MAX_SIGNATURE",
    "SITE_DOMAIN",
    "check_site_signature",
    "load_site_key",
    "sign_enrolment",
    "site_key_change",
    "site_key_claim",
    "site_message",
    "workload_site_key",
]

#: The domain of a site's signature over one of its enrolments.
SITE_DOMAIN = "secfl/site-enrolment/v1"
#: The longest signature accepted, in bytes (ECDSA P-256 DER is at most 72, Ed25519 64).
MAX_SIGNATURE = 80
#: The largest site key file read (a PEM private key is a few hundred bytes).
MAX_KEY_FILE = 16384


def site_message(policy: str, service: str, report_data: bytes) -> bytes:
    """The bytes a site's key signs for the enrolment of ``service`` of ``policy`` whose
    evidence binds ``report_data``."""
    doc = {"policy": policy, "report_data": report_data.hex(), "service": service}
    return statement(SITE_DOMAIN, hashlib.sha256(canonical_json(doc)).hexdigest())


def sign_enrolment(key: keys.PrivateKey, policy: str, service: str, report_data: bytes) -> str:
    """The site's signature (standard base64) over this enrolment."""
    message = site_message(policy, service, report_data)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.sign(message)
    else:
        raw = key.sign(message, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(raw).decode()


def check_site_signature(
    site_key: str, policy: str, service: str, report_data: bytes, signature: str | None
) -> None:
    """Refuse (:class:`Refused`, 403, one line) unless ``signature`` is by ``site_key``
    (the service's, from the policy) over this enrolment."""
    needs = f"enrolment: service '{service}' requires its site key's signature"
    if not signature:
        raise Refused(
            f"{needs} over this enrolment, and none was sent (its host sets SECFL_SITE_KEY "
            "to the file holding the site's private key)",
            403,
        )
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(f"{needs}: the signature is not standard base64", 400) from None
    if not raw or len(raw) > MAX_SIGNATURE:
        raise Refused(f"{needs}: the signature is not {MAX_SIGNATURE} bytes or fewer", 400)
    public = keys.load_public(site_key)  # (validated with the policy)
    message = site_message(policy, service, report_data)
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(raw, message)
        else:
            public.verify(raw, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise Refused(
            f"{needs}: the signature sent does not verify with it for this enrolment (another "
            "key's, or made for another nonce, service or policy)",
            403,
        ) from None


def site_key_claim(site_key: str | None) -> dict[str, str]:
    """What a session remembers of the site key that signed its enrolment (the ID of
    the service's ``site_key``, :func:`keys.key_id`), or nothing for a service without
    one: ``{"site_key": ID}``, merged into the session's attested identity."""
    if site_key is None:
        return {}
    return {"site_key": keys.key_id(keys.load_public(site_key))}


def site_key_change(
    policy: Policy, version: int, service: str, identity: dict[str, Any]
) -> str | None:
    """Why version ``version`` (``policy``) no longer accepts a session of ``service``
    for its site key, or None: the version names a site key for the service and the
    session's enrolment was not signed by it (signed by another key the board replaced,
    a stolen one say, or by none, attested before the board gave the site a key: one
    site's host that had enrolled as another keeps that seat no longer)."""
    entry = policy.service(service)
    if entry is None or entry.site_key is None:
        return None
    if identity.get("site_key") == site_key_claim(entry.site_key)["site_key"]:
        return None
    signed = "no site key" if "site_key" not in identity else "another site key"
    return (
        f"version {version} of the policy names a site key for '{service}', and its "
        f"enrolment was signed by {signed}; attest again with the site's key"
    )


def load_site_key(path: Path | str) -> keys.PrivateKey:
    """The site's private key from the file ``path`` (PEM, unencrypted, Ed25519 or
    ECDSA P-256), readable by its owner only; :class:`SpmError` in one line naming the
    file otherwise."""
    where = f"site key: {path}"
    try:
        with files.open_regular(path) as handle:  # a FIFO or a device: refused, not read
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            if mode & 0o077:
                raise SpmError(
                    f"{where}: others may read it (mode {mode:o}): chmod 600 it, it is the "
                    "site's private key"
                )
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise SpmError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise SpmError(f"{where}: larger than {MAX_KEY_FILE} bytes: not a PEM private key")
    try:
        return keys.load_private(data)
    except PolicyError as exc:
        raise SpmError(f"{where}: {str(exc).removeprefix('board signing key: ')}") from None


def workload_site_key(
    service: str, site_key: str | None, path: Path | None
) -> keys.PrivateKey | None:
    """For a workload about to enrol as ``service`` (whose policy entry names
    ``site_key``, or None), the site's key from the file ``path`` its host named
    (``SECFL_SITE_KEY``), checked before anything is sent: a missing key, or another
    site's, is refused here in one line (:class:`SpmError`), as the SPM would refuse it."""
    needs = f"enrolment: service '{service}' requires its site key's signature"
    if site_key is None:
        # a key its service does not need is not read: nor is it handed to the workload
        # (`secfl run` copies it into the workload's folder for its renewals), whose code
        # may be another party's (the host exported SECFL_SITE_KEY for all it runs)
        return None
    if path is None:
        raise SpmError(
            f"{needs}: set SECFL_SITE_KEY to the file holding the site's private key "
            "(its operator's `secfl policy keygen`, or `secfl policy init --site-keys`)"
        )
    key = load_site_key(path)
    if keys.key_id(key.public_key()) != keys.key_id(keys.load_public(site_key)):
        raise SpmError(
            f"{needs}: the key in {path} (SECFL_SITE_KEY) is not the one the policy names "
            f"for '{service}'"
        )
    return key
