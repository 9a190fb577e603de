"""The AMD SEV-SNP wire formats: the ATTESTATION_REPORT and its certificate table.

Layout per the SEV-SNP firmware ABI specification (AMD 56860, Table 23
"ATTESTATION_REPORT Structure"), report versions 2 to 5, 1184 bytes:

- v2: the original layout;
- v3 (ABI 1.56) adds the CPUID family/model/stepping at 0x188, which names the
  product line; v4 keeps the v3 layout;
- v5 (ABI 1.58) adds LAUNCH_MIT_VECTOR (0x1F8) and CURRENT_MIT_VECTOR (0x200).

Everything outside the defined fields is reserved and must be zero; a report that
says otherwise is refused rather than guessed at. The signature (ECDSA P-384 with
SHA-384, r and s as 72-byte little-endian integers) covers bytes [0, 0x2A0); the
bytes after r and s are not signed, so they too must be zero.

The certificate table is what an extended report request (and configfs-tsm's
``auxblob``) returns beside the report: the VCEK or VLEK, ASK or ASVK and ARK.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Final, Literal

from secfl._internal.binary import Reader

REPORT_SIZE: Final = 0x4A0
SIGNED_SIZE: Final = 0x2A0
SIG_COMPONENT_SIZE: Final = 72
P384_SIZE: Final = 48
SUPPORTED_VERSIONS: Final = (2, 3, 4, 5)
ECDSA_P384_SHA384: Final = 1
POLICY_DEBUG_BIT: Final = 19

Product = Literal["Milan", "Genoa", "Turin"]
PRODUCTS: Final[tuple[Product, ...]] = ("Milan", "Genoa", "Turin")
SigningKey = Literal["vcek", "vlek", "none"]
SIGNING_KEYS: Final[dict[int, SigningKey]] = {0: "vcek", 1: "vlek", 7: "none"}


@dataclass(frozen=True)
class SnpReport:
    """One parsed SEV-SNP attestation report; byte fields are raw, integers decoded."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key_value: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_family: int | None
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes
    signature_s: bytes
    raw: bytes = field(repr=False)

    @property
    def debug(self) -> bool:
        """The guest policy allows the host to debug (decrypt) the guest."""
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    @property
    def signing_key(self) -> SigningKey:
        return SIGNING_KEYS[self.signing_key_value]

    @property
    def signed_bytes(self) -> bytes:
        """Exactly what the report signature covers."""
        return self.raw[:SIGNED_SIZE]

    @property
    def product(self) -> Product | None:
        """The product line from the CPUID fields (v3 and later), else ``None``."""
        if self.cpuid_family is None or self.cpuid_model is None:
            return None
        return product_from_cpuid(self.cpuid_family, self.cpuid_model)


def product_from_cpuid(family: int, model: int) -> Product | None:
    """Map a combined CPUID family/model to the SEV-SNP product line AMD KDS uses.

    Zen 3 EPYC (family 19h, models 00h-0Fh) is Milan; Zen 4 EPYC (family 19h,
    models 10h-1Fh Genoa/Bergamo, A0h-AFh Siena) is certified under Genoa; Zen 5
    EPYC (family 1Ah, models 00h-1Fh) is Turin. Anything else has no SNP product.
    """
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"
    if family == 0x1A and model <= 0x1F:
        return "Turin"
    return None


def tcb_parts(raw: int, product: Product) -> dict[str, int]:
    """Split a TCB_VERSION into its security patch levels, named as in KDS URLs.

    Milan and Genoa: byte 0 bootloader, 1 TEE, 6 SNP, 7 microcode.
    Turin: byte 0 FMC, 1 bootloader, 2 TEE, 3 SNP, 7 microcode.
    """
    b = raw.to_bytes(8, "little")
    if product == "Turin":
        return {"fmcSPL": b[0], "blSPL": b[1], "teeSPL": b[2], "snpSPL": b[3], "ucodeSPL": b[7]}
    return {"blSPL": b[0], "teeSPL": b[1], "snpSPL": b[6], "ucodeSPL": b[7]}


#: A security patch level's name in claims and in a policy's ``min_snp_tcb``, by its
#: name in KDS URLs and VCEK extensions.
SPL_NAMES: Final[dict[str, str]] = {
    "fmcSPL": "fmc",
    "blSPL": "bootloader",
    "teeSPL": "tee",
    "snpSPL": "snp",
    "ucodeSPL": "microcode",
}


def tcb_text(raw: int, product: Product) -> str:
    """A TCB_VERSION as claims show it: ``bootloader=3,tee=0,snp=8,microcode=115``
    (Turin: ``fmc=N,`` first)."""
    return ",".join(f"{SPL_NAMES[k]}={v}" for k, v in tcb_parts(raw, product).items())


