"""Intel DCAP quotes: real vectors accepted, every modification refused.

Real quotes and collateral come from ``../shared/testvectors/intel``. Cases the
vectors cannot show (a debug TEE with collateral, a revoked PCK certificate, a
stale CRL) use a forged Intel-shaped PKI built from a real quote, accepted only
while a test swaps the pinned root for the forged one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfl._internal import x509util
from secfl.errors import VerificationError
from secfl.tee import _intel as intel
from secfl.tee import _roots as roots
from secfl.tee._intel import IntelCollateral, parse_quote, verify_quote
from secfl.tee._verify import verify
from tests.conftest import utc


@dataclass(frozen=True)
class Vector:
    name: str
    at: str
    kind: str
    version: int
    debug: bool
    collateral: bool
    measurement: tuple[str, str]
    report_data: bytes
    fmspc: str
    ca: str


VECTORS = [
    Vector("sgx_v3_quote", "2025-07-01", "sgx", 3, False, True,
           ("mrenclave", "33d8736d"), b"Hello, world!", "00A067110000", "processor"),
    Vector("tdx_v4_quote", "2025-07-01", "tdx", 4, False, True,
           ("mrtd", "91eb2b44"), b"", "B0C06F000000", "platform"),
    Vector("tdx_v5_quote_outdated", "2026-03-01", "tdx", 5, False, True,
           ("mrtd", ""), b"", "90C06F000000", "platform"),
    Vector("sgx_v3_occlum_quote", "2024-06-01", "sgx", 3, True, False,
           ("mrenclave", "8f173e46"), b"test", "00606A000000", "platform"),
    Vector("tdx_v4_quote_b", "2024-06-01", "tdx", 4, True, False,
           ("mrtd", ""), b"", "50806F000000", "platform"),
]  # fmt: skip
IDS = [v.name for v in VECTORS]
SUFFIX = {"sgx_v3_quote": "2fbb", "tdx_v4_quote": "18b7", "sgx_v3_occlum_quote": "1c68"}
CHECKS = (
    "malformed quote at offset ",
    "chain: ",
    "expired: ",
    "signature: ",
    "qe identity: ",
    "key binding: ",
)


@pytest.fixture(scope="module")
def intel_dir(vectors: Path) -> Path:
    return vectors / "intel"


#: The PPID in the PCK leaf's Intel SGX extension: OID 1.2.840.113741.1.13.1.1, then
#: an OCTET STRING of 16 bytes (Intel's PCK certificate profile).
PPID_TLV = bytes.fromhex("060a2a864886f84d010d0101") + b"\x04\x10"


def ppid(raw: bytes) -> str:
    """The PCK leaf's PPID, read from the DER with cryptography and a byte search alone."""
    text = raw[raw.index(b"-----BEGIN CERTIFICATE-----") :].rstrip(b"\0")
    der = x509.load_pem_x509_certificates(text)[0].public_bytes(serialization.Encoding.DER)
    at = der.index(PPID_TLV) + len(PPID_TLV)
    assert der.count(PPID_TLV) == 1
    return der[at : at + 16].hex()


