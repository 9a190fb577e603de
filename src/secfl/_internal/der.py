"""A minimal DER reader for the few ASN.1 values AMD puts in VCEK/VLEK extensions.

``cryptography`` hands AMD's private extensions over as raw ``extnValue`` bytes
(an INTEGER per security patch level, an IA5String product name, an OCTET STRING
or bare bytes for the hardware ID). Decoding them needs three tag types (and a
certificate's outer shape, see :func:`certificate_signature`), so a small strict
reader beats another dependency. Every error is a
:class:`VerificationError` that starts with the caller's ``what``.
"""

from __future__ import annotations

from secfl.errors import VerificationError

INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
IA5_STRING = 0x16
SEQUENCE = 0x30


def _fail(what: str, reason: str) -> VerificationError:
    return VerificationError(f"{what} is not valid DER ({reason})")


def read_tlv(data: bytes, what: str) -> tuple[int, bytes, bytes]:
    """Split one definite-length, single-byte-tag TLV off ``data``: (tag, value, rest)."""
    if len(data) < 2:
        raise _fail(what, f"{len(data)} bytes is too short for a tag and a length")
    tag, first = data[0], data[1]
    if tag & 0x1F == 0x1F:
        raise _fail(what, "multi-byte tags are not used here")
    if first < 0x80:
        length, start = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise _fail(what, "indefinite or oversized length")
        if len(data) < 2 + count:
            raise _fail(what, "truncated length")
        length = int.from_bytes(data[2 : 2 + count], "big")
        if length < 0x80 or data[2] == 0:
            raise _fail(what, "length is not minimally encoded")
        start = 2 + count
    if len(data) - start < length:
        raise _fail(what, f"value needs {length} bytes, {len(data) - start} left")
    return tag, data[start : start + length], data[start + length :]


def _single(data: bytes, tag: int, name: str, what: str) -> bytes:
    got, value, rest = read_tlv(data, what)
    if got != tag:
        raise _fail(what, f"expected {name} (tag {tag:#04x}), found tag {got:#04x}")
    if rest:
        raise _fail(what, f"{len(rest)} bytes after the {name}")
    return value


def integer(data: bytes, what: str) -> int:
    """Exactly one minimally encoded INTEGER; negative values are refused."""
    value = _single(data, INTEGER, "INTEGER", what)
    if not value:
        raise _fail(what, "empty INTEGER")
    if len(value) > 1 and (
        (value[0] == 0x00 and value[1] < 0x80) or (value[0] == 0xFF and value[1] >= 0x80)
    ):
        raise _fail(what, "INTEGER is not minimally encoded")
    if value[0] & 0x80:
        raise _fail(what, "negative INTEGER")
    return int.from_bytes(value, "big")


def ia5_string(data: bytes, what: str) -> str:
    """Exactly one IA5String (7-bit ASCII)."""
    value = _single(data, IA5_STRING, "IA5String", what)
    if any(b > 0x7F for b in value):
        raise _fail(what, "IA5String holds non-ASCII bytes")
    return value.decode("ascii")


def octet_string(data: bytes, what: str) -> bytes:
    """Exactly one OCTET STRING."""
    return _single(data, OCTET_STRING, "OCTET STRING", what)


def certificate_signature(data: bytes, what: str) -> bytes:
    """The signature bits of a DER Certificate, refusing a non-zero unused-bits count.

    ``cryptography`` accepts a signature BIT STRING that declares unused bits while
    its bytes still verify, so a certificate has more than one accepted encoding.
    Verifiers that must refuse every changed byte call this to close that gap.
    """
    tag, body, rest = read_tlv(data, what)
    if tag != SEQUENCE or rest:
        raise _fail(what, "not exactly one SEQUENCE")
    items = []
    while body:
        tag, value, body = read_tlv(body, what)
        items.append((tag, value))
    if [t for t, _ in items] != [SEQUENCE, SEQUENCE, BIT_STRING]:
        raise _fail(what, "not tbsCertificate, signatureAlgorithm, signatureValue")
    bits = items[2][1]
    if not bits or bits[0] != 0:
        raise _fail(what, "the signature BIT STRING declares unused bits")
    return bits[1:]
