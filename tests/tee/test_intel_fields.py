"""Every claim of every Intel quote, cross-checked against an independent parser.

Policies pin every measurement secfl reports (SGX: mrenclave, mrsigner, isv_prod_id,
isv_svn; TDX: mrtd, rtmr0-3, mrconfigid, mrowner, mrownerconfig, mrseam,
mrservicetd), so each must be read from the right bytes. Here each is compared,
whole, with Phala's dcap-qvl (a Rust implementation: ``dcap_qvl.parse_quote``, and
``verify_with_root_ca`` for the SGX ISV fields its parser does not expose):

- on every real quote of the vectors folder;
- on quotes whose body is a pseudo-random byte pattern, so that a field read at
  the wrong offset, or two fields swapped, cannot agree by accident the way the
  all-zero fields of the real quotes (mrconfigid, mrowner, ...) would: SGX v3 and
  v5, TDX v4, TDX v5 with a TDX 1.0 body (type 2) and with a TDX 1.5 body (type 3);
- through both whole verifiers: patterned quotes re-signed by a test PKI (see
  ``forge`` in test_intel.py), verified by :func:`verify_quote` and by dcap-qvl,
  claim by claim, TCB status and advisories included.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secfl.tee import _roots as roots
from secfl.tee._intel import Quote, parse_quote, verify_quote
from secfl.tee._intel_quote import SGX_FIELDS, TDX_FIELDS
from tests.conftest import utc
from tests.tee.test_intel import forge, ppid

#: Every quote of the vectors folder, with a time inside its certificates' validity.
REAL = {
    "sgx_v3_quote": "2025-07-01",
    "sgx_v3_occlum_quote": "2024-06-01",
    "tdx_v4_quote": "2025-07-01",
    "tdx_v4_quote_b": "2024-06-01",
    "tdx_v5_quote_outdated": "2026-03-01",
}
#: The carriers whose collateral dcap-qvl appraises (the v5 vector's has no matching level).
WITH_COLLATERAL = {"sgx": "sgx_v3_quote", "tdx": "tdx_v4_quote"}
AT = utc("2025-07-01")

#: secfl's field name -> dcap-qvl's attribute name.
DCAP_NAMES = {
    "cpu_svn": "cpu_svn",
    "attributes": "attributes",
    "mrenclave": "mr_enclave",
    "mrsigner": "mr_signer",
    "report_data": "report_data",
    "tee_tcb_svn": "tee_tcb_svn",
    "mrseam": "mr_seam",
    "mrsignerseam": "mr_signer_seam",
    "seam_attributes": "seam_attributes",
    "td_attributes": "td_attributes",
    "xfam": "xfam",
    "mrtd": "mr_td",
    "mrconfigid": "mr_config_id",
    "mrowner": "mr_owner",
    "mrownerconfig": "mr_owner_config",
    "rtmr0": "rt_mr0",
    "rtmr1": "rt_mr1",
    "rtmr2": "rt_mr2",
    "rtmr3": "rt_mr3",
    "tee_tcb_svn2": "tee_tcb_svn2",
    "mrservicetd": "mr_service_td",
}
SGX_ISV = ("isv_prod_id", "isv_svn")  # not exposed by dcap_qvl.parse_quote
TDX_CLAIMS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "mrowner")
TDX_CLAIMS += ("mrownerconfig", "mrseam")


@pytest.fixture(scope="module")
def intel_dir(vectors: Path) -> Path:
    return vectors / "intel"


@pytest.fixture(scope="module")
def real(intel_dir: Path) -> dict[str, bytes]:
    return {name: (intel_dir / f"{name}.bin").read_bytes() for name in REAL}


@pytest.fixture(scope="module")
def collateral(intel_dir: Path) -> dict[str, dict[str, str]]:
    return {
        kind: json.loads((intel_dir / f"{name}.collateral.json").read_text())
        for kind, name in WITH_COLLATERAL.items()
    }


# --- building quotes ----------------------------------------------------------------


def pattern(label: str, size: int) -> bytes:
    """``size`` pseudo-random bytes: no two fields of a body share their content."""
    return hashlib.shake_256(label.encode()).digest(size)


def rebuild(raw: bytes, *, version: int | None = None, body: bytes | None = None) -> bytes:
    """``raw`` as a quote of ``version`` (3, 4 or 5) around ``body``, same signature data.

    The signatures no longer verify (``forge`` re-signs); the layout is Intel's.
    """
    q = parse_quote(raw)
    version = version or q.version
    body = q.body if body is None else body
    head = struct.pack("<H", version) + q.signed[2:48]
    if version == 5:
        head += struct.pack("<HI", {384: 1, 584: 2, 648: 3}[len(body)], len(body))
    inner = q.qe_report + q.qe_report_signature
    inner += struct.pack("<H", len(q.qe_auth_data)) + q.qe_auth_data
    inner += struct.pack("<HI", 5, len(q.pck_chain_pem)) + q.pck_chain_pem
    sig = q.signature + q.attestation_key
    sig += inner if version == 3 else struct.pack("<HI", 6, len(inner)) + inner
    return head + body + struct.pack("<I", len(sig)) + sig


def with_debug(body: bytes, kind: str, debug: bool) -> bytes:
    """``body`` with the DEBUG bit (SGX ATTRIBUTES bit 1, TDX TDATTRIBUTES bit 0) set or not."""
    at, bit = (48, 0x02) if kind == "sgx" else (120, 0x01)
    out = bytearray(body)
    out[at] = out[at] | bit if debug else out[at] & ~bit
    return bytes(out)


def patterned(real: dict[str, bytes], case: str, debug: bool) -> bytes:
    """A quote of layout ``case`` whose whole body is a pattern (DEBUG as given)."""
    kind, version, size = CASES[case]
    carrier = real["sgx_v3_quote" if kind == "sgx" else "tdx_v4_quote"]
    body = with_debug(pattern(f"{case}/{debug}", size), kind, debug)
    return rebuild(carrier, version=version, body=body)


#: name -> (kind, quote version, body size)
CASES = {
    "sgx_v3": ("sgx", 3, 384),
    "sgx_v5_type1": ("sgx", 5, 384),
    "tdx_v4": ("tdx", 4, 584),
    "tdx_v5_type2_td10": ("tdx", 5, 584),
    "tdx_v5_type3_td15": ("tdx", 5, 648),
}


# --- the independent reading ----------------------------------------------------------


@dataclass(frozen=True)
class DcapView:
    """What dcap-qvl reads in a quote: header, body fields, FMSPC and CA."""

    header: dict[str, object]
    fields: dict[str, bytes]
    fmspc: str
    ca: str


def dcap_view(raw: bytes) -> DcapView:
    q = dcap_qvl.parse_quote(raw)
    h = q.header
    header = {
        "version": h.version,
        "att_key_type": h.attestation_key_type,
        "tee_type": h.tee_type,
        "qe_svn": h.qe_svn,
        "pce_svn": h.pce_svn,
        "qe_vendor_id": bytes(h.qe_vendor_id),
        "user_data": bytes(h.user_data),
    }
    report = q.report
    fields = {
        ours: bytes(getattr(report, theirs))
        for ours, theirs in DCAP_NAMES.items()
        if hasattr(report, theirs)
    }
    return DcapView(header, fields, str(q.fmspc()).upper(), str(q.ca()))


def forged_report(raw: bytes, coll: dict[str, str]) -> tuple[Any, dict[str, Any] | str]:
    """``raw`` re-signed by a test PKI; dcap-qvl's full verification of it under that
    PKI's root: its report as JSON, or its refusal as a string."""
    f = forge(raw, coll)
    root = x509.load_pem_x509_certificates(f.collateral["tcb_info_issuer_chain"].encode())[-1]
    try:
        verified = dcap_qvl.verify_with_root_ca(
            f.quote,
            dcap_qvl.QuoteCollateralV3.from_json(json.dumps(f.collateral)),
            root.public_bytes(serialization.Encoding.DER),
            int(AT.timestamp()),
        )
    except ValueError as exc:
        return f, str(exc)
    return f, json.loads(verified.to_json())