def pck_sha256(raw: bytes) -> str:
    """SHA-256 of the quote's PCK leaf certificate (DER): the machine's ID."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    leaf = x509.load_pem_x509_certificates(parse_quote(raw).pck_chain_pem.rstrip(b"\0"))[0]
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def load(intel_dir: Path, v: Vector) -> bytes:
    return (intel_dir / f"{v.name}.bin").read_bytes()


def collateral_text(intel_dir: Path, v: Vector) -> str:
    return (intel_dir / f"{v.name}.collateral.json").read_text()


def refused(quote: bytes, at: datetime, collateral: object | None = None) -> str:
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, at=at, collateral=collateral)
    return str(info.value)


# --- the real vectors -------------------------------------------------------------------


def test_root_pin_is_the_vector_root(intel_dir: Path) -> None:
    root = x509.load_pem_x509_certificate((intel_dir / "intel_sgx_root_ca.pem").read_bytes())
    assert x509util.fingerprint(root) == roots.INTEL_SGX_ROOT_CA_SHA256


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_parse_quote(intel_dir: Path, v: Vector) -> None:
    quote = parse_quote(load(intel_dir, v))
    assert (quote.version, quote.kind, quote.att_key_type) == (v.version, v.kind, 2)
    assert len(quote.body) == {"sgx": 384, "tdx": 584}[v.kind] + 64 * (v.version == 5)
    assert quote.body_type == {"sgx": 1, "tdx": 2}[v.kind] + (v.version == 5)
    assert quote.pck_chain_pem.count(b"-----BEGIN CERTIFICATE-----") == 3
    assert len(quote.qe_auth_data) == 32
    assert quote.debug is v.debug


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_signature_chain_only(intel_dir: Path, v: Vector) -> None:
    raw = load(intel_dir, v)
    claims = verify_quote(raw, at=utc(v.at), collateral=None)
    assert claims.kind == v.kind
    assert claims.quote_version == v.version
    assert claims.tcb_status == "unknown"
    assert claims.advisory_ids == []
    assert claims.debug is v.debug
    assert claims.simulated is False
    assert claims.platform == {
        "fmspc": v.fmspc, "ca": v.ca, "ppid": ppid(raw), "pck_sha256": pck_sha256(raw)
    }  # fmt: skip
    key, prefix = v.measurement
    assert str(claims.measurements[key]).startswith(prefix)
    assert str(claims.measurements[key]).endswith(SUFFIX.get(v.name, ""))
    assert claims.report_data_bytes.startswith(v.report_data)
    if v.kind == "sgx":
        assert set(claims.measurements) == {"mrenclave", "mrsigner", "isv_prod_id", "isv_svn"}
        assert isinstance(claims.measurements["isv_svn"], int)
    else:
        expected = {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "mrowner"}
        expected |= {"mrownerconfig", "mrseam"} | ({"mrservicetd"} if v.version == 5 else set())
        assert set(claims.measurements) == expected
        assert all(len(str(claims.measurements[k])) == 96 for k in expected)


@pytest.mark.parametrize(
    ("name", "status", "advisories"),
    [
        ("sgx_v3_quote", "ConfigurationAndSWHardeningNeeded", ["INTEL-SA-00289", "INTEL-SA-00615"]),
        ("tdx_v4_quote", "UpToDate", []),
    ],
)
def test_full_appraisal(intel_dir: Path, name: str, status: str, advisories: list[str]) -> None:
    v = next(v for v in VECTORS if v.name == name)
    quote, text = load(intel_dir, v), collateral_text(intel_dir, v)
    for form in (text, text.encode(), json.loads(text), IntelCollateral.from_json(text)):
        claims = verify_quote(quote, at=utc(v.at), collateral=form)
        assert (claims.tcb_status, claims.advisory_ids) == (status, advisories)
    path = intel_dir / f"{v.name}.collateral.json"
    claims = verify(quote, at=utc(v.at), collateral=IntelCollateral.from_file(path))
    assert claims.tcb_status == status
    assert claims.platform["fmspc"] == v.fmspc
    key, prefix = v.measurement
    assert str(claims.measurements[key]).startswith(prefix)


def test_outdated_tdx_v5_has_no_matching_tcb_level(intel_dir: Path) -> None:
    v = VECTORS[2]
    message = refused(load(intel_dir, v), utc(v.at), collateral_text(intel_dir, v))
    assert message.startswith("tcb: ")
    assert "No matching TCB level" in message


def test_collateral_of_another_platform_is_refused(intel_dir: Path) -> None:
    sgx, tdx = VECTORS[0], VECTORS[1]
    assert refused(load(intel_dir, tdx), utc(tdx.at), collateral_text(intel_dir, sgx))
    message = refused(load(intel_dir, sgx), utc(sgx.at), collateral_text(intel_dir, tdx))
    assert message.startswith("collateral: ")


def test_stale_collateral_is_refused(intel_dir: Path) -> None:
    v = VECTORS[0]  # TCB info and PCK CRL: issued 2025-06-19, next update 2025-07-19
    message = refused(load(intel_dir, v), utc("2025-08-01"), collateral_text(intel_dir, v))
    assert message.startswith("expired: ") and "due for update" in message
    message = refused(load(intel_dir, v), utc("2025-06-01"), collateral_text(intel_dir, v))
    assert message.startswith("expired: ")


@pytest.mark.parametrize("v", [v for v in VECTORS if v.debug], ids=lambda v: v.name)
def test_debug_vectors_are_refused_unless_allowed(intel_dir: Path, v: Vector) -> None:
    quote = load(intel_dir, v)
    with pytest.raises(VerificationError, match=r"^debug: "):
        verify(quote, at=utc(v.at))
    claims = verify(quote, at=utc(v.at), allow_debug=True)
    assert claims.debug is True
    assert claims.kind == v.kind


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_time_outside_the_chain_validity_is_refused(intel_dir: Path, v: Vector) -> None:
    quote = load(intel_dir, v)
    assert refused(quote, utc("2033-06-01")).startswith("expired: ")  # PCK CA ends 2033-05-21
    message = refused(quote, utc("2019-01-01"))  # before the leaf was issued
    assert message.startswith("expired: ") and "not valid before" in message


def test_naive_time_is_utc(intel_dir: Path) -> None:
    v = VECTORS[0]
    claims = verify_quote(load(intel_dir, v), at=datetime(2025, 7, 1))
    assert claims.kind == "sgx"


# --- every byte -------------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_every_single_byte_change_is_refused(intel_dir: Path, v: Vector) -> None:
    """xor 0x01 at every offset (header, body, signature data, QE report, QE auth data,
    PCK chain, padding), xor 0x80 at every third: never accepted, always a named check."""
    quote, at = load(intel_dir, v), utc(v.at)
    accepted = []
    for mask, step in ((0x01, 1), (0x80, 3)):
        for offset in range(0, len(quote), step):
            changed = bytearray(quote)
            changed[offset] ^= mask
            try:
                verify_quote(bytes(changed), at=at)
            except VerificationError as exc:
                assert str(exc).startswith(CHECKS), str(exc)
            else:
                accepted.append((offset, mask))
    assert accepted == []


@pytest.mark.parametrize("v", [v for v in VECTORS if v.collateral][:2], ids=lambda v: v.name)
def test_byte_changes_with_collateral_are_refused(intel_dir: Path, v: Vector) -> None:
    quote, at, text = load(intel_dir, v), utc(v.at), collateral_text(intel_dir, v)
    coll = IntelCollateral.from_json(text)
    for offset in range(0, len(quote), 37):
        changed = bytearray(quote)
        changed[offset] ^= 0x01
        with pytest.raises(VerificationError):
            verify_quote(bytes(changed), at=at, collateral=coll)


def _flip_at(value: str, index: int) -> str:
    """Change one character to another of the same class (hex stays hex, base64 stays)."""
    ch = value[index]
    other = {"0": "1", "a": "b", "A": "B"}.get(ch, "0" if ch != "0" else "1")
    return value[:index] + other + value[index + 1 :]


@pytest.mark.parametrize(
    "field",
    [
        "tcb_info",
        "tcb_info_signature",
        "tcb_info_issuer_chain",
        "qe_identity",
        "qe_identity_signature",
        "qe_identity_issuer_chain",
        "pck_crl",
        "pck_crl_issuer_chain",
        "root_ca_crl",
    ],
)
def test_a_change_in_any_collateral_field_is_refused(intel_dir: Path, field: str) -> None:
    for v in VECTORS[:2]:
        quote, doc = load(intel_dir, v), json.loads(collateral_text(intel_dir, v))
        value = doc[field]
        if field.endswith("chain"):  # inside the base64 of the first certificate
            positions = [40, 200, 500]
        elif field in ("tcb_info", "qe_identity"):  # inside the values of the JSON document
            positions = [value.index('"fmspc"') + 10 if '"fmspc"' in value else 8]
            positions += [value.index('"tcbLevels"') + 30]
        else:
            positions = [0, len(value) // 2, len(value) - 1]
        for pos in positions:
            changed = dict(doc, **{field: _flip_at(value, pos)})
            assert changed[field] != value
            assert refused(quote, utc(v.at), changed)


def test_collateral_model_refuses_bad_input(tmp_path: Path, intel_dir: Path) -> None:
    doc = json.loads(collateral_text(intel_dir, VECTORS[0]))
    cases: list[object] = [
        "{not json",
        "[" * 100_000,
        b"\xff\xfe",
        "[]",
        {k: v for k, v in doc.items() if k != "pck_crl"},
        dict(doc, extra="x"),
        dict(doc, pck_crl="zz"),
        dict(doc, tcb_info=5),
        42,
    ]
    for case in cases:
        with pytest.raises(VerificationError, match=r"^collateral: "):
            intel.as_collateral(case)
    with pytest.raises(VerificationError, match=r"^collateral: cannot read"):
        IntelCollateral.from_file(tmp_path / "missing.json")
    deep = dict(doc, tcb_info="[" * 100_000)
    assert refused(_real("sgx_v3_quote"), AT, deep).startswith("collateral: ")
    path = tmp_path / "c.json"
    path.write_text(IntelCollateral.from_json(json.dumps(doc)).to_json())
    assert IntelCollateral.from_file(path).model_dump() == doc


# --- malformed input --------------------------------------------------------------------


def test_truncation_at_every_length_is_refused(intel_dir: Path) -> None:
    for v in VECTORS:
        quote, at = load(intel_dir, v), utc(v.at)
        end = len(parse_quote(quote).data)
        for length in range(len(quote)):
            if length >= end:  # inside the zero padding: still the whole quote
                assert parse_quote(quote[:length]).data == quote[:end]
                continue
            with pytest.raises(VerificationError, match=r"^malformed quote at offset \d+: "):
                verify_quote(quote[:length], at=at)


def test_trailing_zero_padding_is_tolerated_and_other_bytes_are_not(intel_dir: Path) -> None:
    v = VECTORS[0]
    quote = load(intel_dir, v)
    assert verify_quote(quote + bytes(100), at=utc(v.at)).kind == "sgx"
    message = refused(quote + bytes(10) + b"\x01", utc(v.at))
    assert message == (
        f"malformed quote at offset {len(quote) + 10}: non-zero bytes after the end of the evidence"
    )


def _rebuild(raw: bytes, *, pem: bytes | None = None, auth: bytes | None = None) -> bytes:
    """The same quote with another PCK chain (unsigned: only its own checks guard it)."""
    q = parse_quote(raw)
    pem = q.pck_chain_pem if pem is None else pem
    auth = q.qe_auth_data if auth is None else auth
    inner = q.qe_report + q.qe_report_signature + struct.pack("<H", len(auth)) + auth
    inner += struct.pack("<HI", 5, len(pem)) + pem
    sig = q.signature + q.attestation_key
    sig += inner if q.version == 3 else struct.pack("<HI", 6, len(inner)) + inner
    return q.signed + struct.pack("<I", len(sig)) + sig


@pytest.mark.parametrize("v", VECTORS[:2], ids=IDS[:2])
def test_pck_chain_must_be_canonical_pem(intel_dir: Path, v: Vector) -> None:
    raw = load(intel_dir, v)
    pem = parse_quote(raw).pck_chain_pem.rstrip(b"\x00")
    assert verify_quote(_rebuild(raw, pem=pem), at=utc(v.at)).kind == v.kind  # NUL optional
    for other in (
        pem.replace(b"\n", b"\r\n"),
        pem + b"\n",
        pem + b"\x00\x00",
        b"junk" + pem,
        pem.replace(b"-----\nMII", b"-----\n MII", 1),
    ):
        assert refused(_rebuild(raw, pem=other), utc(v.at)).startswith("chain: ")
    certs = x509.load_pem_x509_certificates(pem)
    two = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[:2])
    assert "not 3" in refused(_rebuild(raw, pem=two), utc(v.at))
    assert refused(_rebuild(raw, pem=b""), utc(v.at)).startswith("chain: ")


def test_header_fields_are_checked(intel_dir: Path) -> None:
    raw = load(intel_dir, VECTORS[1])
    cases = {
        0: (struct.pack("<H", 6), "unsupported quote version 6"),
        2: (struct.pack("<H", 3), "attestation key type 3 is not ECDSA P-256"),
        4: (struct.pack("<I", 0x80), "tee type 0x80"),
    }
    for offset, (data, reason) in cases.items():
        changed = raw[:offset] + data + raw[offset + len(data) :]
        with pytest.raises(VerificationError, match=rf"^malformed quote at offset {offset}: "):
            parse_quote(changed)
        assert reason in refused(changed, utc("2025-07-01"))
    with pytest.raises(VerificationError, match="expected bytes"):
        parse_quote("text")  # type: ignore[arg-type]


# --- hypothesis -------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AT = utc("2025-07-01")


@FUZZ
@given(st.binary(max_size=6000))
def test_random_bytes_only_raise_verification_error(data: bytes) -> None:
    with contextlib.suppress(VerificationError):
        parse_quote(data)
    with contextlib.suppress(VerificationError):
        verify_quote(data, at=AT)


@FUZZ
@given(
    version=st.sampled_from([3, 4, 5]),
    tee=st.sampled_from([0, 0x81]),
    body_type=st.integers(0, 4),
    tail=st.binary(max_size=5000),
)
def test_plausible_headers_only_raise_verification_error(
    version: int, tee: int, body_type: int, tail: bytes
) -> None:
    data = struct.pack("<HHI", version, 2, tee) + bytes(40)
    if version == 5:
        data += struct.pack("<HI", body_type, (0, 384, 584, 648, 1)[body_type])
    data += tail
    with contextlib.suppress(VerificationError):
        verify_quote(data, at=AT)


_REAL: dict[str, bytes] = {}


def _real(name: str) -> bytes:
    if name not in _REAL:
        from tests.conftest import require_vectors

        _REAL[name] = (require_vectors() / "intel" / f"{name}.bin").read_bytes()
    return _REAL[name]


@FUZZ
@given(
    name=st.sampled_from(IDS),
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255), st.sampled_from("xid")),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_real_quotes_only_raise_verification_error(
    name: str, edits: list[tuple[float, int, str]]
) -> None:
    """Random byte changes, insertions and deletions of real quotes: never accepted."""
    data = bytearray(_real(name))
    original = bytes(data)
    for where, value, op in edits:
        i = int(where * len(data))
        if op == "x":
            data[i] ^= value or 1
        elif op == "i":
            data.insert(i, value)
        else:
            del data[i]
    if bytes(data).rstrip(b"\x00") == original.rstrip(b"\x00"):
        return  # the edits cancelled out (or only touched the padding)
    with pytest.raises(VerificationError):
        verify_quote(bytes(data), at=utc(next(v.at for v in VECTORS if v.name == name)))


_COLLATERAL: dict[str, str] = {}


def _real_collateral() -> dict[str, str]:
    if not _COLLATERAL:
        from tests.conftest import require_vectors

        _COLLATERAL.update(
            json.loads((require_vectors() / "intel" / "sgx_v3_quote.collateral.json").read_text())
        )
    return _COLLATERAL


@settings(max_examples=150, deadline=None)
@given(
    field=st.sampled_from(sorted(IntelCollateral.model_fields)),
    value=st.one_of(
        st.text(max_size=300),
        st.binary(max_size=200).map(bytes.hex),
        st.sampled_from(["{}", "[]", '{"issueDate":1}', "-----BEGIN CERTIFICATE-----\n"]),
    ),
)
def test_junk_collateral_only_raises_verification_error(field: str, value: str) -> None:
    doc = dict(_real_collateral(), **{field: value})
    with pytest.raises(VerificationError):
        verify_quote(_real("sgx_v3_quote"), at=AT, collateral=doc)


# --- dcap-qvl's answers -----------------------------------------------------------------


class _Report:
    def __init__(self, status: str) -> None:
        self.status = status
        self.advisory_ids = ["INTEL-SA-1"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [("TDRelaunchAdvised", "OutOfDate"), ("OutOfDate", "OutOfDate"), ("Revoked", "Revoked")],
)
def test_dcap_statuses_map_to_claims(
    intel_dir: Path, monkeypatch: pytest.MonkeyPatch, status: str, expected: str
) -> None:
    import dcap_qvl

    monkeypatch.setattr(dcap_qvl, "verify_with_root_ca", lambda *a: _Report(status))
    v = VECTORS[0]
    claims = verify_quote(
        load(intel_dir, v), at=utc(v.at), collateral=collateral_text(intel_dir, v)
    )
    assert (claims.tcb_status, claims.advisory_ids) == (expected, ["INTEL-SA-1"])


class _Panic(BaseException):
    """Like pyo3's PanicException: not an Exception."""


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (lambda *a: _Report("Bogus"), "tcb: unrecognised TCB status 'Bogus'"),
        (ValueError("Verification failed: X\n\nCaused by:\n    Y"), "collateral: X; Y"),
        (ValueError("Verification failed: SEPT_VE_DISABLE is not enabled"), "attributes: "),
        (_Panic("boom"), "collateral: boom"),
    ],
)
def test_dcap_failures_become_verification_errors(
    intel_dir: Path, monkeypatch: pytest.MonkeyPatch, outcome: Any, expected: str
) -> None:
    import dcap_qvl

    def fake(*args: object) -> object:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome(*args)

    monkeypatch.setattr(dcap_qvl, "verify_with_root_ca", fake)
    v = VECTORS[0]
    message = refused(load(intel_dir, v), utc(v.at), collateral_text(intel_dir, v))
    assert message.startswith(expected)


