"""Recognising evidence in every accepted encoding, and refusing the rest."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl.errors import VerificationError
from secfl.tee._evidence import Evidence, detect_kind

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


# --- configfs-tsm JSON as real tools save it --------------------------------------------

#: Provider names as the kernel's configfs-tsm ``provider`` attribute reads (with its
#: newline) and as tools that save it verbatim, or pad it, leave them.
PROVIDER_SPELLINGS = ["{}\n", "{}", " {}\r\n", "\t{} ", "{}\n\n"]
REAL_PROVIDERS = [
    ("amd/snp_milan_report.bin", "sev_guest"),
    ("intel/tdx_v4_quote.bin", "tdx_guest"),
]


def _tsm_json(raw: bytes, provider: str) -> bytes:
    return json.dumps({"outblob": _b64(raw), "provider": provider}).encode()


@pytest.mark.parametrize("spelling", PROVIDER_SPELLINGS, ids=repr)
@pytest.mark.parametrize(("name", "provider"), REAL_PROVIDERS)
def test_provider_with_a_trailing_newline_is_accepted(
    vectors: Path, name: str, provider: str, spelling: str
) -> None:
    raw = (vectors / name).read_bytes()
    ev = Evidence.parse(_tsm_json(raw, spelling.format(provider)))
    assert (ev.kind, ev.quote, ev.provider) == (KNOWN[name], raw, provider)
    assert json.loads(ev.to_json())["provider"] == provider


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ("nope\n", "^malformed evidence JSON: unknown provider 'nope'"),
        ("sev_guest\nx", "^malformed evidence JSON: unknown provider 'sev_guest\\\\nx'"),
        ("sev guest", "^malformed evidence JSON: unknown provider 'sev guest'"),
        ("\n", "^malformed evidence JSON: 'provider' is empty"),
        ("tdx_guest\n", "^kind: provider 'tdx_guest' produced snp evidence"),
        ("sev_guest\u00a0", "unknown provider"),  # only ASCII whitespace is a tool's leftover
    ],
)
def test_unknown_or_mismatched_providers_are_refused_in_one_line(
    vectors: Path, provider: str, message: str
) -> None:
    raw = (vectors / "amd/snp_milan_report.bin").read_bytes()
    with pytest.raises(VerificationError, match=message) as info:
        Evidence.parse(_tsm_json(raw, provider))
    assert "\n" not in str(info.value) and "\r" not in str(info.value)


def test_deeply_nested_json_is_refused_not_a_recursion_error() -> None:
    deep = b'{"outblob": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(VerificationError, match="^malformed evidence JSON: "):
        Evidence.parse(deep)


def _secfl(*args: str) -> subprocess.CompletedProcess[str]:
    """``secfl ARGS`` as a real process, the way a script or an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_attest_verify_reads_kernel_provider_names_as_a_process(
    vectors: Path, tmp_path: Path
) -> None:
    """The real vectors, rewrapped as the kernel's provider attribute leaves them."""
    snp = tmp_path / "snp.json"
    snp.write_bytes(_tsm_json((vectors / "amd/snp_milan_report.bin").read_bytes(), "sev_guest\n"))
    done = _secfl(
        "attest", "verify", str(snp),
        "--vcek", str(vectors / "amd/snp_milan_vcek.der"),
        "--chain", str(vectors / "amd/ask_ark_milan.pem"),
        "--at", "2024-06-01",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)
    assert claims["kind"] == "snp" and claims["measurements"]["measurement"].startswith("7a1e5c26")

    tdx = tmp_path / "tdx.json"
    tdx.write_bytes(_tsm_json((vectors / "intel/tdx_v4_quote.bin").read_bytes(), "tdx_guest\n"))
    done = _secfl("attest", "verify", str(tdx), "--at", "2025-07-01")
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)
    assert claims["kind"] == "tdx" and claims["measurements"]["mrtd"].startswith("91eb2b44")

    tdx.write_bytes(_tsm_json((vectors / "intel/tdx_v4_quote.bin").read_bytes(), "sev_guest\n"))
    done = _secfl("attest", "verify", str(tdx), "--at", "2025-07-01")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "error: kind: provider 'sev_guest' produced tdx evidence\n"
