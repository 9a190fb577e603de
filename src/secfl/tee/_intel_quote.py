"""Binary layout of Intel DCAP quotes (v3, v4, v5), parsed without any cryptography.

The quote is untrusted input: every field is read through a bounds-checked
:class:`~secfl._internal.binary.Reader`, so truncation or an unexpected value
becomes ``VerificationError("malformed quote at offset N: ...")`` and nothing else.

Layouts (all integers little-endian)::

    header (48)  version u16 | att_key_type u16 | tee_type u32 | qe_svn u16 | pce_svn u16
                 | qe_vendor_id 16 | user_data 20
    v5 only      body_type u16 | body_size u32
    body         SGX enclave report (384) | TDX 1.0 TD report (584) | TDX 1.5 (648)
    sig_len u32, then the signature data:
      v3         signature 64 | attestation_key 64 | QE report 384 | QE report sig 64
                 | qe_auth u16+data | cert type u16 (=5) | size u32 | PCK chain PEM
      v4, v5     signature 64 | attestation_key 64 | cert type u16 (=6) | size u32 | {
                 QE report 384 | QE report sig 64 | qe_auth u16+data
                 | cert type u16 (=5) | size u32 | PCK chain PEM }

The signed part is the header, the v5 body descriptor and the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from secfl._internal.binary import Reader
from secfl.errors import VerificationError

HEADER_SIZE = 48
ATT_KEY_ECDSA_P256 = 2
TEE_SGX = 0x00000000
TEE_TDX = 0x00000081
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
ENCLAVE_REPORT_SIZE = 384
ECDSA_SIZE = 64

#: v5 body types: type -> (kind, size).
BODY_TYPES: dict[int, tuple[Literal["sgx", "tdx"], int]] = {
    1: ("sgx", 384),
    2: ("tdx", 584),
    3: ("tdx", 648),
}

# Field offsets inside an SGX enclave report (the ISV body and the QE report alike).
SGX_FIELDS = {
    "cpu_svn": (0, 16),
    "attributes": (48, 16),
    "mrenclave": (64, 32),
    "mrsigner": (128, 32),
    "isv_prod_id": (256, 2),
    "isv_svn": (258, 2),
    "report_data": (320, 64),
}

# Field offsets inside a TDX TD report (1.0; 1.5 appends tee_tcb_svn2 and mrservicetd).
TDX_FIELDS = {
    "tee_tcb_svn": (0, 16),
    "mrseam": (16, 48),
    "mrsignerseam": (64, 48),
    "seam_attributes": (112, 8),
    "td_attributes": (120, 8),
    "xfam": (128, 8),
    "mrtd": (136, 48),
    "mrconfigid": (184, 48),
    "mrowner": (232, 48),
    "mrownerconfig": (280, 48),
    "rtmr0": (328, 48),
    "rtmr1": (376, 48),
    "rtmr2": (424, 48),
    "rtmr3": (472, 48),
    "report_data": (520, 64),
    "tee_tcb_svn2": (584, 16),
    "mrservicetd": (600, 48),
}


@dataclass(frozen=True)
class Quote:
    """A parsed Intel DCAP quote: every field as bytes, nothing verified yet."""

    version: int
    att_key_type: int
    tee_type: int
    kind: Literal["sgx", "tdx"]
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    body_type: int
    body: bytes
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    data: bytes

    def field(self, name: str) -> bytes:
        """A named field of the body (see ``SGX_FIELDS`` / ``TDX_FIELDS``)."""
        table = SGX_FIELDS if self.kind == "sgx" else TDX_FIELDS
        start, size = table[name]
        if start + size > len(self.body):
            raise KeyError(name)
        return self.body[start : start + size]

    def qe_field(self, name: str) -> bytes:
        """A named field of the QE report (an SGX enclave report)."""
        start, size = SGX_FIELDS[name]
        return self.qe_report[start : start + size]

    @property
    def report_data(self) -> bytes:
        return self.field("report_data")

    @property
    def debug(self) -> bool:
        """SGX: ATTRIBUTES.FLAGS bit 1 (DEBUG); TDX: TDATTRIBUTES bit 0 (DEBUG)."""
        if self.kind == "sgx":
            return bool(self.field("attributes")[0] & 0x02)
        return bool(self.field("td_attributes")[0] & 0x01)

    def measurements(self) -> dict[str, str | int]:
        """The code identity: SGX mrenclave/mrsigner/isv_*; TDX mrtd, rtmrs and owners."""
        if self.kind == "sgx":
            return {
                "mrenclave": self.field("mrenclave").hex(),
                "mrsigner": self.field("mrsigner").hex(),
                "isv_prod_id": int.from_bytes(self.field("isv_prod_id"), "little"),
                "isv_svn": int.from_bytes(self.field("isv_svn"), "little"),
            }
        names = ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "mrowner"]
        names += ["mrownerconfig", "mrseam"]
        if self.body_type == 3:
            names.append("mrservicetd")
        return {name: self.field(name).hex() for name in names}


def parse_quote(raw: bytes) -> Quote:
    """Parse an Intel DCAP quote v3, v4 or v5; trailing zero padding is tolerated.

    Raises :class:`VerificationError` naming the offset of the first bad field;
    never any other exception, whatever ``raw`` holds.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise VerificationError(f"malformed quote at offset 0: expected bytes, not {type(raw)}")
    r = Reader(bytes(raw), what="quote")
    version = r.u16("version")
    if version not in (3, 4, 5):
        raise r.malformed(f"unsupported quote version {version} (3, 4 or 5)", 0)
    att_key_type = r.u16("attestation key type")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise r.malformed(f"attestation key type {att_key_type} is not ECDSA P-256 (2)", 2)
    tee_type = r.u32("tee type")
    kind: Literal["sgx", "tdx"]
    if tee_type == TEE_SGX:
        kind = "sgx"
    elif tee_type == TEE_TDX and version >= 4:
        kind = "tdx"
    else:
        raise r.malformed(f"tee type {tee_type:#x} is not valid in a v{version} quote", 4)
    qe_svn = r.u16("qe_svn")
    pce_svn = r.u16("pce_svn")
    qe_vendor_id = r.bytes(16, "qe_vendor_id")
    user_data = r.bytes(20, "user_data")

    if version == 5:
        at = r.offset
        body_type = r.u16("body type")
        body_size = r.u32("body size")
        if body_type not in BODY_TYPES:
            raise r.malformed(f"unknown v5 body type {body_type} (1, 2 or 3)", at)
        body_kind, expected = BODY_TYPES[body_type]
        if body_kind != kind:
            raise r.malformed(f"v5 body type {body_type} is not a {kind} body", at)
        if body_size != expected:
            raise r.malformed(f"v5 body type {body_type} has size {expected}, not {body_size}", at)
    else:
        body_type = 1 if kind == "sgx" else 2
        body_size = BODY_TYPES[body_type][1]
    body = r.bytes(body_size, "body")
    signed = r.data[: r.offset]

    len_at = r.offset
    sig_len = r.u32("signature data length")
    sig_start = r.offset
    signature = r.bytes(ECDSA_SIZE, "quote signature")
    attestation_key = r.bytes(ECDSA_SIZE, "attestation key")
    if version == 3:
        qe = _qe_certification(r)
    else:
        type_at = r.offset
        cert_type = r.u16("certification data type")
        if cert_type != CERT_QE_REPORT:
            raise r.malformed(
                f"certification data type {cert_type} is not QE report certification data (6)",
                type_at,
            )
        size_at = r.offset
        size = r.u32("certification data size")
        start = r.offset
        qe = _qe_certification(r)
        if r.offset - start != size:
            raise r.malformed(
                f"certification data size {size} but its content is {r.offset - start} bytes",
                size_at,
            )
    if r.offset - sig_start != sig_len:
        raise r.malformed(
            f"signature data length {sig_len} but the signature data is "
            f"{r.offset - sig_start} bytes",
            len_at,
        )
    data = r.data[: r.offset]
    r.expect_zero_tail()
    return Quote(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        kind=kind,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=qe_vendor_id,
        user_data=user_data,
        body_type=body_type,
        body=body,
        signed=signed,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe[0],
        qe_report_signature=qe[1],
        qe_auth_data=qe[2],
        pck_chain_pem=qe[3],
        data=data,
    )


def _qe_certification(r: Reader) -> tuple[bytes, bytes, bytes, bytes]:
    """QE report, its signature, the QE auth data and the PCK chain (cert type 5)."""
    qe_report = r.bytes(ENCLAVE_REPORT_SIZE, "QE report")
    qe_report_signature = r.bytes(ECDSA_SIZE, "QE report signature")
    auth_size = r.u16("QE auth data size")
    qe_auth_data = r.bytes(auth_size, "QE auth data")
    type_at = r.offset
    cert_type = r.u16("certification data type")
    if cert_type != CERT_PCK_CHAIN:
        raise r.malformed(
            f"certification data type {cert_type} is not a PCK certificate chain (5)", type_at
        )
    size = r.u32("PCK certificate chain size")
    pem = r.bytes(size, "PCK certificate chain")
    return qe_report, qe_report_signature, qe_auth_data, pem