# --- a forged Intel-shaped PKI (pinned only inside these tests) --------------------------

STATUS = {"sgx_v3_quote": "ConfigurationAndSWHardeningNeeded", "tdx_v4_quote": "UpToDate"}
SGX_EXTENSION = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
FORGED_START = utc("2020-01-01")
FORGED_END = utc("2049-01-01")


def _raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Corporation"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    cn: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool, serial: int, ext: bytes = b""
) -> x509.Certificate:
    usage = dict.fromkeys(
        ["content_commitment", "key_encipherment", "data_encipherment", "key_agreement"], False
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(FORGED_START)
        .not_valid_after(FORGED_END)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if ext:
        builder = builder.add_extension(x509.UnrecognizedExtension(SGX_EXTENSION, ext), False)
    return builder.sign(issuer_key, hashes.SHA256())


def _crl(issuer: str, key: Any, revoked: list[int], next_update: datetime) -> str:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer))
        .last_update(FORGED_START)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(1), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
    )
    for serial in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial)
        builder = builder.add_revoked_certificate(entry.revocation_date(FORGED_START).build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER).hex()


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class Forged:
    quote: bytes
    collateral: dict[str, str]
    root_fingerprint: str
    tcb_key: ec.EllipticCurvePrivateKey

    def signed(self, **documents: str) -> dict[str, str]:
        """The collateral with these ``tcb_info`` / ``qe_identity`` texts, signed by the
        same forged TCB signing key (another copy the same PKI issued)."""
        out = dict(self.collateral, **documents)
        for name, text in documents.items():
            out[f"{name}_signature"] = _raw_sign(self.tcb_key, text.encode()).hex()
        return out


