"""Recognising evidence in every accepted encoding, and refusing the rest."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl.errors import VerificationError
from secfl.tee.evidence import Evidence, detect_kind

KNOWN = {
    "intel/sgx_v3_quote.bin": "sgx",
    "intel/sgx_v3_occlum_quote.bin": "sgx",
    "intel/tdx_v4_quote.bin": "tdx",
    "intel/tdx_v4_quote_b.bin": "tdx",
    "intel/tdx_v5_quote_outdated.bin": "tdx",
    "amd/snp_milan_report.bin": "snp",
    "amd/snp_milan_report_b.bin": "snp",
    "amd/snp_vlek_report.bin": "snp",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_kind_of_every_real_vector_in_every_encoding(vectors: Path, name: str) -> None:
    raw = (vectors / name).read_bytes()
    assert detect_kind(raw) == KNOWN[name]
    for encoded in (raw, raw.hex().encode(), raw.hex().upper().encode() + b"\n"):
        ev = Evidence.parse(encoded)
        assert (ev.kind, ev.quote, ev.aux) == (KNOWN[name], raw, None)
    as_json = json.dumps({"outblob": _b64(raw)}).encode()
    assert Evidence.parse(as_json).quote == raw
    assert (
        Evidence.parse(Evidence(kind=KNOWN[name], quote=raw, aux=b"certs").to_json().encode()).aux
        == b"certs"
    )  # type: ignore[arg-type]


def test_configfs_provider_must_match_the_quote(vectors: Path) -> None:
    raw = (vectors / "amd/snp_milan_report.bin").read_bytes()
    ok = Evidence.parse(json.dumps({"outblob": _b64(raw), "provider": "sev_guest"}).encode())
    assert (ok.kind, ok.provider) == ("snp", "sev_guest")
    with pytest.raises(VerificationError, match="^kind: provider 'tdx_guest'"):
        Evidence.parse(json.dumps({"outblob": _b64(raw), "provider": "tdx_guest"}).encode())
    with pytest.raises(VerificationError, match="unknown provider"):
        Evidence.parse(json.dumps({"outblob": _b64(raw), "provider": "nope"}).encode())


def test_explicit_kind_mismatch_is_refused(vectors: Path) -> None:
    raw = (vectors / "intel/tdx_v4_quote.bin").read_bytes()
    with pytest.raises(VerificationError, match="^kind: evidence is tdx, not sgx"):
        Evidence.parse(raw, "sgx")
    with pytest.raises(VerificationError, match="unknown evidence kind"):
        Evidence.parse(raw, "tpm")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty input"),
        (b"\x03\x00", "too short"),
        (b"\x03\x00\x02\x00\x42\x00\x00\x00" + bytes(100), "unknown Intel TEE type"),
        (b"\x07" + bytes(2000), "unrecognised evidence"),
        (b"abc", "odd digit"),
        (b"{not json", "malformed evidence JSON"),
        (b'{"outblob": 5}', "'outblob' is not a string"),
        (b'{"outblob": "!!!"}', "not base64url"),
        (b'{"outblob": "AAAA", "extra": 1}', "unknown field 'extra'"),
        (b'{"auxblob": "AA"}', "expected an object with 'outblob'"),
    ],
)
def test_malformed_inputs_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        Evidence.parse(data)


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=4096), st.text(max_size=512).map(str.encode)))
def test_parse_fuzz(data: bytes) -> None:
    with contextlib.suppress(VerificationError):
        Evidence.parse(data)
