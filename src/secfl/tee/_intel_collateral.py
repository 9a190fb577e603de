"""Intel collateral: its typed form, its own checks, and the TCB appraisal by dcap-qvl.

:func:`appraise` runs after the quote's signature chain has verified: it checks
the collateral's issuer chains up to the pinned root, the CRLs (signature, dates,
revocation of every certificate in play) and the TCB info / QE identity dates,
then hands exactly what it checked to ``dcap-qvl`` for the TCB-level matching,
which gives the TCB status and the advisories.

dcap-qvl refuses to give a TCB status for a debug TEE, as its very last check.
A debug quote with collateral is therefore reported with ``tcb_status`` unknown
(a debug TEE protects nothing, whatever its TCB) and the caller decides.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from secfl._internal import x509util
from secfl.errors import CollateralFault, VerificationError
from secfl.tee import _roots as roots
from secfl.tee._claims import TcbStatus
from secfl.tee._intel_quote import Quote

#: dcap-qvl's status spellings (current and legacy) -> :data:`TcbStatus`.
#: "TD relaunch advised" means the running TD is behind the platform: out of date.
_STATUSES: dict[str, TcbStatus] = {
    "UpToDate": "UpToDate",
    "OK": "UpToDate",
    "SWHardeningNeeded": "SWHardeningNeeded",
    "ConfigurationNeeded": "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded": "ConfigurationAndSWHardeningNeeded",
    "OutOfDate": "OutOfDate",
    "OutOfDateConfigurationNeeded": "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised": "OutOfDate",
    "TDRelaunchAdvisedConfigurationNeeded": "OutOfDateConfigurationNeeded",
    "Revoked": "Revoked",
}

#: dcap-qvl's refusal of a debug TEE (after every other check passed).
_DCAP_DEBUG = "Debug mode is enabled"
#: Words that classify a dcap-qvl refusal (lowercase), first match wins. A QE below
#: every level of Intel's QE identity ("QE ISVSVN 10 is below minimum required 21") is a
#: TCB verdict on signed collateral like a platform below every TCB level: as
#: "collateral" it named the wrong check, and the SPM did not hold the floors of the
#: copy that said so, so the host could serve the copy of the evaluation before it
#: (found by a review).
_REASONS = {
    "attributes": ("debug mode", "sept_ve", "profiling", "migration", "servtd", "reserved bits"),
    "tcb": ("tcb level", "tcb status", "tdx module", "no tcb levels", "mr service td", "qe isvsvn"),
}

#: The common name of the certificate that signs TCB infos and QE identities.
TCB_SIGNER = "Intel SGX TCB Signing"
#: Certificates an issuer chain of the collateral may hold (Intel's hold two).
MAX_CHAIN = 3
#: Entries a CRL of the collateral may hold (Intel's PCK CRLs hold tens).
MAX_REVOKED = 100_000

_HEX_FIELDS = ("tcb_info_signature", "qe_identity_signature", "pck_crl", "root_ca_crl")


class IntelCollateral(BaseModel):
    """Collateral for one quote, in Intel PCS / PCCS v4 naming.

    ``tcb_info`` and ``qe_identity`` are the JSON objects exactly as served (their
    signatures cover these bytes); signatures and CRLs are hex; issuer chains PEM.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tcb_info: str
    tcb_info_signature: str
    tcb_info_issuer_chain: str
    qe_identity: str
    qe_identity_signature: str
    qe_identity_issuer_chain: str
    pck_crl: str
    pck_crl_issuer_chain: str
    root_ca_crl: str

    @field_validator(*_HEX_FIELDS)
    @classmethod
    def _hex(cls, value: str) -> str:
        try:
            bytes.fromhex(value)
        except ValueError:
            raise ValueError("not hex") from None
        return value

    @classmethod
    def from_json(cls, text: str | bytes) -> IntelCollateral:
        """Load the JSON form (as ``testvectors/intel/*.collateral.json``)."""
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise CollateralFault(f"collateral: not JSON ({exc})") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: object) -> IntelCollateral:
        """Validate a dict with exactly the nine fields."""
        if not isinstance(doc, dict):
            raise CollateralFault("collateral: expected a JSON object")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            raise CollateralFault(f"collateral: field '{where}': {first['msg']}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> IntelCollateral:
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise VerificationError(f"collateral: cannot read {path}: {exc.strerror}") from None
        return cls.from_json(text)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2, sort_keys=True)


def as_collateral(collateral: object) -> IntelCollateral:
    """Accept an :class:`IntelCollateral`, its JSON text (str or bytes) or a dict."""
    if isinstance(collateral, IntelCollateral):
        return collateral
    if isinstance(collateral, str | bytes):
        return IntelCollateral.from_json(collateral)
    if isinstance(collateral, dict):
        return IntelCollateral.from_dict(collateral)
    raise VerificationError(
        "collateral: expected IntelCollateral, JSON text or a dict, "
        f"not {type(collateral).__name__}"
    )