def forge(
    raw: bytes,
    collateral: dict[str, str],
    *,
    debug: bool = False,
    revoke_pck: bool = False,
    crl_next_update: datetime = FORGED_END,
    other_crl_ca: bool = False,
    qe_patch: tuple[int, bytes] | None = None,
    vendor_id: bytes | None = None,
    td_attributes: int | None = None,
    body_patch: tuple[int, bytes] | None = None,
) -> Forged:
    """A quote like ``raw`` (same body, QE report, SGX extension, TCB info, QE identity),
    re-signed by a fresh Intel-shaped PKI."""
    q = parse_quote(raw)
    real = x509.load_pem_x509_certificates(q.pck_chain_pem.rstrip(b"\0"))
    sgx_ext = real[0].extensions.get_extension_for_oid(SGX_EXTENSION).value.value  # type: ignore[attr-defined]
    ca_cn = x509util.common_name(real[1])
    k_root, k_ca, k_pck, k_tcb, k_att = (ec.generate_private_key(ec.SECP256R1()) for _ in range(5))
    root = _cert("Intel SGX Root CA", k_root, "Intel SGX Root CA", k_root, ca=True, serial=1)
    pck_ca = _cert(ca_cn, k_ca, "Intel SGX Root CA", k_root, ca=True, serial=2)
    pck = _cert("Intel SGX PCK Certificate", k_pck, ca_cn, k_ca, ca=False, serial=3, ext=sgx_ext)
    tcb = _cert("Intel SGX TCB Signing", k_tcb, "Intel SGX Root CA", k_root, ca=False, serial=4)
    crl_ca, k_crl = pck_ca, k_ca
    if other_crl_ca:  # another PCK CA, under the same root, with the same name
        k_crl = ec.generate_private_key(ec.SECP256R1())
        crl_ca = _cert(ca_cn, k_crl, "Intel SGX Root CA", k_root, ca=True, serial=5)

    numbers = k_att.public_key().public_numbers()
    att_key = numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")
    auth = bytes(range(32))
    qe_report = q.qe_report[:320] + hashlib.sha256(att_key + auth).digest() + bytes(32)
    if qe_patch is not None:  # xor these bytes in at this offset
        at, mask = qe_patch
        patched = bytes(a ^ b for a, b in zip(qe_report[at:], mask, strict=False))
        qe_report = qe_report[:at] + patched + qe_report[at + len(mask) :]
    pem = _pem(pck, pck_ca, root) + b"\0"
    inner = qe_report + _raw_sign(k_pck, qe_report) + struct.pack("<H", len(auth)) + auth
    inner += struct.pack("<HI", 5, len(pem)) + pem
    body = bytearray(q.body)
    if td_attributes is not None:  # TDATTRIBUTES, little-endian at 120 of a TD report
        body[120:128] = td_attributes.to_bytes(8, "little")
    if body_patch is not None:  # these bytes at this offset of the body
        at, data = body_patch
        body[at : at + len(data)] = data
    if debug:
        body[48 if q.kind == "sgx" else 120] |= 0x02 if q.kind == "sgx" else 0x01
    header = q.signed[: len(q.signed) - len(q.body)]
    if vendor_id is not None:
        header = header[:12] + vendor_id + header[28:]
    signed = header + bytes(body)
    sig = _raw_sign(k_att, signed) + att_key
    sig += inner if q.version == 3 else struct.pack("<HI", 6, len(inner)) + inner
    quote = signed + struct.pack("<I", len(sig)) + sig

    tcb_info, qe_identity = collateral["tcb_info"], collateral["qe_identity"]
    forged = {
        "tcb_info": tcb_info,
        "tcb_info_signature": _raw_sign(k_tcb, tcb_info.encode()).hex(),
        "tcb_info_issuer_chain": _pem(tcb, root).decode(),
        "qe_identity": qe_identity,
        "qe_identity_signature": _raw_sign(k_tcb, qe_identity.encode()).hex(),
        "qe_identity_issuer_chain": _pem(tcb, root).decode(),
        "pck_crl": _crl(ca_cn, k_crl, [3] if revoke_pck else [], crl_next_update),
        "pck_crl_issuer_chain": _pem(crl_ca, root).decode(),
        "root_ca_crl": _crl("Intel SGX Root CA", k_root, [], FORGED_END),
    }
    return Forged(quote, forged, x509util.fingerprint(root), k_tcb)


