"""AMD SEV-SNP: parsing reports and certificate tables, and verifying reports.

Real vectors (Milan VCEK reports, a VLEK report) check acceptance and that every
single-byte change is refused. A test-made "fake AMD" (its own ARK, ASK, ASVK and
VCEKs, RSA-PSS SHA-384 like AMD's, pinned only through monkeypatch) covers what
the vectors cannot: Turin's TCB layout and 8-byte hwID, v5 reports, debug
policies, masked chip IDs, a VLEK with its ASVK, and each key-binding refusal.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl._internal.x509util import load_der
from secfl.errors import VerificationError
from secfl.tee import _amd as amd
from secfl.tee import _roots as roots
from secfl.tee._evidence import Evidence
from secfl.tee._snp_report import parse_report, product_from_cpuid, tcb_parts, tcb_text
from secfl.tee._verify import verify
from tests.conftest import utc

MILAN_AT = utc("2024-06-01")
VLEK_AT = utc("2025-06-01")
FAKE_AT = utc("2025-01-01")
CHECKS = ("malformed", "chain:", "expired:", "signature:", "key binding:")
# a changed byte can make a name attribute out of range; cryptography warns, we refuse
_MUTATED_NAMES = pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")


@dataclass(frozen=True)
class Real:
    """The AMD test vectors, read once."""

    report: bytes
    vcek: bytes
    report_b: bytes
    vcek_b: bytes
    chain: bytes
    genoa_chain: bytes
    turin_chain: bytes
    vlek_report: bytes
    vlek: bytes


@pytest.fixture(scope="module")
def real(vectors: Path) -> Real:
    d = vectors / "amd"
    return Real(
        report=(d / "snp_milan_report.bin").read_bytes(),
        vcek=(d / "snp_milan_vcek.der").read_bytes(),
        report_b=(d / "snp_milan_report_b.bin").read_bytes(),
        vcek_b=(d / "snp_milan_vcek_b.der").read_bytes(),
        chain=(d / "ask_ark_milan.pem").read_bytes(),
        genoa_chain=(d / "ask_ark_genoa.pem").read_bytes(),
        turin_chain=(d / "ask_ark_turin.pem").read_bytes(),
        vlek_report=(d / "snp_vlek_report.bin").read_bytes(),
        vlek=(d / "snp_vlek.der").read_bytes(),
    )


def _refused(match: str, **kwargs: object) -> str:
    with pytest.raises(VerificationError) as info:
        amd.verify_report(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert re.search(match, message), message
    assert "\n" not in message
    return message


def _ask_and_ark(chain_pem: bytes) -> tuple[bytes, bytes]:
    ask, ark = (c.public_bytes(serialization.Encoding.DER) for c in _load_pem(chain_pem))
    return ask, ark


def _load_pem(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


# --- parsing ---------------------------------------------------------------------


def test_parse_real_reports(real: Real) -> None:
    a = parse_report(real.report)
    assert (a.version, a.vmpl, a.signing_key, a.debug, a.product) == (2, 0, "vcek", False, None)
    assert a.measurement.hex().startswith("7a1e5c26")
    assert tcb_parts(a.reported_tcb, "Milan") == {
        "blSPL": 3,
        "teeSPL": 0,
        "snpSPL": 8,
        "ucodeSPL": 115,
    }
    assert (a.current_major, a.current_minor, a.current_build) == (1, 52, 4)
    assert a.launch_mit_vector is None and a.cpuid_family is None
    v = parse_report(real.vlek_report)
    assert (v.version, v.signing_key, v.vmpl, v.product) == (3, "vlek", 1, "Milan")
    assert (v.cpuid_family, v.cpuid_model, v.cpuid_stepping) == (0x19, 0x01, 0x01)
    assert parse_report(real.report + bytes(4096)).raw == real.report


def test_debug_is_policy_bit_19(real: Real) -> None:
    raw = bytearray(real.report)
    raw[0x0A] |= 0x08  # policy bit 19 lives in byte 2 of the u64 at 0x08
    assert parse_report(bytes(raw)).debug
    assert not parse_report(real.report).debug
    # the policy is signed: AMD's real report with the bit set no longer verifies
    _refused("^signature: ", report=bytes(raw), at=MILAN_AT, vcek=real.vcek, chain=real.chain)


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [(0x19, 0x01, "Milan"), (0x19, 0x11, "Genoa"), (0x19, 0xA0, "Genoa"), (0x1A, 0x02, "Turin"),
     (0x1A, 0x11, "Turin"), (0x19, 0x21, None), (0x17, 0x31, None), (0x1B, 0x00, None)],
)  # fmt: skip
def test_product_from_cpuid(family: int, model: int, product: str | None) -> None:
    assert product_from_cpuid(family, model) == product


def test_turin_tcb_layout() -> None:
    raw = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 5]), "little")
    assert tcb_parts(raw, "Turin") == {
        "fmcSPL": 1,
        "blSPL": 2,
        "teeSPL": 3,
        "snpSPL": 4,
        "ucodeSPL": 5,
    }
    assert tcb_parts(raw, "Genoa") == {"blSPL": 1, "teeSPL": 2, "snpSPL": 0, "ucodeSPL": 5}


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (0x00, 6, "at offset 0: report version 6"),
        (0x00, 1, "at offset 0: report version 1"),
        (0x34, 2, "at offset 52: signature_algo 2"),
        (0x48, 0x08, "at offset 72: signing_key 2 is reserved"),
        (0x48, 0x20, "at offset 72: reserved bits"),
        (0x4C, 1, "at offset 76: reserved byte"),
        (0x188, 1, "at offset 392: reserved byte"),  # v2 has no CPUID
        (0x1EB, 1, "at offset 491: reserved byte"),
        (0x1F8, 1, "at offset 504: reserved byte"),  # v2 has no mitigation vectors
        (0x2A0 + 48, 1, "at offset 720: signature r is wider than P-384"),
        (0x2E8 + 71, 1, "at offset 815: signature s is wider"),
        (0x330, 1, "at offset 816: reserved signature bytes"),
        (0x49F, 1, "at offset 1183: reserved signature bytes"),
    ],
)
def test_malformed_reports_name_the_offset(real: Real, offset: int, value: int, match: str) -> None:
    raw = bytearray(real.report)
    raw[offset] = value
    with pytest.raises(VerificationError, match=f"^malformed report {match}"):
        parse_report(bytes(raw))


def test_trailing_data_and_truncation(real: Real) -> None:
    with pytest.raises(VerificationError, match="^malformed report at offset 1190: non-zero"):
        parse_report(real.report + bytes(6) + b"\x01")
    for n in range(len(real.report)):
        with pytest.raises(VerificationError, match="^malformed report at offset"):
            parse_report(real.report[:n])


def test_v5_mitigation_vectors(real: Real) -> None:
    raw = bytearray(real.vlek_report)
    raw[0] = 5
    raw[0x1F8] = 0x03
    raw[0x200] = 0x01
    parsed = parse_report(bytes(raw))
    assert (parsed.launch_mit_vector, parsed.current_mit_vector) == (3, 1)
    raw[0x208] = 1
    with pytest.raises(VerificationError, match="offset 520: reserved byte"):
        parse_report(bytes(raw))


# --- the certificate table ---------------------------------------------------------


def test_cert_table_round_trip(real: Real) -> None:
    ask, ark = _ask_and_ark(real.chain)
    table = amd.build_cert_table({"vcek": real.vcek, "ask": ask, "ark": ark})
    assert table[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")  # RFC 4122 order
    assert amd.parse_cert_table(table) == {"vcek": real.vcek, "ask": ask, "ark": ark}
    assert amd.parse_cert_table(amd.build_cert_table({"asvk": ask})) == {"ask": ask}
    assert amd.parse_cert_table(b"") == {}
    assert amd.parse_cert_table(bytes(4096)) == {}  # a host that supplies no certificates


def test_cert_table_accepts_mixed_endian_guids_and_keeps_unknown_ones(real: Real) -> None:
    import uuid

    other = uuid.UUID("ecae0c0f-9502-43b1-afa2-0ae2e0d565b6")
    header = (
        amd.CERT_GUIDS["vcek"].bytes_le + (72).to_bytes(4, "little") + (3).to_bytes(4, "little")
    )
    header += other.bytes + (75).to_bytes(4, "little") + (2).to_bytes(4, "little")
    table = header + bytes(24) + b"abcde"
    assert amd.parse_cert_table(table) == {"vcek": b"abc", str(other): b"de"}


def test_a_table_of_thousands_of_entries_is_refused_at_once() -> None:
    """Found by a hostile review: duplicate roles were looked for among every earlier
    entry, before any signature check: 8,000 entries of zeros took 6.8 s to refuse."""
    import uuid

    from secfl.tee._snp_report import MAX_CERT_ENTRIES

    entries = b"".join(
        uuid.UUID(int=i + 1).bytes + (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
        for i in range(8000)
    )
    with pytest.raises(VerificationError, match=f"{16 * 24}: more than {MAX_CERT_ENTRIES} "):
        amd.parse_cert_table(entries + bytes(24))  # refused at the first entry too many


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t: t[:18], "entry offset needs 4 bytes"),
        (lambda t: t[:24], "entry GUID needs 16 bytes"),  # no terminator
        (lambda t: t[:16] + (10).to_bytes(4, "little") + t[20:], "outside the certificates area"),
        (lambda t: t[:20] + (0).to_bytes(4, "little") + t[24:], "the vcek entry is empty"),
        (lambda t: t[:-1], r"points to \[48, 51\), outside"),
        (lambda t: t[:24] + t[:24] + bytes(24) + t[48:], "24: a second vcek entry"),
    ],
)
def test_malformed_cert_tables(mutate: object, match: str) -> None:
    table = amd.build_cert_table({"vcek": b"abc"})
    with pytest.raises(
        VerificationError, match=f"^malformed certificate table at offset .*{match}"
    ):
        amd.parse_cert_table(mutate(table))  # type: ignore[operator]


def test_build_cert_table_refuses_unknown_roles() -> None:
    with pytest.raises(ValueError, match="unknown certificate role 'pck'"):
        amd.build_cert_table({"pck": b"x"})
    with pytest.raises(ValueError, match="share one table slot"):
        amd.build_cert_table({"ask": b"x", "asvk": b"y"})


# --- the real vectors ------------------------------------------------------------------


@pytest.mark.parametrize(("which", "prefix"), [("a", "7a1e5c26"), ("b", "a1f39304")])
def test_real_milan_reports_are_accepted(real: Real, which: str, prefix: str) -> None:
    report, vcek = (real.report, real.vcek) if which == "a" else (real.report_b, real.vcek_b)
    claims = amd.verify_report(report, at=MILAN_AT, vcek=vcek, chain=real.chain)
    assert claims.kind == "snp" and claims.quote_version == 2
    assert str(claims.measurements["measurement"]).startswith(prefix)
    assert claims.debug is False and claims.tcb_status == "unknown"
    parsed = parse_report(report)
    assert claims.platform == {
        "chip_id": parsed.chip_id.hex(),
        "product": "Milan",
        "signing_key": "vcek",
        # the TCB the VCEK is certified for (checked), and the firmware's
        "reported_tcb": "bootloader=3,tee=0,snp=8,microcode=115",
        "launch_tcb": tcb_text(parsed.launch_tcb, "Milan"),
        "committed_tcb": "bootloader=3,tee=0,snp=8,microcode=115",
        "current_tcb": tcb_text(parsed.current_tcb, "Milan"),
        "amd_crl": "unchecked",  # no CRL given (tests/tee/test_amd_crl.py)
    }
    assert claims.measurements["vmpl"] == 0 and claims.report_data == report[0x50:0x90].hex()
    assert set(claims.measurements) == {
        "measurement",
        "host_data",
        "policy",
        "vmpl",
        "guest_svn",
        "id_key_digest",
        "author_key_digest",
    }
    # PEM for the VCEK, and zero padding after the report, are fine too
    pem = _pem(vcek)
    assert amd.verify_report(report + bytes(32), at=MILAN_AT, vcek=pem, chain=real.chain) == claims


def test_a_certificates_own_name_is_quoted_on_one_line(real: Real) -> None:
    """Found by a hostile review: a refusal quoted a certificate's name as its maker
    chose it, newlines and 2,000 characters included (a forged log line, and 64 KiB an
    audit entry)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    chosen = "SEV-VCEK'\nforged: accepted" + "A" * 2000
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, chosen, _validate=False)])
    began = datetime(2024, 1, 1, tzinfo=UTC)
    forged = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1).not_valid_before(began)
        .not_valid_after(began + timedelta(days=3650)).sign(key, hashes.SHA384())
    )  # fmt: skip
    ask, ark = _ask_and_ark(real.chain)
    table = amd.build_cert_table(
        {"vcek": forged.public_bytes(serialization.Encoding.DER), "ask": ask, "ark": ark}
    )
    with pytest.raises(VerificationError) as refused:  # (cryptography warns of its length)
        verify(Evidence(kind="snp", quote=real.report, aux=table), at=MILAN_AT)
    message = str(refused.value)
    assert "\n" not in message and "forged: accepted" in message and len(message) < 1300


