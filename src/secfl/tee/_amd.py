"""AMD SEV-SNP verifier: a report and AMD's certificates in, :class:`Claims` out.

Trust runs ARK -> ASK -> VCEK (or ARK -> ASVK -> VLEK for a cloud provider's
VLEK), all RSA-PSS SHA-384; the ARK is accepted only when its SHA-256 fingerprint
is pinned in :mod:`secfl.tee._roots`. The certificates come from the caller
(``vcek``, ``chain``) or with the evidence (a configfs-tsm auxblob, the SNP
certificate table); nothing is fetched here (see :mod:`secfl.tee._kds`).

Checks, each failing with a one-line message that starts with its name:

- ``malformed``: the report or the certificate table does not parse;
- ``chain``: a certificate is missing, not of the kind the report names, not
  issued by the next one, or the ARK is not pinned or not for the report's product;
- ``expired``: a certificate is outside its validity at the verification time;
- ``signature``: the report's ECDSA P-384 signature does not verify under the VCEK/VLEK;
- ``key binding``: the VCEK's hwID is not the report's chip_id, or the VCEK/VLEK
  was issued for another TCB than the report's reported_tcb;
- ``crl`` / ``revoked`` (with ``crl``, the caller's AMD CRLs): the product's CRL is
  missing, not the ARK's, malformed or out of date, or revokes the ASK/ASVK or the
  VCEK/VLEK (:mod:`secfl.tee._amd_crl`). Without ``crl`` the claims say
  ``amd_crl: unchecked``: whoever accepts them decides (the SPM refuses them unless
  its operator opted out, ``--no-amd-crl``).

``tcb_status`` is always ``unknown``: AMD publishes no signed TCB appraisal for
SNP that could say more, so minimum TCBs belong in policy (``platforms.min_snp_tcb``),
not here. The claims' ``platform`` gives the report's ``reported_tcb`` (the TCB the
VCEK/VLEK was issued for, checked above), ``launch_tcb`` (the firmware's when the guest
was launched and measured: firmware is updated under running guests), ``committed_tcb``
and ``current_tcb`` by
their security patch levels (``bootloader=3,tee=0,snp=8,microcode=115``; Turin adds
``fmc``): :func:`secfl.tee._snp_report.tcb_from_text` reads them back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from secfl._internal import der
from secfl._internal.x509util import (
    check_issued_by,
    check_validity,
    common_name,
    fingerprint,
    issuer_common_name,
    load_any,
    load_der,
)
from secfl.errors import VerificationError
from secfl.tee import _roots as roots
from secfl.tee._amd_crl import CrlFloor, CrlLookup, check_revocation
from secfl.tee._claims import Claims
from secfl.tee._snp_report import (
    CERT_GUIDS,
    PRODUCTS,
    Product,
    SnpReport,
    build_cert_table,
    parse_cert_table,
    parse_report,
    tcb_parts,
    tcb_text,
)

__all__ = [
    "CERT_GUIDS",
    "SnpReport",
    "build_cert_table",
    "parse_cert_table",
    "parse_report",
    "verify_report",
    "verify_report_signature",
]

_AMD_OID: Final = "1.3.6.1.4.1.3704.1"
_OID_PRODUCT: Final = f"{_AMD_OID}.2"
_OID_HWID: Final = f"{_AMD_OID}.4"
_OID_SPL: Final[dict[str, str]] = {
    "blSPL": f"{_AMD_OID}.3.1",
    "teeSPL": f"{_AMD_OID}.3.2",
    "snpSPL": f"{_AMD_OID}.3.3",
    "ucodeSPL": f"{_AMD_OID}.3.8",
    "fmcSPL": f"{_AMD_OID}.3.9",
}
_VEK_CN: Final = {"vcek": "SEV-VCEK", "vlek": "SEV-VLEK"}
_ISSUER_ROLE: Final = {"vcek": "ASK", "vlek": "ASVK"}
_TURIN_HWID_SIZE: Final = 8
_HOW_TO_GET: Final = "pass --chain, an auxblob, or fetch it from KDS"
_ROLE_NAMES: Final = {"vek": "VCEK/VLEK", "issuer": "ASK/ASVK", "ark": "ARK"}


# --- verification ----------------------------------------------------------------


@dataclass
class _Certs:
    """The certificates found for one report, by role (``None``: not provided)."""

    vek: x509.Certificate | None = None
    issuer: x509.Certificate | None = None
    ark: x509.Certificate | None = None


def verify_report_signature(report: bytes, cert: bytes) -> SnpReport:
    """Check only the report's signature under ``cert`` (a VCEK or VLEK, DER or PEM).

    No chain, validity or key binding: for diagnostics and for callers that
    establish trust in ``cert`` some other way.
    """
    parsed = parse_report(report)
    certs = _load(cert, "signature: the certificate")
    if len(certs) != 1:
        raise VerificationError(f"signature: expected one certificate, got {len(certs)}")
    _check_signature(parsed, certs[0], "certificate")
    return parsed


def verify_report(
    report: bytes,
    *,
    at: datetime,
    vcek: bytes | None = None,
    chain: bytes | None = None,
    aux: bytes | None = None,
    crl: CrlLookup | None = None,
    crl_floor: CrlFloor | None = None,
) -> Claims:
    """Verify an SNP report at time ``at`` and return its claims, or refuse it.

    ``vcek`` is the VCEK or VLEK (DER or PEM), ``chain`` the PEM bundle ASK (or ASVK)
    then ARK, ``aux`` the certificate table that came with the report. Explicit
    arguments take precedence over the table; every role must be filled by one.
    ``crl`` gives AMD's CRL of the chain's kind and product, which must not revoke it;
    ``crl_floor`` may refuse that CRL as older than one seen before.
    """
    parsed = parse_report(report)
    kind = parsed.signing_key
    if kind == "none":
        raise VerificationError("signature: the report is unsigned (signing_key = none)")
    certs = _collect(kind, vcek=vcek, chain=chain, aux=aux)
    vek, product = _check_chain(parsed, kind, certs, at)
    checked = "unchecked"
    if crl is not None:
        assert certs.ark is not None and certs.issuer is not None  # (_check_chain)
        checked = check_revocation(
            crl, kind=kind, product=product, ark=certs.ark, issuer=certs.issuer, vek=vek, at=at,
            floor=crl_floor,
        )  # fmt: skip
    _check_signature(parsed, vek, kind.upper())
    _check_key_binding(parsed, vek, kind, product)
    return Claims(
        kind="snp",
        quote_version=parsed.version,
        measurements={
            "measurement": parsed.measurement.hex(),
            "host_data": parsed.host_data.hex(),
            "policy": parsed.policy,
            "vmpl": parsed.vmpl,
            "guest_svn": parsed.guest_svn,
            "id_key_digest": parsed.id_key_digest.hex(),
            "author_key_digest": parsed.author_key_digest.hex(),
        },
        report_data=parsed.report_data.hex(),
        debug=parsed.debug,
        tcb_status="unknown",
        platform={
            "chip_id": parsed.chip_id.hex(),
            "product": product,
            "signing_key": kind,
            "reported_tcb": tcb_text(parsed.reported_tcb, product),
            "launch_tcb": tcb_text(parsed.launch_tcb, product),
            "committed_tcb": tcb_text(parsed.committed_tcb, product),
            "current_tcb": tcb_text(parsed.current_tcb, product),
            "amd_crl": checked,
        },
    )


@contextlib.contextmanager
def _crypto(check: str) -> Iterator[None]:
    """Turn what ``cryptography`` raises on hostile input into a refusal of ``check``."""
    try:
        yield
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise VerificationError(f"{check}: {type(exc).__name__}: {exc}") from None


def _collect(kind: str, *, vcek: bytes | None, chain: bytes | None, aux: bytes | None) -> _Certs:
    """Fill each role from ``vcek``, then ``chain``, then the certificate table."""
    found = _Certs()
    if vcek is not None:
        certs = _load(vcek, "chain: the VCEK/VLEK given")
        if len(certs) != 1:
            raise VerificationError(f"chain: expected one VCEK/VLEK certificate, got {len(certs)}")
        found.vek = certs[0]
    if chain is not None:
        given = _Certs()
        for cert in _load(chain, "chain: the chain given"):
            with _crypto("chain"):
                role = _role(cert)
            if getattr(given, role) is not None:
                raise VerificationError(f"chain: the chain given holds two {_ROLE_NAMES[role]}s")
            setattr(given, role, cert)
        found.vek = found.vek or given.vek
        found.issuer, found.ark = given.issuer, given.ark
    if aux:
        table = parse_cert_table(aux)
        other = "vlek" if kind == "vcek" else "vcek"
        for role, key in (("vek", kind), ("vek", other), ("issuer", "ask"), ("ark", "ark")):
            if key in table and getattr(found, role) is None:
                what = f"chain: the auxblob's {key}"
                setattr(found, role, _load(table[key], what, pem=False)[0])
    return found


def _load(data: bytes, what: str, *, pem: bool = True) -> list[x509.Certificate]:
    return load_any(data, what) if pem else [load_der(data, what)]


def _role(cert: x509.Certificate) -> str:
    if cert.subject == cert.issuer:
        return "ark"
    return "vek" if common_name(cert) in _VEK_CN.values() else "issuer"


def _check_chain(
    parsed: SnpReport, kind: str, certs: _Certs, at: datetime
) -> tuple[x509.Certificate, Product]:
    """Walk VCEK/VLEK -> ASK/ASVK -> pinned ARK; return the VCEK/VLEK and the ARK's product."""
    name, issuer_role = kind.upper(), _ISSUER_ROLE[kind]
    vek = certs.vek
    if vek is None:
        where = "fetch it from KDS" if kind == "vcek" else "KDS gives VLEKs only to clouds"
        raise VerificationError(
            f"chain: the report is signed by a {name}, which was not provided (pass --vcek or "
            f"an auxblob; {where})"
        )
    with _crypto("chain"):
        vek_cn, vek_issuer = common_name(vek), _issuer_cn(vek)
        if vek_cn != _VEK_CN[kind]:
            raise VerificationError(
                f"chain: the report is signed by a {name} (signing_key {parsed.signing_key_value}),"
                f" but the certificate given is '{vek_cn}'"
            )
        if certs.issuer is None:
            raise VerificationError(
                f"chain: the {name} is issued by '{vek_issuer}' ({issuer_role}), which was not "
                f"provided ({_HOW_TO_GET})"
            )
        issuer_cn = common_name(certs.issuer)
        if vek.issuer != certs.issuer.subject:
            raise VerificationError(
                f"chain: the {name} is issued by '{vek_issuer}' ({issuer_role}), but the chain "
                f"gives '{issuer_cn}'"
            )
        if certs.ark is None:
            raise VerificationError(
                f"chain: the {issuer_role} '{issuer_cn}' is issued by '{_issuer_cn(certs.issuer)}'"
                f" (ARK), which was not provided ({_HOW_TO_GET})"
            )
        ark = certs.ark
        pinned = {fp: product for product, fp in roots.AMD_ARK_SHA256.items()}
        product = pinned.get(fingerprint(ark))
        if product is None or product not in PRODUCTS:
            raise VerificationError(
                f"chain: the ARK '{common_name(ark)}' is not a pinned AMD root "
                f"(sha256 {fingerprint(ark)})"
            )
        for cert, issuer, what in (
            (ark, ark, "ARK"),
            (certs.issuer, ark, issuer_role),
            (vek, certs.issuer, name),
        ):
            _check_pss(cert, what)
            check_issued_by(cert, issuer, what)
        for cert, what in ((vek, name), (certs.issuer, issuer_role), (ark, "ARK")):
            check_validity(cert, at, what)
        claimed = _product_name(vek, name)
    if parsed.product is None and parsed.version >= 3:
        raise VerificationError(
            f"chain: the report's CPU (family {parsed.cpuid_family:#x}, model "
            f"{parsed.cpuid_model:#x}) is not a known SEV-SNP product ({', '.join(PRODUCTS)})"
        )
    for source, other in (("report's CPUID", parsed.product), (f"{name}'s productName", claimed)):
        if other is not None and other != product:
            raise VerificationError(
                f"chain: the {source} says {other}, but the certificates chain to the {product} ARK"
            )
    return vek, product


