"""The KDS fetcher, against a local HTTP server that serves the real AMD vectors.

Never the real network: the server listens on 127.0.0.1 (port 0) in a thread and
answers at the paths KDS uses; requests are recorded to check what the client asks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from secfl._internal.httpcache import CachedHttp
from secfl.errors import FetchError
from secfl.tee import amd
from secfl.tee._snp_report import parse_report
from secfl.tee.kds import KdsClient
from tests.conftest import utc


@dataclass
class FakeKds:
    """What the local server serves (path -> body) and the paths it was asked for."""

    routes: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def kds(vectors: Path) -> Iterator[FakeKds]:
    amd_dir = vectors / "amd"
    report = parse_report((amd_dir / "snp_milan_report.bin").read_bytes())
    state = FakeKds()
    vcek_path = f"/vcek/v1/Milan/{report.chip_id.hex()}"
    state.routes = {
        vcek_path: (amd_dir / "snp_milan_vcek.der").read_bytes(),
        "/vcek/v1/Milan/cert_chain": (amd_dir / "ask_ark_milan.pem").read_bytes(),
        "/vlek/v1/Milan/cert_chain": (amd_dir / "ask_ark_milan.pem").read_bytes(),
        "/vcek/v1/Genoa/cert_chain": b"<html>not a certificate</html>",
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.routes.get(urlsplit(self.path).path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _client(kds: FakeKds, cache: Path | None) -> KdsClient:
    http = CachedHttp(cache, client=httpx.Client(trust_env=False, timeout=5))
    return KdsClient(kds.url, http=http)


def test_fetched_certificates_verify_the_report_and_are_cached(
    vectors: Path, kds: FakeKds, tmp_path: Path
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


def test_vlek_chain_path_and_errors(vectors: Path, kds: FakeKds) -> None:
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


def test_a_bad_cached_body_is_fetched_again(vectors: Path, kds: FakeKds, tmp_path: Path) -> None:
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
