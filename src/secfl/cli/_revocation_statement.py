"""The statement a board revocation (or readmission) signs, built from the flags.

Every member of the board rebuilds the same statement from the same flags
(``--service``, ``--serial``, ``--kind``/``--subject``, ``--reason``, ``--readmit``,
``--lifts``), in one canonical form, so that their signatures agree and its subject
matches what the SPM compares it with; :func:`digest_of` is the digest they sign.
The commands are in :mod:`secfl.cli.revocation`.
"""

from __future__ import annotations

import re

from secfl.cli.audit import printable
from secfl.cli.status import policy_name
from secfl.errors import UsageError

__all__ = ["digest_of", "revocation_statement", "statement_from_flags", "with_lifts"]


def statement_from_flags(
    kind: str | None,
    subject: str | None,
    serial: str | None,
    service: str | None,
    reason: str,
    readmit: bool,
) -> dict[str, str]:
    """The statement the flags name (see :mod:`secfl.cli.revocation`): ``--service`` alone is
    the service, ``--serial`` a certificate, ``--kind``/``--subject`` anything."""
    if serial is not None:
        if kind is not None or subject is not None:
            raise UsageError("--serial: give either --serial HEX or --kind and --subject")
        try:
            return revocation_statement("certificate", serial, service or "", reason, readmit)
        except UsageError as exc:  # name the flag the user gave
            raise UsageError(str(exc).replace("--subject: ", "--serial: ", 1)) from None
    if kind is None and subject is None:
        if not service:
            raise UsageError(
                "name what to revoke: --service NAME, --serial HEX, or --kind KIND --subject ID"
            )
        from secfl.policy._fields import NAME

        if not re.fullmatch(NAME, service.strip()):
            raise UsageError(f"--service: '{printable(service, 40)}' is not a service name")
        return revocation_statement("service", service, "", reason, readmit)
    if kind is None or subject is None:
        raise UsageError("--kind and --subject go together (or use --service NAME, --serial HEX)")
    return revocation_statement(kind, subject, service or "", reason, readmit)


#: How long each kind's IDs are, in hex digits: measurements (SGX 32 bytes; TDX,
#: SEV-SNP and simulated 48; 32-byte fields such as host_data), platforms (an Intel
#: PPID 16 bytes, a PCK certificate's or simulated platform's SHA-256 32, an SEV-SNP
#: chip ID 64).
_ID_DIGITS = {"measurement": (64, 96), "platform": (32, 64, 128)}


def revocation_statement(
    kind: str, subject: str, service: str, reason: str, readmit: bool
) -> dict[str, str]:
    """The statement every signer rebuilds from the same flags, in one canonical form
    (a serial as lowercase hex without leading zeros, hex lowercased), so that the
    signatures agree and the subject matches what the SPM compares it with."""
    from secfl.policy._fields import NAME
    from secfl.spm._records import REVOCATION_KINDS, normalise_serial

    if kind not in REVOCATION_KINDS:
        raise UsageError(f"--kind: '{kind[:40]}' is not one of {', '.join(REVOCATION_KINDS)}")
    text = subject.strip()
    if kind == "service":
        if not re.fullmatch(NAME, text):
            raise UsageError(f"--subject: '{printable(text, 40)}' is not a service name")
    elif kind == "certificate":
        digits = text.lower().removeprefix("0x").replace(":", "")
        if not re.fullmatch(r"[0-9a-f]{1,64}", digits):
            raise UsageError(
                "--subject: a certificate serial is at most 64 hex digits (0x and colons allowed)"
            )
        text = normalise_serial(digits)
    else:
        text = text.lower()
        if not re.fullmatch(r"[0-9a-f]{1,256}", text):
            raise UsageError(f"--subject: a {kind} is given in hex (at most 256 digits)")
        # a digit dropped or added matches nothing, and would keep no one out
        lengths = _ID_DIGITS.get(kind)
        if lengths and len(text) not in lengths:
            shown = ", ".join(str(n) for n in lengths[:-1]) + f" or {lengths[-1]}"
            raise UsageError(
                f"--subject: a {kind} is {shown} hex digits, not {len(text)}: copy it from "
                "`secfl audit show` (attestation.accepted entries)"
            )
    if service and not re.fullmatch(NAME, service):
        raise UsageError(f"--service: '{printable(service, 40)}' is not a service name")
    if not re.fullmatch(r"[^\x00-\x1f\x7f]{0,1024}", reason):
        raise UsageError("--reason: one line of at most 1024 characters")
    statement = {"kind": kind, "subject": text, "service": service, "reason": reason}
    if readmit:
        statement["action"] = "readmit"
    return statement


def with_lifts(statement: dict[str, str], lifts: str | None) -> dict[str, str]:
    """``statement`` with ``--lifts``: a readmission names the revocation it lifts (the
    digest of its statement), so that one signed for an earlier revocation of the same
    subject and held back never lifts a later one; a revocation names none."""
    if statement.get("action") != "readmit":
        if lifts is not None:
            raise UsageError("--lifts: only a readmission (--readmit) names a revocation")
        return statement
    digest = (lifts or "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise UsageError(
            "--lifts: a readmission names the revocation it lifts: the 64 hex digits of its "
            "digest, as `secfl revocations` lists it"
        )
    return {**statement, "lifts": digest}


def digest_of(policy: str, statement: dict[str, str]) -> str:
    """The digest the board signs: ``statement`` in ``policy`` (as the SPM computes it)."""
    from secfl.spm._revocation import revocation_digest, revocation_doc

    return revocation_digest(revocation_doc(policy_name(policy), statement))