@pytest.fixture(scope="module")
def sources(intel_dir: Path) -> dict[str, tuple[bytes, dict[str, str]]]:
    return {
        v.name: (load(intel_dir, v), json.loads(collateral_text(intel_dir, v)))
        for v in VECTORS
        if v.collateral
    }


@pytest.mark.parametrize("name", ["sgx_v3_quote", "tdx_v4_quote"])
def test_forged_pki_is_refused_unless_pinned(
    sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    f = forge(*sources[name])
    at = utc("2025-07-01")
    assert refused(f.quote, at).startswith("chain: root 'Intel SGX Root CA' of PCK chain")
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    assert verify_quote(f.quote, at=at).tcb_status == "unknown"
    real = next(v for v in VECTORS if v.name == name)
    claims = verify_quote(f.quote, at=at, collateral=f.collateral)
    assert claims.tcb_status == STATUS[name]  # the same TCB as the real quote
    assert claims.platform["fmspc"] == real.fmspc
    # the real collateral's chains end in the real root, which is no longer pinned
    assert refused(f.quote, at, sources[name][1]).startswith("chain: ")


@pytest.mark.parametrize("name", ["sgx_v3_quote", "tdx_v4_quote"])
def test_debug_tee_with_collateral(
    sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """dcap-qvl refuses to rate a debug TEE: its TCB status is unknown, debug decides."""
    f = forge(*sources[name], debug=True)
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    at = utc("2025-07-01")
    claims = verify_quote(f.quote, at=at, collateral=f.collateral)
    assert (claims.debug, claims.tcb_status) == (True, "unknown")
    with pytest.raises(VerificationError, match=r"^debug: "):
        verify(f.quote, at=at, collateral=f.collateral)
    assert verify(f.quote, at=at, collateral=f.collateral, allow_debug=True).debug
    # the collateral is still checked in full for a debug TEE
    stale = refused(f.quote, utc("2025-08-01"), f.collateral)
    assert stale.startswith("expired: ")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda a: a & ~(1 << 28), "SEPT_VE_DISABLE is off"),
        (lambda a: a | (1 << 29), "the TD is migratable"),
        (lambda a: a | 0x02, "reserved bits are set"),
        (lambda a: a | (1 << 40), "reserved bits are set"),
        (lambda a: a | (1 << 17), "SERVTD_EXT is enabled"),
    ],
    ids=["sept-ve-enabled", "migratable", "reserved-tud", "reserved-other", "servtd-ext"],
)
def test_a_td_the_host_can_inspect_is_refused_without_collateral_too(
    sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch, change: Any, why: str
) -> None:
    """Found by a review: only dcap-qvl checked these bits, so only with collateral,
    and whether the SPM's PCCS answers is the host's to decide (`allow_unknown_tcb`
    then let the quote through unappraised)."""
    raw, collateral = sources["tdx_v4_quote"]
    attributes = int.from_bytes(parse_quote(raw).field("td_attributes"), "little")
    at = utc("2025-07-01")
    honest = forge(raw, collateral, td_attributes=attributes)
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", honest.root_fingerprint)
    assert verify_quote(honest.quote, at=at).kind == "tdx"  # the vector's own bits pass
    f = forge(raw, collateral, td_attributes=change(attributes))
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    for supplied in (None, f.collateral):
        assert refused(f.quote, at, supplied).startswith(f"attributes: {why}")