def test_configfs_tsm_route(real: Real) -> None:
    ask, ark = _ask_and_ark(real.chain)
    table = amd.build_cert_table({"vcek": real.vcek, "ask": ask, "ark": ark})
    ev = Evidence(kind="snp", quote=real.report, aux=table)
    claims = verify(ev, at=MILAN_AT)
    assert str(claims.measurements["measurement"]).startswith("7a1e5c26")
    assert verify(ev.to_json().encode(), at=MILAN_AT) == claims
    assert json.loads(ev.to_json())["provider"] == "sev_guest"
    # a table with only the VCEK, completed by an explicit chain
    partial = amd.build_cert_table({"vcek": real.vcek})
    assert (
        verify(Evidence(kind="snp", quote=real.report, aux=partial), at=MILAN_AT, chain=real.chain)
        == claims
    )
    with pytest.raises(
        VerificationError,
        match=r"^chain: the VCEK is issued by 'SEV-Milan' \(ASK\), which was not provided",
    ):
        verify(Evidence(kind="snp", quote=real.report, aux=partial), at=MILAN_AT)


def test_hex_text_form_is_accepted(real: Real) -> None:
    claims = verify(
        real.report.hex().encode() + b"\n", at=MILAN_AT, vcek=real.vcek, chain=real.chain
    )
    assert str(claims.measurements["measurement"]).startswith("7a1e5c26")