def dcap_sgx_isv(real: dict[str, bytes], coll: dict[str, str], body: bytes) -> dict[str, int]:
    """isv_prod_id and isv_svn of an SGX ``body`` as dcap-qvl reads them.

    dcap-qvl exposes them only in a verified report, and verifies only non-debug
    v3 SGX quotes: the body goes, DEBUG cleared, into a re-signed v3 carrier.
    """
    carrier = rebuild(real["sgx_v3_quote"], version=3, body=with_debug(body, "sgx", False))
    _, report = forged_report(carrier, coll)
    assert isinstance(report, dict), report
    enclave = report["report"]["SgxEnclave"]
    assert bytes.fromhex(enclave["mr_enclave"]) == body[64:96]  # the same body, really
    return {name: enclave[name] for name in SGX_ISV}


def expected_claims(view: DcapView, isv: dict[str, int] | None) -> dict[str, object]:
    """The claims secfl must report, derived from dcap-qvl's reading alone."""
    f = view.fields
    if "mrenclave" in f:
        assert isv is not None
        measurements: dict[str, object] = {
            "mrenclave": f["mrenclave"].hex(),
            "mrsigner": f["mrsigner"].hex(),
            **isv,
        }
        debug = bool(f["attributes"][0] & 0x02)
    else:
        names = TDX_CLAIMS + (("mrservicetd",) if "mrservicetd" in f else ())
        measurements = {name: f[name].hex() for name in names}
        debug = bool(f["td_attributes"][0] & 0x01)
    return {"measurements": measurements, "report_data": f["report_data"].hex(), "debug": debug}


