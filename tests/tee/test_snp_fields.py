"""Every field of an SEV-SNP report, read from the offsets of AMD's specification.

The layout below is written out from the SEV-SNP firmware ABI specification
(AMD 56860, Table 23 "ATTESTATION_REPORT Structure"), independently of
``secfl.tee._snp_report``. Each test report carries a distinct pseudo-random byte
pattern in every field (so a field read at the wrong offset, at the wrong size,
with the wrong byte order, or swapped with another cannot pass) and zeros in every
reserved byte. This holds for every report version the parser supports (2 to 5),
through the parser and through the whole verifier (reports signed by a test AMD).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from secfl._internal.x509util import fingerprint
from secfl.errors import VerificationError
from secfl.tee import _amd as amd
from secfl.tee import _roots as roots
from secfl.tee._snp_report import SUPPORTED_VERSIONS, SnpReport, parse_report, tcb_parts, tcb_text
from tests.conftest import utc
from tests.tee.test_amd import FakeAmd


@dataclass(frozen=True)
class Field:
    offset: int
    size: int
    name: str
    integer: bool = False  # little-endian unsigned integer, else raw bytes
    since: int = 2  # first report version that has the field


#: AMD 56860 Table 23, in order. Reserved ranges are what lies between.
LAYOUT = (
    Field(0x000, 4, "version", True),
    Field(0x004, 4, "guest_svn", True),
    Field(0x008, 8, "policy", True),
    Field(0x010, 16, "family_id"),
    Field(0x020, 16, "image_id"),
    Field(0x030, 4, "vmpl", True),
    Field(0x034, 4, "signature_algo", True),
    Field(0x038, 8, "current_tcb", True),
    Field(0x040, 8, "platform_info", True),
    Field(0x048, 4, "key_info", True),  # bit 0 AUTHOR_KEY_EN, 1 MASK_CHIP_KEY, 4:2 SIGNING_KEY
    Field(0x050, 64, "report_data"),
    Field(0x090, 48, "measurement"),
    Field(0x0C0, 32, "host_data"),
    Field(0x0E0, 48, "id_key_digest"),
    Field(0x110, 48, "author_key_digest"),
    Field(0x140, 32, "report_id"),
    Field(0x160, 32, "report_id_ma"),
    Field(0x180, 8, "reported_tcb", True),
    Field(0x188, 1, "cpuid_family", True, since=3),
    Field(0x189, 1, "cpuid_model", True, since=3),
    Field(0x18A, 1, "cpuid_stepping", True, since=3),
    Field(0x1A0, 64, "chip_id"),
    Field(0x1E0, 8, "committed_tcb", True),
    Field(0x1E8, 1, "current_build", True),
    Field(0x1E9, 1, "current_minor", True),
    Field(0x1EA, 1, "current_major", True),
    Field(0x1EC, 1, "committed_build", True),
    Field(0x1ED, 1, "committed_minor", True),
    Field(0x1EE, 1, "committed_major", True),
    Field(0x1F0, 8, "launch_tcb", True),
    Field(0x1F8, 8, "launch_mit_vector", True, since=5),
    Field(0x200, 8, "current_mit_vector", True, since=5),
    Field(0x2A0, 72, "signature_r"),  # ECDSA P-384 r, little-endian; 48 bytes used
    Field(0x2E8, 72, "signature_s"),
)
REPORT_SIZE = 0x4A0
SIGNED = 0x2A0
#: Fields whose value is constrained: the rest of the report may hold any pattern.
FIXED = {"version", "signature_algo", "key_info"}
#: key info: AUTHOR_KEY_EN=1, MASK_CHIP_KEY=1, SIGNING_KEY=1 (VLEK): every defined bit used.
KEY_INFO = 0b00111
VERSIONS = list(SUPPORTED_VERSIONS)


def fields(version: int) -> list[Field]:
    return [f for f in LAYOUT if version >= f.since]


def pattern(label: str, size: int) -> bytes:
    """``size`` pseudo-random bytes, none zero (so "all zero" never passes for a field)."""
    out = hashlib.shake_256(label.encode()).digest(size)
    return bytes(b or 0x5A for b in out)


def field_bytes(version: int, f: Field) -> bytes:
    if f.name == "version":
        return version.to_bytes(4, "little")
    if f.name == "signature_algo":
        return (1).to_bytes(4, "little")  # ECDSA P-384 with SHA-384
    if f.name == "key_info":
        return KEY_INFO.to_bytes(4, "little")
    if f.name.startswith("signature_"):
        return pattern(f"v{version}/{f.name}", 48) + bytes(24)
    return pattern(f"v{version}/{f.name}", f.size)


def patterned_report(version: int, **override: bytes) -> bytearray:
    raw = bytearray(REPORT_SIZE)
    for f in fields(version):
        raw[f.offset : f.offset + f.size] = override.get(f.name, field_bytes(version, f))
    return raw


def expected(version: int, raw: bytes) -> dict[str, Any]:
    """Every field's value, read from ``raw`` at the spec's offsets."""
    values: dict[str, Any] = {}
    for f in fields(version):
        data = bytes(raw[f.offset : f.offset + f.size])
        values[f.name] = int.from_bytes(data, "little") if f.integer else data
    return values


def parsed_values(report: SnpReport) -> dict[str, Any]:
    """The parser's reading of every field of the spec's table."""
    key_info = (
        int(report.author_key_en) | int(report.mask_chip_key) << 1 | report.signing_key_value << 2
    )
    values = {
        f.name: getattr(report, f.name) for f in fields(report.version) if f.name != "key_info"
    }
    return {**values, "key_info": key_info}


# --- the parser -------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_field_is_read_from_the_spec_offset(version: int) -> None:
    raw = patterned_report(version)
    report = parse_report(bytes(raw))
    assert parsed_values(report) == expected(version, raw)
    assert (report.author_key_en, report.mask_chip_key, report.signing_key) == (
        True,
        True,
        "vlek",
    )
    assert report.raw == raw and report.signed_bytes == raw[:SIGNED]
    # the fields a version does not have are absent, not read from reserved bytes
    if version < 3:
        assert (report.cpuid_family, report.cpuid_model, report.cpuid_stepping) == (None,) * 3
    if version < 5:
        assert (report.launch_mit_vector, report.current_mit_vector) == (None, None)
    # every field's pattern is distinct: none can stand in for another
    patterns = [raw[f.offset : f.offset + f.size] for f in fields(version) if f.name not in FIXED]
    assert len({bytes(p) for p in patterns}) == len(patterns)


def _used_size(f: Field) -> int:
    """Bytes a field may set: a P-384 signature component uses 48 of its 72."""
    return 48 if f.name.startswith("signature_") else f.size


@pytest.mark.parametrize("version", VERSIONS)
def test_every_reserved_byte_is_refused(version: int) -> None:
    """Every byte outside the version's fields is reserved: setting it is refused at its
    offset, so no field can hide in a gap of the parser's layout."""
    raw = patterned_report(version)
    used = {i for f in fields(version) for i in range(f.offset, f.offset + _used_size(f))}
    reserved = [i for i in range(REPORT_SIZE) if i not in used]
    assert len(reserved) > 300
    for i in reserved:
        changed = bytearray(raw)
        changed[i] = 0x01
        with pytest.raises(VerificationError, match=f"^malformed report at offset {i}: "):
            parse_report(bytes(changed))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("key_info", "flags"),
    [(0b00000, (False, False, "vcek")), (0b00001, (True, False, "vcek")),
     (0b00010, (False, True, "vcek")), (0b11100, (False, False, "none"))],
)  # fmt: skip
def test_key_info_bits(version: int, key_info: int, flags: tuple[bool, bool, str]) -> None:
    report = parse_report(bytes(patterned_report(version, key_info=key_info.to_bytes(4, "little"))))
    assert (report.author_key_en, report.mask_chip_key, report.signing_key) == flags


