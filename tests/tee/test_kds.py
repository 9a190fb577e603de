"""The KDS fetcher, against a local HTTP server that serves the real AMD vectors.

Never the real network: the server listens on 127.0.0.1 (port 0) in a thread and
answers at the paths KDS uses; requests are recorded to check what the client asks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from secfl.errors import FetchError
from secfl.tee import _amd as amd
from secfl.tee._kds import KdsClient
from secfl.tee._snp_report import parse_report
from tests.conftest import utc
from tests.localhttp import LocalServer, local_http, local_server


@pytest.fixture
def kds(vectors: Path) -> Iterator[LocalServer]:
    amd_dir = vectors / "amd"
    report = parse_report((amd_dir / "snp_milan_report.bin").read_bytes())
    chain = (amd_dir / "ask_ark_milan.pem").read_bytes()
    with local_server() as server:
        vcek_url = f"/vcek/v1/Milan/{report.chip_id.hex()}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115"
        server.serve_file(vcek_url, (amd_dir / "snp_milan_vcek.der").read_bytes())
        server.serve_file("/vcek/v1/Milan/cert_chain", chain)
        server.serve_file("/vlek/v1/Milan/cert_chain", chain)
        server.serve_file("/vcek/v1/Genoa/cert_chain", b"<html>not a certificate</html>")
        yield server


def _client(kds: LocalServer, cache: Path | None) -> KdsClient:
    return KdsClient(kds.url, http=local_http(cache))


def test_fetched_certificates_verify_the_report_and_are_cached(
    vectors: Path, kds: LocalServer, tmp_path: Path
) -> None:
    raw = (vectors / "amd/snp_milan_report.bin").read_bytes()
    report = parse_report(raw)
    with _client(kds, tmp_path) as client:
        vcek = client.get_vcek(raw, "Milan")
        chain = client.get_chain("Milan")
    assert vcek == (vectors / "amd/snp_milan_vcek.der").read_bytes()
    claims = amd.verify_report(raw, at=utc("2024-06-01"), vcek=vcek, chain=chain)
    assert claims.platform["product"] == "Milan"

    first = urlsplit(kds.requests[0])
    assert first.path == f"/vcek/v1/Milan/{report.chip_id.hex()}"
    assert parse_qs(first.query) == {
        "blSPL": ["3"],
        "teeSPL": ["0"],
        "snpSPL": ["8"],
        "ucodeSPL": ["115"],
    }
    assert kds.requests[1] == "/vcek/v1/Milan/cert_chain"

    # a second client over the same cache directory does not ask the server again
    with _client(kds, tmp_path) as again:
        assert again.get_certs(report, "Milan") == (vcek, chain)
    assert len(kds.requests) == 2


def test_vlek_chain_path_and_errors(vectors: Path, kds: LocalServer) -> None:
    with _client(kds, None) as client:
        assert client.get_chain("Milan", vlek=True).startswith(b"-----BEGIN CERTIFICATE-----")
        assert kds.requests[-1] == "/vlek/v1/Milan/cert_chain"
        with pytest.raises(FetchError, match="answered HTTP 404"):
            client.get_chain("Turin")
        with pytest.raises(FetchError, match="did not return a PEM certificate chain"):
            client.get_chain("Genoa")
        with pytest.raises(FetchError, match="unknown product 'Rome'"):
            client.get_chain("Rome")
        vlek_report = (vectors / "amd/snp_vlek_report.bin").read_bytes()
        with pytest.raises(FetchError, match="signed by a VLEK, not a VCEK"):
            client.get_vcek(vlek_report)
        milan = (vectors / "amd/snp_milan_report.bin").read_bytes()
        with pytest.raises(FetchError, match="does not name its product line"):
            client.get_vcek(milan)
        with pytest.raises(FetchError, match="cannot read the report"):
            client.get_vcek(b"\x02\x00\x00\x00", "Milan")


def test_a_bad_cached_body_is_fetched_again(
    vectors: Path, kds: LocalServer, tmp_path: Path
) -> None:
    raw = (vectors / "amd/snp_milan_report.bin").read_bytes()
    with _client(kds, tmp_path) as client:
        url = client.vcek_url(raw, "Milan")
        good = client.get_vcek(raw, "Milan")
        for body in tmp_path.glob("*.body"):
            body.write_bytes(b"garbage")
        assert client.get_vcek(raw, "Milan") == good
    assert len(kds.requests) == 2 and all(url.endswith(r) for r in kds.requests)


def test_urls_for_turin_and_from_cpuid(vectors: Path) -> None:
    # a v3 report from a Turin CPU (family 1Ah): an 8-byte hwID and fmcSPL first
    raw = bytearray((vectors / "amd/snp_vlek_report.bin").read_bytes())
    raw[0x48] = 0  # signed by a VCEK
    raw[0x180:0x188] = bytes([1, 2, 3, 4, 0, 0, 0, 0x45])
    raw[0x188:0x18B] = bytes([0x1A, 0x02, 0x00])
    raw[0x1A0:0x1E0] = bytes(range(1, 9)) + bytes(56)
    client = KdsClient(cache_dir=None)
    assert client.vcek_url(bytes(raw)) == (
        "https://kdsintf.amd.com/vcek/v1/Turin/0102030405060708"
        "?fmcSPL=1&blSPL=2&teeSPL=3&snpSPL=4&ucodeSPL=69"
    )
    with pytest.raises(FetchError, match="comes from a Turin CPU, not Milan"):
        client.vcek_url(bytes(raw), "Milan")
    raw[0x48] = 0b10  # MASK_CHIP_ID
    with pytest.raises(FetchError, match="chip_id is masked"):
        client.vcek_url(bytes(raw))
    assert (
        client.chain_url("Genoa", vlek=True) == "https://kdsintf.amd.com/vlek/v1/Genoa/cert_chain"
    )
    client.close()