def appraise(
    quote: Quote, chain: list[x509.Certificate], coll: IntelCollateral, at: datetime
) -> tuple[TcbStatus, list[str]]:
    """Check the collateral, then let dcap-qvl appraise the TCB: status, advisories."""
    import dcap_qvl

    root = chain[-1]
    tcb_chain = _signing_chain(coll.tcb_info_issuer_chain, "TCB info issuer chain", at)
    qe_chain = _signing_chain(coll.qe_identity_issuer_chain, "QE identity issuer chain", at)
    crl_chain = _collateral_chain(coll.pck_crl_issuer_chain, "PCK CRL issuer chain", at)
    if crl_chain[0] != chain[1]:
        raise VerificationError(
            f"collateral: the PCK CRL issuer chain is for '{x509util.common_name(crl_chain[0])}'"
            f", not for the quote's '{x509util.common_name(chain[1])}'"
        )
    pck_crl = _load_crl(coll.pck_crl, chain[1], "PCK CRL", at)
    root_crl = _load_crl(coll.root_ca_crl, root, "root CA CRL", at)
    _check_revocation(chain[0], pck_crl, "PCK certificate", "PCK CRL")
    for cert in (chain[1], tcb_chain[0], qe_chain[0]):
        _check_revocation(cert, root_crl, "certificate", "root CA CRL")
    _check_dates(coll.tcb_info, "TCB info", at)
    _check_dates(coll.qe_identity, "QE identity", at)
    # checked here too, before dcap-qvl reads them (its errors quote what it read): what
    # fails past this point failed on documents Intel signed
    _check_signed(coll.tcb_info, coll.tcb_info_signature, tcb_chain[0], "TCB info")
    _check_signed(coll.qe_identity, coll.qe_identity_signature, qe_chain[0], "QE identity")

    def pem(certs: list[x509.Certificate]) -> str:  # what we checked is what dcap-qvl sees
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs).decode()

    try:
        report = dcap_qvl.verify_with_root_ca(
            quote.data,
            dcap_qvl.QuoteCollateralV3(
                pck_crl_issuer_chain=pem(crl_chain),
                root_ca_crl=bytes.fromhex(coll.root_ca_crl),
                pck_crl=bytes.fromhex(coll.pck_crl),
                tcb_info_issuer_chain=pem(tcb_chain),
                tcb_info=coll.tcb_info,
                tcb_info_signature=bytes.fromhex(coll.tcb_info_signature),
                qe_identity_issuer_chain=pem(qe_chain),
                qe_identity=coll.qe_identity,
                qe_identity_signature=bytes.fromhex(coll.qe_identity_signature),
            ),
            root.public_bytes(serialization.Encoding.DER),
            int(at.timestamp()),
        )
        raw_status = str(report.status)
        advisories = [str(a) for a in report.advisory_ids]
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:  # ValueError, and pyo3's PanicException (a BaseException)
        reason = _reason(exc)
        if quote.debug and reason == _DCAP_DEBUG:
            return "unknown", []
        raise VerificationError(f"{_classify(reason)}: {reason}") from None
    status = _STATUSES.get(raw_status)
    if status is None:
        raise VerificationError(f"tcb: unrecognised TCB status '{raw_status}' from dcap-qvl")
    return status, advisories


def _collateral_chain(pem: str, what: str, at: datetime) -> list[x509.Certificate]:
    """An issuer chain of the collateral, checked up to the pinned root at ``at``.
    Intel's are a signing certificate and the root: more than three is refused
    before any is parsed (thousands of copies of the root cost seconds)."""
    if pem.count("-----BEGIN") > MAX_CHAIN:
        raise CollateralFault(f"collateral: the {what} holds more than {MAX_CHAIN} certificates")
    try:
        data = pem.encode("ascii")
    except UnicodeError:
        raise CollateralFault(f"collateral: the {what} is not ASCII PEM") from None
    certs = x509util.load_pem_chain(data, f"collateral: {what}")
    for i, cert in enumerate(certs):
        x509util.force_parse(cert, f"{what} certificate {i}")
    x509util.check_chain(certs, pinned_roots=[roots.INTEL_SGX_ROOT_CA_SHA256], at=at, what=what)
    return certs


def _signing_chain(pem: str, what: str, at: datetime) -> list[x509.Certificate]:
    """The issuer chain of a TCB info or QE identity: Intel's TCB signing certificate,
    issued by the root itself, and the root. Any other certificate that chains to the
    root (a PCK certificate, whose key may have been extracted from a revoked
    platform) must not pass for Intel's signer."""
    certs = _collateral_chain(pem, what, at)
    signer = certs[0]
    try:
        constraints = signer.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if len(certs) != 2 or x509util.common_name(signer) != TCB_SIGNER or is_ca:
        raise CollateralFault(
            f"collateral: the {what} is not Intel's TCB signing certificate and the root "
            f"(its first certificate is '{x509util.common_name(signer)}', of {len(certs)})"
        )
    return certs