def claims_of(quote: Quote) -> dict[str, object]:
    return {
        "measurements": quote.measurements(),
        "report_data": quote.report_data.hex(),
        "debug": quote.debug,
    }


def assert_same_reading(raw: bytes, view: DcapView) -> Quote:
    """secfl's parser reads every header and body field as dcap-qvl does."""
    q = parse_quote(raw)
    ours_header = {name: getattr(q, name) for name in view.header}
    assert ours_header == view.header
    table = SGX_FIELDS if q.kind == "sgx" else TDX_FIELDS
    names = set(table) - set(SGX_ISV) - _absent(q)
    assert set(view.fields) == names  # dcap-qvl reads each of them, and no other
    assert {name: q.field(name) for name in names} == view.fields
    return q


def _absent(q: Quote) -> set[str]:
    """Fields a TDX 1.0 body does not have."""
    return {"tee_tcb_svn2", "mrservicetd"} if q.kind == "tdx" and q.body_type != 3 else set()


# --- the real vectors ---------------------------------------------------------------


def pck_sha256(raw: bytes) -> str:
    """SHA-256 of the quote's PCK leaf certificate (DER), read with cryptography alone."""
    text = raw[raw.index(b"-----BEGIN CERTIFICATE-----") :].rstrip(b"\0")
    leaf = x509.load_pem_x509_certificates(text)[0]
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_every_intel_vector_is_cross_checked(intel_dir: Path) -> None:
    """A quote added to the folder must be added here, with its verification time."""
    assert {p.stem for p in intel_dir.glob("*.bin")} == set(REAL)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_quote_claims_match_dcap_qvl(
    real: dict[str, bytes], collateral: dict[str, dict[str, str]], name: str
) -> None:
    raw = real[name]
    view = dcap_view(raw)
    q = assert_same_reading(raw, view)
    isv = dcap_sgx_isv(real, collateral["sgx"], q.body) if q.kind == "sgx" else None
    expected = expected_claims(view, isv)
    assert claims_of(q) == expected

    claims = verify_quote(raw, at=utc(REAL[name]))  # the whole verifier, real signatures
    assert claims.kind == q.kind == ("sgx" if view.header["tee_type"] == 0 else "tdx")
    assert claims.quote_version == view.header["version"]
    assert claims.measurements == expected["measurements"]
    assert (claims.report_data, claims.debug) == (expected["report_data"], expected["debug"])
    assert claims.platform == {
        "fmspc": view.fmspc, "ca": view.ca, "ppid": ppid(raw), "pck_sha256": pck_sha256(raw)
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(WITH_COLLATERAL.values()))
def test_real_quote_appraisal_matches_dcap_qvl(intel_dir: Path, name: str) -> None:
    raw = (intel_dir / f"{name}.bin").read_bytes()
    text = (intel_dir / f"{name}.collateral.json").read_text()
    at = utc(REAL[name])
    theirs = dcap_qvl.verify(raw, dcap_qvl.QuoteCollateralV3.from_json(text), int(at.timestamp()))
    claims = verify_quote(raw, at=at, collateral=text)
    assert (claims.tcb_status, claims.advisory_ids) == (theirs.status, theirs.advisory_ids)
    report = json.loads(theirs.to_json())["report"]
    body = report.get("SgxEnclave") or report.get("TD10") or report["TD15"]["base"]
    for ours, theirs_name in DCAP_NAMES.items():
        if ours in claims.measurements:
            assert claims.measurements[ours] == body[theirs_name], ours
    for ours in SGX_ISV:
        if ours in claims.measurements:
            assert claims.measurements[ours] == body[ours], ours


