"""Verify Intel DCAP quotes (SGX v3, TDX v4/v5) offline, at an explicit time.

Two depths:

- without collateral: the signature chain only, written here with ``cryptography``:
  the PCK chain embedded in the quote up to the pinned Intel SGX Root CA, the QE
  report signed by the PCK key and coming from Intel's QE, the QE report binding
  the attestation key, and the quote signed by the attestation key; for TDX,
  Intel's production TDX module (MRSIGNERSEAM and SEAM_ATTRIBUTES zero) and the
  TD's configuration (TDATTRIBUTES, MRSERVICETD). ``tcb_status`` is ``unknown``.
- with collateral (:class:`IntelCollateral`, as a PCS/PCCS serves it): the same
  checks, then the collateral's own chains, CRLs (signatures, dates, revocation)
  and validity dates here, then the full appraisal (TCB info, QE identity) by
  ``dcap-qvl``, which gives the TCB status and the advisories.

Every refusal is a :class:`VerificationError` whose message starts with the
failed check: ``malformed quote at offset N``, ``chain``, ``expired``, ``revoked``,
``signature``, ``qe identity``, ``key binding``, ``collateral``, ``tdx module``,
``attributes`` or ``tcb``.

dcap-qvl refuses to give a TCB status for a debug TEE, as its very last check.
A debug quote with collateral is therefore reported with ``tcb_status`` unknown
(a debug TEE protects nothing, whatever its TCB) and ``debug`` true, and the
caller decides (``secfl.tee._verify`` refuses it unless debug is allowed).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from secfl._internal import x509util
from secfl.errors import VerificationError
from secfl.tee import _roots as roots
from secfl.tee._claims import Claims, TcbStatus
from secfl.tee._intel_collateral import IntelCollateral, appraise, as_collateral
from secfl.tee._intel_quote import Quote, parse_quote

__all__ = ["IntelCollateral", "Quote", "as_collateral", "parse_quote", "verify_quote"]

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
    if quote.kind == "tdx":
        _check_tdx_module(quote)
        _check_td_attributes(quote)

    status: TcbStatus = "unknown"
    advisories: list[str] = []
    if coll is not None:
        status, advisories = appraise(quote, chain, coll, when)

    return Claims(
        kind=quote.kind,
        quote_version=quote.version,
        measurements=quote.measurements(),
        report_data=quote.report_data.hex(),
        debug=quote.debug,
        tcb_status=status,
        advisory_ids=advisories,
        # ppid names this machine whatever its TCB (a PCK certificate is issued anew
        # at each TCB recovery): what a board's ``platform`` revocation names.
        platform={
            "fmspc": pck_fmspc(chain[0]),
            "ca": ca,
            "ppid": pck_ppid(chain[0]),
            "pck_sha256": x509util.fingerprint(chain[0]),
        },
        simulated=False,
    )


# --- the TDX module ------------------------------------------------------------------


def _check_tdx_module(quote: Quote) -> None:
    """Refuse a TD whose TDX module is not Intel's production module: MRSIGNERSEAM is
    zero for a module Intel signed, SEAM_ATTRIBUTES zero for a production one (bit 0
    marks a debug module, which the host may inspect). Checked for every TDX quote
    (TDX 1.0 and 1.5 bodies): dcap-qvl checks them only against the TCB info's TDX
    module identity, so only with collateral, and the host decides whether the SPM's
    PCCS answers (found by a review)."""
    signer = quote.field("mrsignerseam")
    if any(signer):
        raise VerificationError(
            "tdx module: the TDX module is not Intel's (MRSIGNERSEAM "
            f"{signer.hex()[:16]}… is not zero)"
        )
    attributes = int.from_bytes(quote.field("seam_attributes"), "little")
    if attributes:
        what = "a debug TDX module" if attributes & 1 else "reserved bits are set"
        raise VerificationError(
            f"tdx module: {what} (SEAM_ATTRIBUTES {attributes:016x} is not zero)"
        )


# --- the TD's configuration ------------------------------------------------------------


def _bits(*spans: tuple[int, int]) -> int:
    return sum(1 << bit for low, high in spans for bit in range(low, high + 1))


#: TDATTRIBUTES (little-endian), as dcap-qvl rates them with collateral: DEBUG (bit
#: 0) is the caller's to weigh; bits 1-15, 23-26 and 32-61 are reserved; SERVTD_EXT
#: (17) changes what the quote says of service TDs; SEPT_VE_DISABLE (28) keeps the host
#: from injecting #VE through the secure EPT; MIGRATABLE (29) lets a migration TD
#: export the TD's memory. Allowed: 16, 18-22, 27 (LASS), 30 (PKS), 31 (KL), 62, 63.
_RESERVED = _bits((1, 15), (23, 26), (32, 61))
_SERVTD_EXT = 1 << 17
_SEPT_VE_DISABLE = 1 << 28
_MIGRATABLE = 1 << 29


def _check_td_attributes(quote: Quote) -> None:
    """Refuse a TD the host configured to be inspected: checked for every TDX quote,
    not only when collateral appraises it (dcap-qvl checks these only then, and the
    host decides whether the SPM's PCCS answers: found by a review)."""
    attributes = int.from_bytes(quote.field("td_attributes"), "little")
    if attributes & _RESERVED:
        raise VerificationError(
            f"attributes: reserved bits are set (TDATTRIBUTES {attributes:016x})"
        )
    if attributes & _SERVTD_EXT:
        raise VerificationError(
            f"attributes: SERVTD_EXT is enabled (TDATTRIBUTES {attributes:016x})"
        )
    if not attributes & _SEPT_VE_DISABLE:
        raise VerificationError(
            "attributes: SEPT_VE_DISABLE is off: the host may inject #VE into the TD "
            f"(TDATTRIBUTES {attributes:016x})"
        )
    if attributes & _MIGRATABLE:
        raise VerificationError(
            "attributes: the TD is migratable: a migration TD may export its memory "
            f"(TDATTRIBUTES {attributes:016x})"
        )
    if quote.body_type == 3 and any(quote.field("mrservicetd")):
        raise VerificationError(
            "attributes: a service TD is bound to this TD (MRSERVICETD is not zero): it may "
            "read the TD's memory"
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
        x509util.force_parse(cert, f"PCK chain certificate {i}")
    return certs


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


def pck_ppid(leaf: x509.Certificate) -> str:
    """The PPID (lowercase hex): the platform's ID in the Intel SGX extension of the PCK
    leaf, the same in every PCK certificate of that machine."""
    import dcap_qvl

    pem = leaf.public_bytes(serialization.Encoding.PEM)
    try:
        ppid = bytes(dcap_qvl.parse_pck_extension_from_pem(pem).ppid)
    except Exception as exc:
        raise VerificationError(
            f"chain: the PCK certificate has no readable Intel SGX extension ({exc})"
        ) from None
    return ppid.hex() if ppid.strip(b"\x00") else ""


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
