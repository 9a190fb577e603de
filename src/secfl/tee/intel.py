"""Verify Intel DCAP quotes (SGX v3, TDX v4/v5) offline, at an explicit time.

Two depths:

- without collateral: the signature chain only, written here with ``cryptography``:
  the PCK chain embedded in the quote up to the pinned Intel SGX Root CA, the QE
  report signed by the PCK key and coming from Intel's QE, the QE report binding
  the attestation key, and the quote signed by the attestation key.
  ``tcb_status`` is ``unknown``.
- with collateral (:class:`IntelCollateral`, as a PCS/PCCS serves it): the same
  checks, then the collateral's own chains, CRLs (signatures, dates, revocation)
  and validity dates here, then the full appraisal (TCB info, QE identity) by
  ``dcap-qvl``, which gives the TCB status and the advisories.

Every refusal is a :class:`VerificationError` whose message starts with the
failed check: ``malformed quote at offset N``, ``chain``, ``expired``, ``revoked``,
``signature``, ``qe identity``, ``key binding``, ``collateral``, ``attributes``
or ``tcb``.

dcap-qvl refuses to give a TCB status for a debug TEE, as its very last check.
A debug quote with collateral is therefore reported with ``tcb_status`` unknown
(a debug TEE protects nothing, whatever its TCB) and ``debug`` true, and the
caller decides (``secfl.tee.verify`` refuses it unless debug is allowed).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from secfl._internal import x509util
from secfl.errors import VerificationError
from secfl.tee import roots
from secfl.tee._intel_quote import Quote, parse_quote
from secfl.tee.claims import Claims, TcbStatus

__all__ = ["IntelCollateral", "Quote", "parse_quote", "verify_quote"]

#: Intel's QE vendor ID, in the header of every quote its quoting enclaves produce.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

#: MRSIGNER of Intel's quoting enclaves: the SGX QE3 and the TDX TD-QE.
INTEL_QE_MRSIGNER = {
    "sgx": bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"),
    "tdx": bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"),
}

#: ISVPRODID of those quoting enclaves (as in Intel's QE identity collateral).
INTEL_QE_PROD_ID = {"sgx": 1, "tdx": 2}

#: Intermediate CA of a PCK chain (common name) -> the ``ca`` parameter of PCS/PCCS.
PCK_CAS = {"Intel SGX PCK Processor CA": "processor", "Intel SGX PCK Platform CA": "platform"}

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
#: Words that classify a dcap-qvl refusal (lowercase), first match wins.
_REASONS = {
    "attributes": ("debug mode", "sept_ve", "profiling", "migration", "servtd", "reserved bits"),
    "tcb": ("tcb level", "tcb status", "tdx module", "no tcb levels", "mr service td"),
}

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
            raise VerificationError(f"collateral: not JSON ({exc})") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: object) -> IntelCollateral:
        """Validate a dict with exactly the nine fields."""
        if not isinstance(doc, dict):
            raise VerificationError("collateral: expected a JSON object")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            raise VerificationError(f"collateral: field '{where}': {first['msg']}") from None

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


def verify_quote(raw: bytes, *, at: datetime, collateral: object | None = None) -> Claims:
    """Verify an Intel DCAP quote at time ``at``; with ``collateral`` appraise its TCB.

    Returns the :class:`Claims` (debug quotes included: the caller decides).
    Raises only :class:`VerificationError`.
    """
    when = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    coll = None if collateral is None else as_collateral(collateral)
    quote = parse_quote(raw)
    chain = load_pck_chain(quote.pck_chain_pem)
    x509util.check_chain(
        chain, pinned_roots=[roots.INTEL_SGX_ROOT_CA_SHA256], at=when, what="PCK chain"
    )
    ca = pck_ca(chain)
    _check_qe_report(quote, chain[0])
    _check_quote_signature(quote)

    status: TcbStatus = "unknown"
    advisories: list[str] = []
    if coll is not None:
        status, advisories = _appraise(quote, chain, coll, when)

    return Claims(
        kind=quote.kind,
        quote_version=quote.version,
        measurements=quote.measurements(),
        report_data=quote.report_data.hex(),
        debug=quote.debug,
        tcb_status=status,
        advisory_ids=advisories,
        platform={"fmspc": pck_fmspc(chain[0]), "ca": ca},
        simulated=False,
    )


# --- the signature chain ---------------------------------------------------------------


def load_pck_chain(pem: bytes) -> list[x509.Certificate]:
    """The PCK chain (leaf, PCK CA, root), refused unless in canonical PEM.

    Intel's quoting library writes each certificate as canonical PEM (64-column
    base64, ``\\n``), optionally followed by one NUL. Accepting only exactly that
    means no byte of the chain is malleable (unused base64 bits, whitespace...).
    """
    certs = x509util.load_pem_chain(pem.removesuffix(b"\x00"), "chain: PCK chain")
    canonical = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    if pem not in (canonical, canonical + b"\x00"):
        raise VerificationError(
            "chain: the PCK chain in the quote is not canonical PEM (as Intel's quoting "
            "library writes it)"
        )
    if len(certs) != 3:
        raise VerificationError(
            f"chain: the PCK chain has {len(certs)} certificates, not 3 (leaf, PCK CA, root)"
        )
    for i, cert in enumerate(certs):
        _force_parse(cert, f"PCK chain certificate {i}")
    return certs


def _force_parse(cert: x509.Certificate, what: str) -> None:
    """Parse every lazily decoded part now, so a malformed field fails here, by name."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ = (cert.subject, cert.issuer, cert.extensions, cert.public_key())
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
            _ = cert.signature_hash_algorithm
    except Exception as exc:
        raise VerificationError(
            f"chain: {what} is malformed ({type(exc).__name__}: {exc})"
        ) from None