# --- patterned bodies: every byte of every field ---------------------------------------


@pytest.mark.parametrize("debug", [False, True], ids=["nodebug", "debug"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_patterned_quote_fields_match_dcap_qvl(
    real: dict[str, bytes], collateral: dict[str, dict[str, str]], case: str, debug: bool
) -> None:
    raw = patterned(real, case, debug)
    view = dcap_view(raw)
    q = assert_same_reading(raw, view)
    kind, version, size = CASES[case]
    assert (q.kind, q.version, len(q.body)) == (kind, version, size)
    isv = dcap_sgx_isv(real, collateral["sgx"], q.body) if kind == "sgx" else None
    expected = expected_claims(view, isv)
    assert claims_of(q) == expected
    assert expected["debug"] is debug
    values = [v for v in expected["measurements"].values() if isinstance(v, str)]  # type: ignore[union-attr]
    assert len(set(values)) == len(values) and not any(set(v) == {"0"} for v in values)


#: TDX body bytes dcap-qvl's appraisal needs as the carrier's (TCB level, TDX module
#: identity, TD attributes): tee_tcb_svn, mrsignerseam, seam_attributes,
#: td_attributes, and tee_tcb_svn2 (equal to tee_tcb_svn).
_TDX_KEPT = ((0, 16), (64, 128))


def _appraisable(real: dict[str, bytes], case: str, debug: bool) -> bytes:
    """A patterned quote dcap-qvl can appraise under the carrier's collateral."""
    kind, version, size = CASES[case]
    carrier = real[WITH_COLLATERAL[kind]]
    body = bytearray(pattern(f"appraised/{case}", size))
    if kind == "tdx":
        source = parse_quote(carrier).body
        for start, end in _TDX_KEPT:
            body[start:end] = source[start:end]
        if size == 648:
            body[584:600] = source[0:16]
            body[600:648] = bytes(48)  # dcap-qvl refuses a service TD
    return rebuild(carrier, version=version, body=with_debug(bytes(body), kind, debug))


APPRAISABLE = ["sgx_v3", "tdx_v4", "tdx_v5_type2_td10", "tdx_v5_type3_td15"]


@pytest.mark.parametrize("case", APPRAISABLE)
def test_whole_verifiers_agree_claim_by_claim(
    real: dict[str, bytes],
    collateral: dict[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    """verify_quote's Claims against dcap-qvl's verified report, collateral and all."""
    kind = CASES[case][0]
    f, report = forged_report(_appraisable(real, case, False), collateral[kind])
    assert isinstance(report, dict), report
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    claims = verify_quote(f.quote, at=AT, collateral=f.collateral)
    view = dcap_view(f.quote)
    body = report["report"]
    body = body.get("SgxEnclave") or body.get("TD10") or body["TD15"]
    if "base" in body:
        body = {**body["base"], **body}
    isv = {name: body[name] for name in SGX_ISV} if kind == "sgx" else None
    expected = expected_claims(view, isv)
    assert claims.measurements == expected["measurements"]
    assert claims.measurements == {
        name: (body[DCAP_NAMES[name]] if name in DCAP_NAMES else body[name])
        for name in claims.measurements
    }
    assert claims.report_data == expected["report_data"] == body["report_data"]
    assert claims.debug is False
    assert (claims.tcb_status, claims.advisory_ids) == (report["status"], report["advisory_ids"])
    assert claims.quote_version == CASES[case][1]
    assert claims.platform["fmspc"] == view.fmspc


@pytest.mark.parametrize("case", APPRAISABLE)
def test_debug_agrees_with_dcap_qvl(
    real: dict[str, bytes],
    collateral: dict[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    """The DEBUG bit secfl reads is the one dcap-qvl refuses a quote for."""
    kind = CASES[case][0]
    f, report = forged_report(_appraisable(real, case, True), collateral[kind])
    assert report == "Verification failed: Debug mode is enabled"
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    claims = verify_quote(f.quote, at=AT, collateral=f.collateral)
    assert (claims.debug, claims.tcb_status) == (True, "unknown")