def test_vlek_signature_valid_but_asvk_missing(real: Real) -> None:
    parsed = amd.verify_report_signature(real.vlek_report, real.vlek)
    assert parsed.signing_key == "vlek"
    _refused(
        r"^chain: the VLEK is issued by 'SEV-VLEK-Milan' \(ASVK\), which was not provided "
        r"\(pass --chain, an auxblob, or fetch it from KDS\)$",
        report=real.vlek_report,
        at=VLEK_AT,
        vcek=real.vlek,
        chain=None,
        aux=None,
    )
    _refused(
        r"^chain: the VLEK is issued by 'SEV-VLEK-Milan' \(ASVK\), "
        r"but the chain gives 'SEV-Milan'$",
        report=real.vlek_report,
        at=VLEK_AT,
        vcek=real.vlek,
        chain=real.chain,
    )
    # the VLEK's TCB extensions match the report's reported_tcb
    amd._check_key_binding(parsed, load_der(real.vlek, "vlek"), "vlek", "Milan")
    with pytest.raises(VerificationError, match="^signature: the report signature does not verify"):
        amd.verify_report_signature(real.report, real.vlek)


def test_wrong_or_missing_certificates_are_refused(real: Real) -> None:
    _refused(
        "^signature: the report signature does not verify under the VCEK 'SEV-VCEK'$",
        report=real.report,
        at=MILAN_AT,
        vcek=real.vcek_b,
        chain=real.chain,
    )
    for other in (real.genoa_chain, real.turin_chain):
        _refused(
            r"^chain: the VCEK is issued by 'SEV-Milan' \(ASK\), "
            r"but the chain gives 'SEV-(Genoa|Turin)'$",
            report=real.report,
            at=MILAN_AT,
            vcek=real.vcek,
            chain=other,
        )
    _refused(
        "^chain: the report is signed by a VCEK, which was not provided",
        report=real.report,
        at=MILAN_AT,
        chain=real.chain,
    )
    _refused(
        r"^chain: the report is signed by a VCEK \(signing_key 0\), "
        "but the certificate given is 'SEV-VLEK'$",
        report=real.report,
        at=MILAN_AT,
        vcek=real.vlek,
        chain=real.chain,
    )
    ask, _ = _ask_and_ark(real.chain)
    _refused(
        r"^chain: the ASK 'SEV-Milan' is issued by 'ARK-Milan' \(ARK\), which was not provided",
        report=real.report,
        at=MILAN_AT,
        vcek=real.vcek,
        chain=_pem(ask),
    )
    _refused(
        "^chain: the VCEK/VLEK given: not a DER certificate",
        report=real.report,
        at=MILAN_AT,
        vcek=b"nonsense",
        chain=real.chain,
    )
    _refused(
        "^chain: expected one VCEK/VLEK certificate, got 2",
        report=real.report,
        at=MILAN_AT,
        vcek=real.chain,
        chain=real.chain,
    )
    _refused(
        "^chain: the chain given holds two ASK/ASVKs",
        report=real.report,
        at=MILAN_AT,
        vcek=real.vcek,
        chain=_pem(ask) + real.chain,
    )