def pck_ca(chain: list[x509.Certificate]) -> str:
    """``processor`` or ``platform``: which Intel PCK CA issued the leaf."""
    name = x509util.common_name(chain[1])
    if name not in PCK_CAS:
        raise VerificationError(f"chain: '{name}' is not an Intel SGX PCK CA")
    return PCK_CAS[name]


def pck_fmspc(leaf: x509.Certificate) -> str:
    """The FMSPC (uppercase hex) from the Intel SGX extension of the PCK leaf."""
    import dcap_qvl

    pem = leaf.public_bytes(serialization.Encoding.PEM)
    try:
        return bytes(dcap_qvl.parse_pck_extension_from_pem(pem).fmspc).hex().upper()
    except Exception as exc:
        raise VerificationError(
            f"chain: the PCK certificate has no readable Intel SGX extension ({exc})"
        ) from None


def _ecdsa_verify(key: ec.EllipticCurvePublicKey, raw_sig: bytes, data: bytes) -> bool:
    """ECDSA P-256 / SHA-256 over ``data`` with a raw ``r || s`` signature."""
    r = int.from_bytes(raw_sig[:32], "big")
    s = int.from_bytes(raw_sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _check_qe_report(quote: Quote, leaf: x509.Certificate) -> None:
    """The QE report: signed by the PCK key, from Intel's QE, binding the attestation key."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise VerificationError("chain: the PCK certificate key is not ECDSA P-256")
    if not _ecdsa_verify(key, quote.qe_report_signature, quote.qe_report):
        raise VerificationError(
            "signature: the QE report signature does not verify under the PCK certificate key"
        )
    if quote.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise VerificationError(
            f"qe identity: QE vendor ID {quote.qe_vendor_id.hex()} is not Intel's "
            f"({INTEL_QE_VENDOR_ID.hex()})"
        )
    mrsigner = quote.qe_field("mrsigner")
    if mrsigner != INTEL_QE_MRSIGNER[quote.kind]:
        raise VerificationError(
            f"qe identity: the quoting enclave's MRSIGNER {mrsigner.hex()} is not Intel's "
            f"{quote.kind} QE ({INTEL_QE_MRSIGNER[quote.kind].hex()})"
        )
    prod_id = int.from_bytes(quote.qe_field("isv_prod_id"), "little")
    if prod_id != INTEL_QE_PROD_ID[quote.kind]:
        raise VerificationError(
            f"qe identity: the quoting enclave's ISVPRODID {prod_id} is not Intel's "
            f"{quote.kind} QE ({INTEL_QE_PROD_ID[quote.kind]})"
        )
    if quote.qe_field("attributes")[0] & 0x02:
        raise VerificationError("qe identity: the quoting enclave is a debug enclave")
    report_data = quote.qe_field("report_data")
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
    if report_data[:32] != expected or any(report_data[32:]):
        raise VerificationError(
            "key binding: the QE report data is not SHA-256(attestation key || QE auth data) "
            "followed by zeros"
        )


def _check_quote_signature(quote: Quote) -> None:
    """The quote (header and body) signed by the attestation key."""
    x = int.from_bytes(quote.attestation_key[:32], "big")
    y = int.from_bytes(quote.attestation_key[32:], "big")
    try:
        key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError:
        raise VerificationError("signature: the attestation key is not a P-256 point") from None
    if not _ecdsa_verify(key, quote.signature, quote.signed):
        raise VerificationError(
            "signature: the quote signature does not verify under the attestation key"
        )


# --- the collateral ---------------------------------------------------------------------


def _appraise(
    quote: Quote, chain: list[x509.Certificate], coll: IntelCollateral, at: datetime
) -> tuple[TcbStatus, list[str]]:
    """Check the collateral, then let dcap-qvl appraise the TCB: status, advisories."""
    import dcap_qvl

    root = chain[-1]
    tcb_chain = _collateral_chain(coll.tcb_info_issuer_chain, "TCB info issuer chain", at)
    qe_chain = _collateral_chain(coll.qe_identity_issuer_chain, "QE identity issuer chain", at)
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
    """An issuer chain of the collateral, checked up to the pinned root at ``at``."""
    certs = x509util.load_pem_chain(pem.encode(), f"collateral: {what}")
    for i, cert in enumerate(certs):
        _force_parse(cert, f"{what} certificate {i}")
    x509util.check_chain(certs, pinned_roots=[roots.INTEL_SGX_ROOT_CA_SHA256], at=at, what=what)
    return certs


def _load_crl(hex_der: str, issuer: x509.Certificate, what: str, at: datetime) -> Any:
    """A CRL of the collateral, signed by ``issuer`` and current at ``at``."""
    try:
        crl = x509.load_der_x509_crl(bytes.fromhex(hex_der))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ = (crl.issuer, crl.extensions, list(crl))
        valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        last, nxt = crl.last_update_utc, crl.next_update_utc
    except Exception as exc:
        raise VerificationError(f"collateral: the {what} is not a valid DER CRL ({exc})") from None
    if not valid:
        raise VerificationError(
            f"collateral: the {what} signature does not verify under "
            f"'{x509util.common_name(issuer)}'"
        )
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
        raise VerificationError(
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


def _reason(exc: BaseException) -> str:
    """dcap-qvl's multi-line error as one line, without its generic prefix."""
    text = (str(exc).strip() or type(exc).__name__).removeprefix("Verification failed:")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(line for line in lines if line != "Caused by:")


def _classify(reason: str) -> str:
    lowered = reason.lower()
    for check, words in _REASONS.items():
        if any(word in lowered for word in words):
            return check
    return "collateral"