def tcb_from_text(text: object) -> dict[str, int] | None:
    """The SPLs of a :func:`tcb_text` (``None`` when ``text`` is not one)."""
    if not isinstance(text, str) or not text:
        return None
    parts: dict[str, int] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name not in SPL_NAMES.values() or name in parts or not value.isdigit():
            return None
        parts[name] = int(value)
    return parts


def parse_report(raw: bytes) -> SnpReport:
    """Parse a report (1184 bytes, trailing zero padding tolerated) or refuse it.

    Every malformation is a ``VerificationError("malformed report at offset N: ...")``.
    """
    r = Reader(raw, what="report")
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise r.malformed(f"report version {version} is not supported (2 to 5)", 0)
    if len(raw) < REPORT_SIZE:
        raise r.malformed(f"a report is {REPORT_SIZE} bytes, got {len(raw)}", len(raw))
    guest_svn = r.u32("guest_svn")
    policy = r.u64("policy")
    family_id = r.bytes(16, "family_id")
    image_id = r.bytes(16, "image_id")
    vmpl = r.u32("vmpl")
    signature_algo = r.u32("signature_algo")
    if signature_algo != ECDSA_P384_SHA384:
        raise r.malformed(f"signature_algo {signature_algo} is not 1 (ECDSA P-384 SHA-384)", 0x34)
    current_tcb = r.u64("current_tcb")
    platform_info = r.u64("platform_info")
    key_info = r.u32("key info")
    if key_info >> 5:
        raise r.malformed(f"reserved bits 5-31 of the key info are set ({key_info:#x})", 0x48)
    signing_key_value = key_info >> 2 & 7
    if signing_key_value not in SIGNING_KEYS:
        raise r.malformed(f"signing_key {signing_key_value} is reserved", 0x48)
    _zero(r, 4, "reserved")
    report_data = r.bytes(64, "report_data")
    measurement = r.bytes(48, "measurement")
    host_data = r.bytes(32, "host_data")
    id_key_digest = r.bytes(48, "id_key_digest")
    author_key_digest = r.bytes(48, "author_key_digest")
    report_id = r.bytes(32, "report_id")
    report_id_ma = r.bytes(32, "report_id_ma")
    reported_tcb = r.u64("reported_tcb")
    family = model = stepping = None
    if version >= 3:
        family, model, stepping = r.u8("cpuid_fam_id"), r.u8("cpuid_mod_id"), r.u8("cpuid_step")
    _zero(r, 0x1A0 - r.offset, "reserved")
    chip_id = r.bytes(64, "chip_id")
    committed_tcb = r.u64("committed_tcb")
    current_build, current_minor, current_major = r.u8("build"), r.u8("minor"), r.u8("major")
    _zero(r, 1, "reserved")
    committed_build, committed_minor, committed_major = (
        r.u8("build"),
        r.u8("minor"),
        r.u8("major"),
    )
    _zero(r, 1, "reserved")
    launch_tcb = r.u64("launch_tcb")
    launch_mit = current_mit = None
    if version >= 5:
        launch_mit, current_mit = r.u64("launch_mit_vector"), r.u64("current_mit_vector")
    _zero(r, SIGNED_SIZE - r.offset, "reserved")
    sig_r = _sig_component(r, "signature r")
    sig_s = _sig_component(r, "signature s")
    _zero(r, REPORT_SIZE - r.offset, "reserved signature bytes")
    r.expect_zero_tail()
    return SnpReport(
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=family_id,
        image_id=image_id,
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=current_tcb,
        platform_info=platform_info,
        author_key_en=bool(key_info & 1),
        mask_chip_key=bool(key_info & 2),
        signing_key_value=signing_key_value,
        report_data=report_data,
        measurement=measurement,
        host_data=host_data,
        id_key_digest=id_key_digest,
        author_key_digest=author_key_digest,
        report_id=report_id,
        report_id_ma=report_id_ma,
        reported_tcb=reported_tcb,
        cpuid_family=family,
        cpuid_model=model,
        cpuid_stepping=stepping,
        chip_id=chip_id,
        committed_tcb=committed_tcb,
        current_build=current_build,
        current_minor=current_minor,
        current_major=current_major,
        committed_build=committed_build,
        committed_minor=committed_minor,
        committed_major=committed_major,
        launch_tcb=launch_tcb,
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=sig_r,
        signature_s=sig_s,
        raw=bytes(raw[:REPORT_SIZE]),
    )


def _zero(r: Reader, n: int, field_name: str) -> None:
    start = r.offset
    data = r.bytes(n, field_name)
    if data.strip(b"\x00"):
        first = start + next(i for i, b in enumerate(data) if b)
        raise r.malformed(f"{field_name} byte is not zero", first)