@pytest.mark.parametrize("name", ["tdx_v4_quote", "tdx_v5_quote_outdated"])
@pytest.mark.parametrize(
    ("patch", "why"),
    [
        ((64, b"\x11" * 48), "the TDX module is not Intel's (MRSIGNERSEAM 1111"),
        ((111, b"\x01"), "the TDX module is not Intel's (MRSIGNERSEAM 0000"),
        ((112, b"\x01"), "a debug TDX module (SEAM_ATTRIBUTES 0000000000000001 "),
        ((119, b"\x80"), "reserved bits are set (SEAM_ATTRIBUTES 8000000000000000 "),
    ],
    ids=["mrsignerseam", "mrsignerseam-last-byte", "debug-module", "reserved"],
)
def test_a_tdx_module_not_intels_is_refused_without_collateral_too(
    intel_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str, patch: Any, why: str
) -> None:
    """Found by a review: only dcap-qvl checked MRSIGNERSEAM and SEAM_ATTRIBUTES
    (against the TCB info's TDX module identity), so only with collateral, and whether
    the SPM's PCCS answers is the host's to decide. The real quote, re-signed with
    these fields changed (TDX 1.0 and 1.5 bodies), stands in for a genuinely signed
    quote from a TD on such a module."""
    v = next(v for v in VECTORS if v.name == name)
    raw = load(intel_dir, v)
    q = parse_quote(raw)
    assert not any(q.field("mrsignerseam")) and not any(q.field("seam_attributes"))
    assert verify_quote(raw, at=utc(v.at)).kind == "tdx"  # Intel's module passes
    collateral = json.loads(collateral_text(intel_dir, v))
    f = forge(raw, collateral, body_patch=patch)
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    at = utc(v.at)
    for supplied in (None, f.collateral):
        message = refused(f.quote, at, supplied)
        assert message.startswith(f"tdx module: {why}"), message
        assert "\n" not in message
    with pytest.raises(VerificationError, match=r"^tdx module: "):
        verify(f.quote, at=at, allow_debug=True)  # a debug module is no debug TD