def _load_crl(hex_der: str, issuer: x509.Certificate, what: str, at: datetime) -> Any:
    """A CRL of the collateral, signed by ``issuer`` and current at ``at``.

    Its signature is checked before anything in it is read, and its entries are read
    only if it holds at most :data:`MAX_REVOKED`: a PCCS or a cache that forges a CRL of
    megabytes costs a hash, not a parse of each entry (found by a review)."""
    try:
        crl = x509.load_der_x509_crl(bytes.fromhex(hex_der))
        issuer_key = issuer.public_key()
        if not isinstance(issuer_key, ec.EllipticCurvePublicKey):  # Intel's PKI: ECDSA only
            raise TypeError(f"its issuer has a {type(issuer_key).__name__}, not an EC key")
        valid = crl.is_signature_valid(issuer_key)
    except Exception as exc:
        raise CollateralFault(f"collateral: the {what} is not a valid DER CRL ({exc})") from None
    if not valid:
        raise CollateralFault(
            f"collateral: the {what} signature does not verify under "
            f"'{x509util.common_name(issuer)}'"
        )
    try:
        entries = len(crl)
        if entries > MAX_REVOKED:
            raise CollateralFault(
                f"collateral: the {what} revokes {entries} certificates, more than "
                f"{MAX_REVOKED} (Intel's hold tens)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ = (crl.issuer, crl.extensions, list(crl))
        last, nxt = crl.last_update_utc, crl.next_update_utc
    except VerificationError:
        raise
    except Exception as exc:
        raise CollateralFault(f"collateral: the {what} is not a valid DER CRL ({exc})") from None
    if at < last:
        raise VerificationError(
            f"expired: the {what} is not valid before {last.isoformat()} "
            f"(verification time {at.isoformat()})"
        )
    if nxt is None or at > nxt:
        raise VerificationError(
            f"expired: the {what} was due for update on {nxt.isoformat() if nxt else '(never)'} "
            f"(verification time {at.isoformat()})"
        )
    return crl


def _check_revocation(cert: x509.Certificate, crl: Any, what: str, crl_name: str) -> None:
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise VerificationError(
            f"revoked: {what} '{x509util.common_name(cert)}' (serial {cert.serial_number:x}) "
            f"is revoked by the {crl_name}"
        )


def _check_dates(text: str, what: str, at: datetime) -> None:
    """``issueDate <= at <= nextUpdate`` for a TCB info or QE identity document."""
    try:
        doc = json.loads(text)
        issued = datetime.fromisoformat(doc["issueDate"])
        nxt = datetime.fromisoformat(doc["nextUpdate"])
        if issued.tzinfo is None or nxt.tzinfo is None:
            raise ValueError("dates without a time zone")
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise CollateralFault(
            f"collateral: the {what} is not a JSON object with issueDate and nextUpdate ({exc})"
        ) from None
    if at < issued:
        raise VerificationError(
            f"expired: the {what} was issued on {issued.isoformat()}, after the verification "
            f"time {at.isoformat()}"
        )
    if at > nxt:
        raise VerificationError(
            f"expired: the {what} was due for update on {nxt.isoformat()} "
            f"(verification time {at.isoformat()})"
        )


def _check_signed(text: str, signature_hex: str, signer: x509.Certificate, what: str) -> None:
    """Intel's ECDSA P-256 signature (raw ``r || s``) over the document's exact bytes."""
    raw = bytes.fromhex(signature_hex)
    key = signer.public_key()
    if len(raw) != 64 or not isinstance(key, ec.EllipticCurvePublicKey):
        raise CollateralFault(f"collateral: the {what} signature is not a P-256 signature")
    signature = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    try:
        key.verify(signature, text.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, UnicodeError):
        raise CollateralFault(
            f"collateral: the {what} signature does not verify under "
            f"'{x509util.common_name(signer)}'"
        ) from None


def evaluation_number(text: str) -> int:
    """A TCB info's or QE identity's ``tcbEvaluationDataNumber``: Intel raises it at each
    TCB recovery. 0 when unreadable (such a document does not verify anyway)."""
    try:
        value = json.loads(text).get("tcbEvaluationDataNumber")
    except (ValueError, AttributeError, RecursionError):
        return 0
    if type(value) is not int or not 0 <= value < 1 << 31:
        return 0
    return value


def _reason(exc: BaseException) -> str:
    """dcap-qvl's multi-line error as one line, without its generic prefix."""
    text = (str(exc).strip() or type(exc).__name__).removeprefix("Verification failed:")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(line for line in lines if line != "Caused by:")


def _classify(reason: str) -> str:
    lowered = reason.lower()
    if "failed to decode" in lowered or "invalid type" in lowered:
        return "collateral"  # a document dcap-qvl could not read, whatever it quotes
    for check, words in _REASONS.items():
        if any(word in lowered for word in words):
            return check
    return "collateral"