# --- the whole verifier ---------------------------------------------------------------

AT = utc("2025-01-01")
GENOA_CPUID = bytes([0x19]), bytes([0x11]), bytes([0x01])


@pytest.fixture(scope="module")
def genoa() -> FakeAmd:
    return FakeAmd.create("Genoa")


def signed_report(genoa: FakeAmd, version: int) -> tuple[bytes, bytes]:
    """A patterned report (a Genoa CPUID, a VCEK with unmasked chip ID) signed by a
    fake Genoa VCEK certified for its chip_id and reported_tcb; (report, VCEK)."""
    override = {"key_info": bytes(4)}  # VCEK, chip ID not masked
    if version >= 3:
        names = ("cpuid_family", "cpuid_model", "cpuid_stepping")
        override |= dict(zip(names, GENOA_CPUID, strict=True))
    raw = patterned_report(version, **override)
    values = expected(version, raw)
    key, vcek = genoa.vek(tcb_parts(values["reported_tcb"], "Genoa"), hwid=values["chip_id"])
    r, s = decode_dss_signature(key.sign(bytes(raw[:SIGNED]), ec.ECDSA(hashes.SHA384())))
    raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
    raw[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(raw), vcek


@pytest.mark.parametrize("version", VERSIONS)
def test_claims_carry_every_pinned_field(
    genoa: FakeAmd, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    monkeypatch.setitem(roots.AMD_ARK_SHA256, "Genoa", fingerprint(genoa.ark))
    raw, vcek = signed_report(genoa, version)
    claims = amd.verify_report(raw, at=AT, vcek=vcek, chain=genoa.chain())
    v = expected(version, raw)
    assert claims.measurements == {
        "measurement": v["measurement"].hex(),
        "host_data": v["host_data"].hex(),
        "policy": v["policy"],
        "vmpl": v["vmpl"],
        "guest_svn": v["guest_svn"],
        "id_key_digest": v["id_key_digest"].hex(),
        "author_key_digest": v["author_key_digest"].hex(),
    }
    assert claims.report_data == v["report_data"].hex()
    assert claims.debug is bool(v["policy"] >> 19 & 1)  # POLICY.DEBUG is bit 19
    assert claims.platform == {
        "chip_id": v["chip_id"].hex(),
        "product": "Genoa",
        "signing_key": "vcek",
        **{
            k: tcb_text(v[k], "Genoa")
            for k in ("reported_tcb", "launch_tcb", "committed_tcb", "current_tcb")
        },
        "amd_crl": "unchecked",
    }
    assert claims.quote_version == version