def _issuer_cn(cert: x509.Certificate) -> str:
    return issuer_common_name(cert)


def _check_pss(cert: x509.Certificate, what: str) -> None:
    if cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        cert.signature_hash_algorithm, hashes.SHA384
    ):
        raise VerificationError(
            f"chain: the {what} '{common_name(cert)}' is not signed with RSA-PSS SHA-384"
        )


def _product_name(vek: x509.Certificate, name: str) -> str | None:
    """The product line of the VCEK/VLEK's productName ("Milan-B0" -> "Milan")."""
    value = _extension(vek, _OID_PRODUCT, "chain")
    if value is None:
        return None
    return der.ia5_string(value, f"chain: the {name}'s productName").split("-", 1)[0]


def _extension(cert: x509.Certificate, oid: str, check: str) -> bytes | None:
    """The raw extnValue of an AMD extension, or ``None`` when absent."""
    for ext in cert.extensions:
        if ext.oid.dotted_string == oid:
            value = ext.value
            if not isinstance(value, x509.UnrecognizedExtension):
                raise VerificationError(f"{check}: unexpected extension type for {oid}")
            return value.value
    return None


def _check_signature(parsed: SnpReport, cert: x509.Certificate, name: str) -> None:
    with _crypto("signature"):
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP384R1
        ):
            raise VerificationError(
                f"signature: the {name} '{common_name(cert)}' does not hold an ECDSA P-384 key"
            )
        r = int.from_bytes(parsed.signature_r, "little")
        s = int.from_bytes(parsed.signature_s, "little")
        try:
            key.verify(encode_dss_signature(r, s), parsed.signed_bytes, ec.ECDSA(hashes.SHA384()))
        except InvalidSignature:
            raise VerificationError(
                f"signature: the report signature does not verify under the {name} "
                f"'{common_name(cert)}'"
            ) from None