def test_validity_window(real: Real) -> None:
    kw = {"report": real.report, "vcek": real.vcek, "chain": real.chain}
    _refused("^expired: VCEK 'SEV-VCEK' expired on 2030-04-03", at=utc("2030-05-01"), **kw)
    _refused("^expired: VCEK 'SEV-VCEK' is not valid before 2023-04-03", at=utc("2023-01-01"), **kw)


def test_every_byte_of_the_signed_report_and_signature_matters(real: Real) -> None:
    positions = [*range(0x2A0), *range(0x2A0, 0x2A0 + 144)]
    for i in positions:
        raw = bytearray(real.report)
        raw[i] ^= 0x01
        with pytest.raises(VerificationError) as info:
            amd.verify_report(bytes(raw), at=MILAN_AT, vcek=real.vcek, chain=real.chain)
        assert str(info.value).startswith(CHECKS), (i, str(info.value))


@_MUTATED_NAMES
def test_every_byte_of_the_vcek_matters(real: Real) -> None:
    for i in range(len(real.vcek)):
        der = bytearray(real.vcek)
        der[i] ^= 0x01
        with pytest.raises(VerificationError) as info:
            amd.verify_report(real.report, at=MILAN_AT, vcek=bytes(der), chain=real.chain)
        assert str(info.value).startswith(CHECKS), (i, str(info.value))