def test_revoked_pck_certificate(sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    f = forge(*sources["tdx_v4_quote"], revoke_pck=True)
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    message = refused(f.quote, utc("2025-07-01"), f.collateral)
    assert message.startswith("revoked: PCK certificate 'Intel SGX PCK Certificate'")


def test_stale_crl(sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    f = forge(*sources["tdx_v4_quote"], crl_next_update=utc("2025-06-01"))
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    message = refused(f.quote, utc("2025-07-01"), f.collateral)
    assert message.startswith("expired: the PCK CRL was due for update")


def test_crl_issuer_chain_must_be_the_quotes_pck_ca(
    sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    f = forge(*sources["tdx_v4_quote"], other_crl_ca=True)
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    message = refused(f.quote, utc("2025-07-01"), f.collateral)
    assert message.startswith("collateral: the PCK CRL issuer chain is for")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"qe_patch": (128, b"\xff" * 32)}, "qe identity: the quoting enclave's MRSIGNER "),
        ({"qe_patch": (256, b"\x06")}, "qe identity: the quoting enclave's ISVPRODID "),
        ({"qe_patch": (48, b"\x02")}, "qe identity: the quoting enclave is a debug enclave"),
        ({"vendor_id": bytes(16)}, "qe identity: QE vendor ID 0000"),
        ({"qe_patch": (383, b"\x01")}, "key binding: "),
        ({"qe_patch": (320, b"\x01")}, "key binding: "),
    ],
)
def test_the_qe_must_be_intels_and_bind_the_key(
    sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch, change: Any, message: str
) -> None:
    """Checks behind the QE report signature: only a (forged) PCK key can reach them."""
    for name in ("sgx_v3_quote", "tdx_v4_quote"):
        f = forge(*sources[name], **change)
        monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
        assert refused(f.quote, utc("2025-07-01")).startswith(message)


def qe_identity_above(text: str, by: int, evaluation: int) -> str:
    """A QE identity like ``text`` of TCB evaluation ``evaluation`` whose every level
    asks an ISVSVN ``by`` higher: Intel's after a TCB recovery the QE missed."""
    doc = json.loads(text)
    doc["tcbEvaluationDataNumber"] = evaluation
    for level in doc["tcbLevels"]:
        level["tcb"]["isvsvn"] += by
    return json.dumps(doc, separators=(",", ":"))