def _sig_component(r: Reader, name: str) -> bytes:
    """A 72-byte little-endian integer of which only the low 48 bytes may be set."""
    start = r.offset
    value = r.bytes(SIG_COMPONENT_SIZE, name)
    if value[P384_SIZE:].strip(b"\x00"):
        first = start + P384_SIZE + next(i for i, b in enumerate(value[P384_SIZE:]) if b)
        raise r.malformed(f"{name} is wider than P-384 (bytes past 48 must be zero)", first)
    return value


# --- the certificate table (configfs-tsm auxblob, GHCB extended report) ------------

#: Certificate-table GUIDs (AMD GHCB specification 56421, MSG_REPORT_REQ). AMD names
#: no separate GUID for the ASVK: like go-sev-guest, the ASK slot carries the ASVK
#: when the report is VLEK-signed; roles are checked by name and signature anyway.
CERT_GUIDS: Final[dict[str, uuid.UUID]] = {
    "vcek": uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    "vlek": uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
    "ask": uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),
    "ark": uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
}
_TABLE_ALIASES: Final = {"asvk": "ask"}
# Producers (AMD sev-guest, virtee/sev, go-sev-guest) write GUIDs in RFC 4122 byte
# order; the mixed-endian (EFI) form is accepted too. The eight encodings are distinct.
_GUID_ROLES: Final[dict[bytes, str]] = {
    **{g.bytes: role for role, g in CERT_GUIDS.items()},
    **{g.bytes_le: role for role, g in CERT_GUIDS.items()},
}
_ENTRY_SIZE: Final = 24


#: Entries a certificate table may hold: the known roles (VCEK or VLEK, ASK or ASVK,
#: ARK) and a few of a vendor's own; scanning thousands was quadratic, before any
#: signature was checked.
MAX_CERT_ENTRIES = 16


def parse_cert_table(aux: bytes) -> dict[str, bytes]:
    """Read an SNP certificate table into {role: DER}.

    Entries are GUID (16 bytes), offset (u32), length (u32), ended by an all-zero
    entry; offsets count from the table start. Known GUIDs map to ``vcek``, ``vlek``,
    ``ask`` (which may hold the ASVK) and ``ark``; others keep their GUID string. An
    empty or all-zero table (the host supplied no certificates) gives ``{}``.
    """
    if not aux:
        return {}
    r = Reader(aux, what="certificate table")
    entries: list[tuple[str, int, int, int]] = []
    roles: set[str] = set()
    while True:  # until the all-zero entry; running out of bytes first is malformed
        at = r.offset
        guid = r.bytes(16, "entry GUID")
        offset, length = r.u32("entry offset"), r.u32("entry length")
        if not guid.strip(b"\x00") and offset == 0 and length == 0:
            break
        if len(entries) >= MAX_CERT_ENTRIES:  # a host's table holds a few certificates
            raise r.malformed(f"more than {MAX_CERT_ENTRIES} entries", at)
        role = _GUID_ROLES.get(guid, str(uuid.UUID(bytes=guid)))
        if role in roles:
            raise r.malformed(f"a second {role} entry", at)
        roles.add(role)
        entries.append((role, offset, length, at))
    header_end = r.offset
    table: dict[str, bytes] = {}
    for role, offset, length, at in entries:
        if length == 0:
            raise r.malformed(f"the {role} entry is empty", at)
        if offset < header_end or offset + length > len(aux):
            raise r.malformed(
                f"the {role} entry points to [{offset}, {offset + length}), outside the "
                f"certificates area [{header_end}, {len(aux)})",
                at,
            )
        table[role] = bytes(aux[offset : offset + length])
    return table


def build_cert_table(certs: dict[str, bytes]) -> bytes:
    """Write {role: DER} (roles vcek, vlek, ask, asvk, ark) as an SNP certificate table."""
    roles = [_TABLE_ALIASES.get(role, role) for role in certs]
    unknown = sorted(set(roles) - set(CERT_GUIDS))
    if unknown:
        raise ValueError(f"unknown certificate role '{unknown[0]}' (one of {sorted(CERT_GUIDS)})")
    if len(set(roles)) != len(roles):
        raise ValueError("the ASK and the ASVK share one table slot; give only one")
    header = bytearray()
    body = bytearray()
    start = _ENTRY_SIZE * (len(certs) + 1)
    for role, data in zip(roles, certs.values(), strict=True):
        header += CERT_GUIDS[role].bytes
        header += (start + len(body)).to_bytes(4, "little") + len(data).to_bytes(4, "little")
        body += data
    return bytes(header + bytes(_ENTRY_SIZE) + body)