@_MUTATED_NAMES
def test_every_byte_of_the_ask_and_ark_matters(real: Real) -> None:
    ask, ark = _ask_and_ark(real.chain)
    for which, der in (("ask", ask), ("ark", ark)):
        for i in range(len(der)):
            bad = bytearray(der)
            bad[i] ^= 0x01
            chain = _pem(bytes(bad)) + _pem(ark) if which == "ask" else _pem(ask) + _pem(bytes(bad))
            with pytest.raises(VerificationError) as info:
                amd.verify_report(real.report, at=MILAN_AT, vcek=real.vcek, chain=chain)
            assert str(info.value).startswith(CHECKS), (which, i, str(info.value))


# --- a fake AMD: own roots, pinned only for the test -----------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fake Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(f"1.3.6.1.4.1.3704.1.{oid}"), value)


@dataclass
class FakeAmd:
    """An ARK, ASK and ASVK for one fake product line, and a VCEK/VLEK factory."""

    product: str
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    asvk_key: rsa.RSAPrivateKey
    asvk: x509.Certificate

    @classmethod
    def create(cls, product: str) -> FakeAmd:
        keys = [rsa.generate_private_key(65537, 2048) for _ in range(3)]
        ark = _cert(_name(f"ARK-{product}"), keys[0], _name(f"ARK-{product}"), keys[0])
        ask = _cert(_name(f"SEV-{product}"), keys[1], ark.subject, keys[0])
        asvk = _cert(_name(f"SEV-VLEK-{product}"), keys[2], ark.subject, keys[0])
        return cls(product, keys[0], ark, keys[1], ask, keys[2], asvk)

    def chain(self, *, vlek: bool = False) -> bytes:
        issuer = self.asvk if vlek else self.ask
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (issuer, self.ark))

    def vek(
        self,
        spl: dict[str, int],
        *,
        hwid: bytes | None = None,
        vlek: bool = False,
        product_name: str | None = None,
        not_after: datetime | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        key = ec.generate_private_key(ec.SECP384R1())
        name = product_name or f"{self.product}-B0"
        exts = [_ext("1", _der_int(0)), _ext("2", bytes([0x16, len(name)]) + name.encode())]
        numbers = {
            "blSPL": "3.1",
            "teeSPL": "3.2",
            "snpSPL": "3.3",
            "ucodeSPL": "3.8",
            "fmcSPL": "3.9",
        }
        exts += [_ext(numbers[k], _der_int(v)) for k, v in spl.items()]
        if hwid is not None:
            exts.append(_ext("4", hwid))
        if vlek:
            exts.append(_ext("5", b"\x16\x0bCN=fake-csp"))
        issuer, issuer_key = (self.asvk, self.asvk_key) if vlek else (self.ask, self.ask_key)
        cert = _cert(
            _name("SEV-VLEK" if vlek else "SEV-VCEK"),
            key,
            issuer.subject,
            issuer_key,
            exts,
            not_after,
        )
        return key, cert.public_bytes(serialization.Encoding.DER)


def _cert(
    subject: x509.Name,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    exts: list[x509.UnrecognizedExtension] | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(not_after or datetime(2040, 1, 1, tzinfo=UTC))
    )
    for ext in exts or []:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=_pss())