def test_a_qe_below_every_level_of_its_qe_identity_is_a_tcb_refusal(
    sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """dcap-qvl's "QE ISVSVN 10 is below minimum required 21 from QE Identity" was
    classified as a fault of the collateral: the refusal named the wrong check (and the
    SPM did not hold the floors of the copy that said so: tests/spm/test_collateral)."""
    raw, real = sources["sgx_v3_quote"]
    f = forge(raw, dict(real, qe_identity=qe_identity_above(real["qe_identity"], 20, 18)))
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    message = refused(f.quote, utc("2025-07-01"), f.collateral)
    assert message.startswith("tcb: QE ISVSVN 10 is below minimum required 21"), message


def test_an_spm_in_a_td_is_expected_by_its_firmware_kernel_and_command_line(
    sources: dict[str, Any],
) -> None:
    """Found by a review: `secfl spm verify` / `secfl run --spm-measurement` compared
    the first measurement only, a TD's MRTD (its firmware): any SPM booted on that
    firmware passed. A TD is now expected by mrtd, rtmr1 and rtmr2 together."""
    from secfl.spm.client import expected_identity

    claims = verify_quote(sources["tdx_v4_quote"][0], at=utc("2025-07-01"))  # real evidence
    m = claims.measurements
    whole = f"mrtd={m['mrtd']},rtmr1={m['rtmr1']},rtmr2={m['rtmr2']}"
    expected_identity(claims, [whole.upper()])
    with pytest.raises(VerificationError, match=r"^measurement: a tdx SPM is named by mrtd"):
        expected_identity(claims, [str(m["mrtd"])])  # the firmware alone
    other_kernel = whole.replace(f"rtmr1={m['rtmr1']}", "rtmr1=" + "ee" * 48)
    with pytest.raises(VerificationError, match=r"^measurement: the SPM runs tdx measurement"):
        expected_identity(claims, [other_kernel])
    with pytest.raises(VerificationError, match=r"^measurement: "):
        expected_identity(claims, [f"mrtd={m['mrtd']}"])  # names no code


# --- CRLs of megabytes -------------------------------------------------------------------


class _CrlSpy:
    """A CRL that records whether its entries were read (count, iteration)."""

    def __init__(self, crl: Any, reads: list[str]) -> None:
        self._crl, self._reads = crl, reads

    def __iter__(self) -> Any:
        self._reads.append("iter")
        return iter(self._crl)

    def __len__(self) -> int:
        self._reads.append("len")
        return len(self._crl)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._crl, name)


def _spy_on_crls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every CRL the collateral checks load, spied on: one list of reads per CRL."""
    from secfl.tee import _intel_collateral

    load = x509.load_der_x509_crl
    loaded: list[list[str]] = []

    def spied(data: bytes) -> Any:
        loaded.append([])
        return _CrlSpy(load(data), loaded[-1])

    monkeypatch.setattr(_intel_collateral.x509, "load_der_x509_crl", spied)
    return loaded


def _unsigned_crl(issuer: x509.Name, entries: int) -> str:
    """A CRL of ``entries`` serials under ``issuer``'s name, signed by a key of no one."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(utc("2025-06-01"))
        .next_update(utc("2025-08-01"))
    )
    for serial in range(1, entries + 1):
        entry = x509.RevokedCertificateBuilder().serial_number(serial)
        builder = builder.add_revoked_certificate(entry.revocation_date(FORGED_START).build())
    key = ec.generate_private_key(ec.SECP256R1())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER).hex()


@pytest.mark.parametrize(
    ("field", "what", "issuer"),
    [
        ("pck_crl", "PCK CRL", "Intel SGX PCK Platform CA"),
        ("root_ca_crl", "root CA CRL", "Intel SGX Root CA"),
    ],
)
def test_a_forged_crl_is_refused_before_its_entries_are_read(
    intel_dir: Path, monkeypatch: pytest.MonkeyPatch, field: str, what: str, issuer: str
) -> None:
    """Found by a review: every entry of a CRL was parsed before its signature was
    checked, so a PCCS (or the host's cache) that served a forged CRL of megabytes
    cost 0.5 s of CPU per attestation. The signature is checked first now."""
    v = VECTORS[1]
    raw, doc = load(intel_dir, v), json.loads(collateral_text(intel_dir, v))
    real = x509.load_der_x509_crl(bytes.fromhex(doc[field]))
    loaded = _spy_on_crls(monkeypatch)
    assert verify_quote(raw, at=utc(v.at), collateral=doc).tcb_status == "UpToDate"
    assert len(loaded) == 2 and all("iter" in reads for reads in loaded)  # the spy sees
    loaded.clear()
    forged = {**doc, field: _unsigned_crl(real.issuer, 2000)}
    message = refused(raw, utc(v.at), forged)
    assert message == f"collateral: the {what} signature does not verify under '{issuer}'"
    assert loaded[-1] == []  # neither counted nor iterated


def test_a_crl_of_too_many_entries_is_refused(
    intel_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Intel's PCK CRLs revoke tens of certificates (this one 44); a signed CRL of
    more than MAX_REVOKED is refused before its entries are parsed (cannot be signed
    here, so the bound is lowered to the real CRL's size)."""
    from secfl.tee import _intel_collateral

    v = VECTORS[1]
    raw, text = load(intel_dir, v), collateral_text(intel_dir, v)
    entries = len(x509.load_der_x509_crl(bytes.fromhex(json.loads(text)["pck_crl"])))
    assert entries == 44
    monkeypatch.setattr(_intel_collateral, "MAX_REVOKED", entries)
    assert verify_quote(raw, at=utc(v.at), collateral=text).tcb_status == "UpToDate"
    monkeypatch.setattr(_intel_collateral, "MAX_REVOKED", entries - 1)
    loaded = _spy_on_crls(monkeypatch)
    assert refused(raw, utc(v.at), text) == (
        f"collateral: the PCK CRL revokes {entries} certificates, more than {entries - 1} "
        "(Intel's hold tens)"
    )
    assert "iter" not in loaded[0]