def _check_key_binding(
    parsed: SnpReport, vek: x509.Certificate, kind: str, product: Product
) -> None:
    """The VCEK must be this chip's (hwID) and both VCEK and VLEK this TCB's (SPLs)."""
    name = kind.upper()
    with _crypto("key binding"):
        if kind == "vcek" and not parsed.mask_chip_key:
            size = _TURIN_HWID_SIZE if product == "Turin" else len(parsed.chip_id)
            raw = _extension(vek, _OID_HWID, "key binding")
            if raw is None:
                raise VerificationError("key binding: the VCEK has no hwID extension")
            hwid = raw if len(raw) == size else der.octet_string(raw, "key binding: the hwID")
            expected = parsed.chip_id[:size]
            if hwid != expected or parsed.chip_id[size:].strip(b"\x00"):
                raise VerificationError(
                    f"key binding: the VCEK is for chip {hwid.hex()[:16]}…, the report comes "
                    f"from chip {parsed.chip_id.hex()[:16]}…"
                )
        for spl, value in tcb_parts(parsed.reported_tcb, product).items():
            raw = _extension(vek, _OID_SPL[spl], "key binding")
            if raw is None:
                raise VerificationError(f"key binding: the {name} has no {spl} extension")
            certified = der.integer(raw, f"key binding: the {name}'s {spl}")
            if certified != value:
                raise VerificationError(
                    f"key binding: the {name} is for {spl}={certified}, the report's "
                    f"reported_tcb has {spl}={value}"
                )