def make_report(
    key: ec.EllipticCurvePrivateKey,
    *,
    tcb: bytes,
    version: int = 3,
    cpuid: tuple[int, int, int] = (0x1A, 0x02, 0x00),
    chip_id: bytes = bytes(range(1, 9)) + bytes(56),
    policy: int = 0x30000,
    key_info: int = 0,
    vmpl: int = 0,
    report_data: bytes = bytes(range(64)),
    measurement: bytes = b"\xab" * 48,
) -> bytes:
    """A report signed by ``key``; ``tcb`` is the 8 TCB_VERSION bytes for every TCB field."""
    raw = bytearray(0x4A0)
    raw[0:4] = version.to_bytes(4, "little")
    raw[4:8] = (7).to_bytes(4, "little")
    raw[0x08:0x10] = policy.to_bytes(8, "little")
    raw[0x30:0x34] = vmpl.to_bytes(4, "little")
    raw[0x34:0x38] = (1).to_bytes(4, "little")
    raw[0x38:0x40] = tcb
    raw[0x48:0x4C] = key_info.to_bytes(4, "little")
    raw[0x50:0x90] = report_data
    raw[0x90:0xC0] = measurement
    raw[0x180:0x188] = tcb
    if version >= 3:
        raw[0x188:0x18B] = bytes(cpuid)
    raw[0x1A0:0x1E0] = chip_id
    raw[0x1E0:0x1E8] = tcb
    raw[0x1F0:0x1F8] = tcb
    if version >= 5:
        raw[0x1F8:0x200] = (1).to_bytes(8, "little")
        raw[0x200:0x208] = (3).to_bytes(8, "little")
    r, s = decode_dss_signature(key.sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
    raw[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(raw)


TURIN_TCB = bytes([1, 2, 3, 4, 0, 0, 0, 0x45])  # fmc, bl, tee, snp, -, -, -, microcode
TURIN_SPL = {"fmcSPL": 1, "blSPL": 2, "teeSPL": 3, "snpSPL": 4, "ucodeSPL": 0x45}
GENOA_TCB = bytes([5, 0, 0, 0, 0, 0, 22, 0xD5])  # bl, tee, -, -, -, -, snp, microcode
GENOA_SPL = {"blSPL": 5, "teeSPL": 0, "snpSPL": 22, "ucodeSPL": 0xD5}


@pytest.fixture(scope="module")
def fake_turin() -> FakeAmd:
    return FakeAmd.create("Turin")


@pytest.fixture(scope="module")
def fake_genoa() -> FakeAmd:
    return FakeAmd.create("Genoa")


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch, fake_turin: FakeAmd, fake_genoa: FakeAmd) -> None:
    """Pin the fake ARKs in place of AMD's for the duration of one test."""
    from secfl._internal.x509util import fingerprint

    monkeypatch.setitem(roots.AMD_ARK_SHA256, "Turin", fingerprint(fake_turin.ark))
    monkeypatch.setitem(roots.AMD_ARK_SHA256, "Genoa", fingerprint(fake_genoa.ark))


def test_an_unpinned_ark_is_refused(fake_turin: FakeAmd) -> None:
    key, vcek = fake_turin.vek(TURIN_SPL, hwid=bytes(range(1, 9)))
    _refused(
        r"^chain: the ARK 'ARK-Turin' is not a pinned AMD root \(sha256 [0-9a-f]{64}\)$",
        report=make_report(key, tcb=TURIN_TCB),
        at=FAKE_AT,
        vcek=vcek,
        chain=fake_turin.chain(),
    )


@pytest.mark.usefixtures("pinned")
def test_turin_v3_report_with_an_8_byte_hwid(fake_turin: FakeAmd) -> None:
    key, vcek = fake_turin.vek(TURIN_SPL, hwid=bytes(range(1, 9)))
    report = make_report(key, tcb=TURIN_TCB)
    claims = amd.verify_report(report, at=FAKE_AT, vcek=vcek, chain=fake_turin.chain())
    assert claims.platform["product"] == "Turin" and claims.quote_version == 3
    assert claims.measurements["guest_svn"] == 7
    # the same hwID wrapped as a DER OCTET STRING is read too
    key, vcek = fake_turin.vek(TURIN_SPL, hwid=b"\x04\x08" + bytes(range(1, 9)))
    amd.verify_report(
        make_report(key, tcb=TURIN_TCB), at=FAKE_AT, vcek=vcek, chain=fake_turin.chain()
    )
    # v5 with its mitigation vectors
    claims = amd.verify_report(
        make_report(key, tcb=TURIN_TCB, version=5), at=FAKE_AT, vcek=vcek, chain=fake_turin.chain()
    )
    assert claims.quote_version == 5


@pytest.mark.usefixtures("pinned")
def test_key_binding_refusals(fake_turin: FakeAmd) -> None:
    chain = fake_turin.chain()
    key, vcek = fake_turin.vek(TURIN_SPL, hwid=bytes(range(2, 10)))
    _refused(
        "^key binding: the VCEK is for chip 0203040506070809…, the report comes from chip 01020304",
        report=make_report(key, tcb=TURIN_TCB),
        at=FAKE_AT,
        vcek=vcek,
        chain=chain,
    )
    # with MASK_CHIP_ID the report carries no chip_id to compare
    masked = make_report(key, tcb=TURIN_TCB, key_info=0b10, chip_id=bytes(64))
    assert (
        amd.verify_report(masked, at=FAKE_AT, vcek=vcek, chain=chain).platform["chip_id"]
        == "00" * 64
    )
    key, vcek = fake_turin.vek({**TURIN_SPL, "fmcSPL": 9}, hwid=bytes(range(1, 9)))
    _refused(
        "^key binding: the VCEK is for fmcSPL=9, the report's reported_tcb has fmcSPL=1$",
        report=make_report(key, tcb=TURIN_TCB),
        at=FAKE_AT,
        vcek=vcek,
        chain=chain,
    )
    key, vcek = fake_turin.vek(
        {k: v for k, v in TURIN_SPL.items() if k != "snpSPL"}, hwid=bytes(range(1, 9))
    )
    _refused(
        "^key binding: the VCEK has no snpSPL extension$",
        report=make_report(key, tcb=TURIN_TCB),
        at=FAKE_AT,
        vcek=vcek,
        chain=chain,
    )
    key, vcek = fake_turin.vek(TURIN_SPL)
    _refused(
        "^key binding: the VCEK has no hwID extension$",
        report=make_report(key, tcb=TURIN_TCB),
        at=FAKE_AT,
        vcek=vcek,
        chain=chain,
    )
    key, vcek = fake_turin.vek(TURIN_SPL, hwid=bytes(range(1, 9)))
    _refused(
        "^key binding: the VCEK is for chip",
        at=FAKE_AT,
        vcek=vcek,
        chain=chain,
        report=make_report(key, tcb=TURIN_TCB, chip_id=bytes(range(1, 9)) + b"\x01" + bytes(55)),
    )


@pytest.mark.usefixtures("pinned")
def test_genoa_layout_and_product_consistency(fake_genoa: FakeAmd, fake_turin: FakeAmd) -> None:
    chip = bytes(range(64))
    key, vcek = fake_genoa.vek(GENOA_SPL, hwid=chip)
    report = make_report(key, tcb=GENOA_TCB, cpuid=(0x19, 0x11, 0x01), chip_id=chip)
    assert (
        amd.verify_report(report, at=FAKE_AT, vcek=vcek, chain=fake_genoa.chain()).platform[
            "product"
        ]
        == "Genoa"
    )
    # a v2 report (no CPUID) takes its product from the pinned ARK
    v2 = make_report(key, tcb=GENOA_TCB, version=2, chip_id=chip)
    assert amd.verify_report(v2, at=FAKE_AT, vcek=vcek, chain=fake_genoa.chain()).quote_version == 2
    # a Genoa CPU cannot be vouched for by the Turin ARK
    key, vcek = fake_turin.vek(TURIN_SPL, hwid=chip[:8])
    _refused(
        "^chain: the report's CPUID says Genoa, but the certificates chain to the Turin ARK$",
        report=make_report(key, tcb=TURIN_TCB, cpuid=(0x19, 0x11, 0), chip_id=chip[:8] + bytes(56)),
        at=FAKE_AT,
        vcek=vcek,
        chain=fake_turin.chain(),
    )
    key, vcek = fake_turin.vek(TURIN_SPL, hwid=chip[:8], product_name="Genoa-B1")
    _refused(
        "^chain: the VCEK's productName says Genoa, but the certificates chain to the Turin ARK$",
        report=make_report(key, tcb=TURIN_TCB, chip_id=chip[:8] + bytes(56)),
        at=FAKE_AT,
        vcek=vcek,
        chain=fake_turin.chain(),
    )
    _refused(
        r"^chain: the report's CPU \(family 0x1b, model 0x0\) is not a known SEV-SNP product",
        report=make_report(key, tcb=TURIN_TCB, cpuid=(0x1B, 0, 0)),
        at=FAKE_AT,
        vcek=vcek,
        chain=fake_turin.chain(),
    )


@pytest.mark.usefixtures("pinned")
def test_debug_guest_is_reported_and_refused_by_default(fake_turin: FakeAmd) -> None:
    key, vcek = fake_turin.vek(TURIN_SPL, hwid=bytes(range(1, 9)))
    report = make_report(key, tcb=TURIN_TCB, policy=0x30000 | 1 << 19)
    assert amd.verify_report(report, at=FAKE_AT, vcek=vcek, chain=fake_turin.chain()).debug
    with pytest.raises(VerificationError, match="^debug: the snp evidence comes from a debug TEE"):
        verify(report, at=FAKE_AT, vcek=vcek, chain=fake_turin.chain())
    assert verify(report, at=FAKE_AT, vcek=vcek, chain=fake_turin.chain(), allow_debug=True).debug


@pytest.mark.usefixtures("pinned")
def test_vlek_with_its_asvk(fake_turin: FakeAmd) -> None:
    key, vlek = fake_turin.vek(TURIN_SPL, vlek=True)
    report = make_report(key, tcb=TURIN_TCB, key_info=1 << 2, chip_id=bytes(64))
    claims = amd.verify_report(report, at=FAKE_AT, vcek=vlek, chain=fake_turin.chain(vlek=True))
    assert claims.platform["signing_key"] == "vlek"
    ask = fake_turin.ask.public_bytes(serialization.Encoding.DER)
    asvk = fake_turin.asvk.public_bytes(serialization.Encoding.DER)
    ark = fake_turin.ark.public_bytes(serialization.Encoding.DER)
    # the table's ASK slot carries the ASVK; a VCEK in the table is passed over
    _, vcek = fake_turin.vek(TURIN_SPL, hwid=bytes(8))
    table = amd.build_cert_table({"vcek": vcek, "vlek": vlek, "asvk": asvk, "ark": ark})
    assert amd.verify_report(report, at=FAKE_AT, aux=table) == claims
    _refused(
        r"^chain: the VLEK is issued by 'SEV-VLEK-Turin' \(ASVK\), "
        r"but the chain gives 'SEV-Turin'$",
        report=report,
        at=FAKE_AT,
        aux=amd.build_cert_table({"vlek": vlek, "ask": ask, "ark": ark}),
    )
    _refused(
        r"^chain: the report is signed by a VLEK, which was not provided "
        r"\(pass --vcek or an auxblob; KDS gives VLEKs only to clouds\)$",
        report=report,
        at=FAKE_AT,
        chain=fake_turin.chain(vlek=True),
    )
    unsigned = make_report(key, tcb=TURIN_TCB, key_info=7 << 2)
    _refused("^signature: the report is unsigned", report=unsigned, at=FAKE_AT, vcek=vlek)


@pytest.mark.usefixtures("pinned")
def test_fake_certificate_lifetimes(fake_turin: FakeAmd) -> None:
    key, vcek = fake_turin.vek(
        TURIN_SPL, hwid=bytes(range(1, 9)), not_after=FAKE_AT - timedelta(days=1)
    )
    _refused(
        "^expired: VCEK 'SEV-VCEK' expired on 2024-12-31",
        report=make_report(key, tcb=TURIN_TCB),
        at=FAKE_AT,
        vcek=vcek,
        chain=fake_turin.chain(),
    )


# --- fuzzing: only VerificationError may escape -------------------------------------------

FUZZ = settings(max_examples=150, deadline=None)


@FUZZ
@given(data=st.binary(max_size=1500))
def test_fuzz_parse_report(data: bytes) -> None:
    with contextlib.suppress(VerificationError):
        parse_report(data)


@FUZZ
@given(version=st.sampled_from([2, 3, 4, 5]), body=st.binary(min_size=1180, max_size=1300))
def test_fuzz_parse_report_with_a_plausible_header(version: int, body: bytes) -> None:
    with contextlib.suppress(VerificationError):
        parse_report(version.to_bytes(4, "little") + body)


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_parse_cert_table(data: bytes) -> None:
    with contextlib.suppress(VerificationError):
        amd.parse_cert_table(data)


def test_every_truncation_of_a_cert_table(real: Real) -> None:
    ask, ark = _ask_and_ark(real.chain)
    table = amd.build_cert_table({"vcek": real.vcek, "ask": ask, "ark": ark})
    for n in range(1, len(table)):
        with pytest.raises(VerificationError, match="^malformed certificate table"):
            amd.parse_cert_table(table[:n])


_edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)


def _apply(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


@FUZZ
@given(data=st.binary(max_size=1500), edits=_edits, cut=st.integers(0, 1400))
def test_fuzz_verify_report(
    real: Real, data: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    ask, ark = _ask_and_ark(real.chain)
    table = amd.build_cert_table({"vcek": real.vcek, "ask": ask, "ark": ark})
    attempts = [
        {"report": data, "vcek": real.vcek, "chain": real.chain},
        {"report": _apply(real.report, edits), "vcek": real.vcek, "chain": real.chain},
        {"report": real.report[:cut], "vcek": real.vcek, "chain": real.chain},
        {"report": real.report, "vcek": _apply(real.vcek, edits), "chain": real.chain},
        {"report": real.report, "vcek": real.vcek[:cut], "chain": real.chain},
        {"report": real.report, "vcek": real.vcek, "chain": _apply(real.chain, edits)},
        {"report": real.report, "aux": _apply(table, edits)},
        {"report": real.report, "aux": data},
        {"report": real.report, "vcek": data, "chain": data},
    ]
    for kwargs in attempts:
        try:
            amd.verify_report(at=MILAN_AT, **kwargs)  # type: ignore[arg-type]
        except VerificationError as exc:
            assert str(exc).startswith(CHECKS), str(exc)
