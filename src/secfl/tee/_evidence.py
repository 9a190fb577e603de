"""Attestation evidence as it travels: the raw quote or report plus what came with it.

Accepted encodings (``Evidence.parse`` with ``kind="auto"`` recognises each):

- raw binary: an Intel DCAP quote (SGX v3, TDX v4/v5), an AMD SEV-SNP report
  (1184 bytes), or a secfl simulated quote; trailing zero padding is tolerated;
- the same as hex text;
- the configfs-tsm JSON form ``{"outblob", "auxblob", "provider"}`` with
  base64url fields (``auxblob`` optional), as ``secfl attest quote`` writes it.

The kernel's ``provider`` attribute reads ``"sev_guest\n"``, and tools save it
verbatim: ASCII whitespace around the provider name is dropped before it is
checked; anything else that is not a known provider (or the evidence's kind) is
refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import string
from dataclasses import dataclass
from typing import Literal

from secfl.errors import VerificationError
from secfl.tee._claims import KINDS, Kind

__all__ = [
    "INTEL_TEE_TYPES",
    "PROVIDERS",
    "SIMULATED_MAGIC",
    "SNP_REPORT_SIZE",
    "Evidence",
    "KindOrAuto",
    "detect_kind",
]

KindOrAuto = Kind | Literal["auto"]

SIMULATED_MAGIC = b"SECFLSIM"
SNP_REPORT_SIZE = 1184
INTEL_TEE_TYPES: dict[int, Kind] = {0x00000000: "sgx", 0x00000081: "tdx"}
PROVIDERS: dict[str, Kind] = {"tdx_guest": "tdx", "sev_guest": "snp"}
_HEX = set(string.hexdigits.encode() + string.whitespace.encode())
_SHOWN = 40  # characters of an unknown provider name quoted back in a refusal


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence: ``quote`` is what the TEE signed; ``aux`` carries
    certificates that came with it (the SNP configfs-tsm certificate table)."""

    kind: Kind
    quote: bytes
    aux: bytes | None = None
    provider: str | None = None

    @classmethod
    def parse(cls, data: bytes, kind: KindOrAuto = "auto") -> Evidence:
        """Recognise ``data`` in any accepted encoding; refuse a kind mismatch."""
        if kind != "auto" and kind not in KINDS:
            raise VerificationError(f"unknown evidence kind '{kind}' (one of {', '.join(KINDS)})")
        evidence = _parse(data)
        if kind != "auto" and evidence.kind != kind:
            raise VerificationError(f"kind: evidence is {evidence.kind}, not {kind}")
        return evidence

    def to_json(self) -> str:
        """The configfs-tsm JSON form (base64url, no padding)."""
        doc: dict[str, str] = {"outblob": _b64(self.quote)}
        if self.aux:
            doc["auxblob"] = _b64(self.aux)
        doc["provider"] = self.provider or {v: k for k, v in PROVIDERS.items()}.get(
            self.kind, self.kind
        )
        return json.dumps(doc, sort_keys=True)

    def to_bytes(self) -> bytes:
        """Raw bytes when nothing came alongside, else the JSON form."""
        return self.quote if self.aux is None else self.to_json().encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: object, field: str) -> bytes:
    if not isinstance(text, str):
        raise VerificationError(f"malformed evidence JSON: '{field}' is not a string")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(f"malformed evidence JSON: '{field}' is not base64url") from None


def _parse(data: bytes) -> Evidence:
    if not data:
        raise VerificationError("malformed evidence: empty input")
    head = data.lstrip()
    if head.startswith(b"{"):
        return _parse_json(head)
    if all(b in _HEX for b in data[:4096]) and data.strip():
        try:
            raw = bytes.fromhex(data.decode("ascii"))
        except ValueError:
            raise VerificationError("malformed evidence: hex text with an odd digit") from None
        return Evidence(kind=detect_kind(raw), quote=raw)
    return Evidence(kind=detect_kind(data), quote=data)


def _parse_json(data: bytes) -> Evidence:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"malformed evidence JSON: {exc}") from None
    except RecursionError:
        raise VerificationError("malformed evidence JSON: nested too deeply") from None
    if not isinstance(doc, dict) or "outblob" not in doc:
        raise VerificationError("malformed evidence JSON: expected an object with 'outblob'")
    unknown = set(doc) - {"outblob", "auxblob", "provider"}
    if unknown:
        raise VerificationError(f"malformed evidence JSON: unknown field '{sorted(unknown)[0]}'")
    quote = _unb64(doc["outblob"], "outblob")
    aux = _unb64(doc["auxblob"], "auxblob") if doc.get("auxblob") else None
    kind = detect_kind(quote)
    provider = _provider(doc.get("provider"), kind)
    return Evidence(kind=kind, quote=quote, aux=aux, provider=provider)


def _provider(value: object, kind: Kind) -> str | None:
    """The provider name without the whitespace tools leave around it, checked against
    ``kind``: a configfs-tsm provider must have produced this kind of evidence, and any
    other name must be the kind itself (as :meth:`Evidence.to_json` writes for SGX)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise VerificationError("malformed evidence JSON: 'provider' is not a string")
    name = value.strip(string.whitespace)
    if not name:
        raise VerificationError(
            "malformed evidence JSON: 'provider' is empty (omit it, or give the configfs-tsm "
            f"provider: {', '.join(PROVIDERS)})"
        )
    expected = PROVIDERS.get(name)
    if expected is None and name != kind:
        shown = name.encode("unicode_escape").decode("ascii")[:_SHOWN]
        raise VerificationError(
            f"malformed evidence JSON: unknown provider '{shown}' (one of {', '.join(PROVIDERS)})"
        )
    if expected is not None and expected != kind:
        raise VerificationError(f"kind: provider '{name}' produced {kind} evidence")
    return name


def detect_kind(raw: bytes) -> Kind:
    """Tell an Intel quote, an SNP report and a simulated quote apart by their headers."""
    if raw.startswith(SIMULATED_MAGIC):
        return "simulated"
    if len(raw) < 8:
        raise VerificationError(f"malformed evidence: {len(raw)} bytes is too short for any kind")
    version = int.from_bytes(raw[0:2], "little")
    key_type = int.from_bytes(raw[2:4], "little")
    if key_type in (2, 3) and version in (3, 4, 5):
        tee = int.from_bytes(raw[4:8], "little")
        if tee in INTEL_TEE_TYPES:
            return INTEL_TEE_TYPES[tee]
        raise VerificationError(f"malformed evidence at offset 4: unknown Intel TEE type {tee:#x}")
    snp_version = int.from_bytes(raw[0:4], "little")
    if snp_version in (2, 3, 4, 5) and len(raw) >= SNP_REPORT_SIZE:
        return "snp"
    raise VerificationError(
        "unrecognised evidence: not an Intel DCAP quote, an SEV-SNP report or a simulated quote"
    )
