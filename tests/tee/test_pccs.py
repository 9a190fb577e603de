"""PCCS / PCS collateral fetching, against a local server that serves the vectors.

Nothing here reaches the network: a ``ThreadingHTTPServer`` on 127.0.0.1 plays the
PCCS, and a dict plays Intel's PCS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote as urlquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl._internal.httpcache import Response
from secfl.errors import FetchError, VerificationError
from secfl.tee._intel import IntelCollateral, verify_quote
from secfl.tee._pccs import INTEL_PCS_URL, INTEL_ROOT_CA_CRL_URL, PccsClient, raw_members
from tests.conftest import utc
from tests.localhttp import LocalServer, Routes, local_http, local_server

# name, tee, fmspc, ca, verification time
CASES = [
    ("sgx_v3_quote", "sgx", "00A067110000", "processor", "2025-07-01"),
    ("tdx_v4_quote", "tdx", "B0C06F000000", "platform", "2025-07-01"),
    ("tdx_v5_quote_outdated", "tdx", "90C06F000000", "platform", "2026-03-01"),
]
IDS = [c[0] for c in CASES]


def pcs_routes(doc: dict[str, str], tee: str, fmspc: str, ca: str, *, spaced: bool) -> Routes:
    """The v4 API answers for one quote's collateral (``spaced``: pretty-printed JSON)."""
    sep = ",\n  " if spaced else ","

    def signed(key: str, raw: str, sig: str) -> bytes:
        if spaced:
            return f'{{\n  "{key}" : {raw}{sep}"signature": "{sig}"\n}}\n'.encode()
        return f'{{"{key}":{raw}{sep}"signature":"{sig}"}}'.encode()

    def chain(pem: str) -> str:
        return urlquote(pem, safe="")

    v4 = "/certification/v4"
    return {
        f"/{tee}{v4}/tcb?fmspc={fmspc}": (
            200,
            {"TCB-Info-Issuer-Chain": chain(doc["tcb_info_issuer_chain"])},
            signed("tcbInfo", doc["tcb_info"], doc["tcb_info_signature"]),
        ),
        f"/{tee}{v4}/qe/identity": (
            200,
            {"SGX-Enclave-Identity-Issuer-Chain": chain(doc["qe_identity_issuer_chain"])},
            signed("enclaveIdentity", doc["qe_identity"], doc["qe_identity_signature"]),
        ),
        f"/sgx{v4}/pckcrl?ca={ca}&encoding=der": (
            200,
            {"SGX-PCK-CRL-Issuer-Chain": chain(doc["pck_crl_issuer_chain"])},
            bytes.fromhex(doc["pck_crl"]),
        ),
        f"/sgx{v4}/rootcacrl": (200, {}, doc["root_ca_crl"].encode()),  # PCCS: hex text
    }


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with local_server() as state:
        yield state


def vector(vectors: Path, name: str) -> tuple[bytes, dict[str, str]]:
    intel = vectors / "intel"
    return (intel / f"{name}.bin").read_bytes(), json.loads(
        (intel / f"{name}.collateral.json").read_text()
    )


@pytest.mark.parametrize(("name", "tee", "fmspc", "ca", "at"), CASES, ids=IDS)
def test_fetched_collateral_verifies_like_the_file(
    vectors: Path,
    server: LocalServer,
    tmp_path: Path,
    name: str,
    tee: str,
    fmspc: str,
    ca: str,
    at: str,
) -> None:
    quote, doc = vector(vectors, name)
    server.routes = pcs_routes(doc, tee, fmspc, ca, spaced=name != "tdx_v4_quote")
    with PccsClient(server.url, http=local_http(tmp_path / "cache")) as client:
        fetched = client.get_collateral(quote)
    assert fetched == IntelCollateral.model_validate(doc)
    assert len(server.requests) == 4
    if name == "tdx_v5_quote_outdated":
        with pytest.raises(VerificationError, match="No matching TCB level"):
            verify_quote(quote, at=utc(at), collateral=fetched)
    else:
        assert verify_quote(quote, at=utc(at), collateral=fetched) == verify_quote(
            quote, at=utc(at), collateral=doc
        )


def test_second_fetch_comes_from_the_cache(
    vectors: Path, server: LocalServer, tmp_path: Path
) -> None:
    quote, doc = vector(vectors, "sgx_v3_quote")
    server.routes = pcs_routes(doc, "sgx", "00A067110000", "processor", spaced=True)
    cache = tmp_path / "cache"
    with PccsClient(server.url, http=local_http(cache)) as client:
        first = client.get_collateral(quote)
    hits = len(server.requests)
    server.routes = {}  # the server forgets everything: only the cache can answer
    with PccsClient(server.url + "/sgx/certification/v4/", cache, http=local_http(cache)) as c:
        assert c.get_collateral(quote) == first
    assert len(server.requests) == hits
    with (
        PccsClient(server.url, http=local_http(cache), refresh=True) as client,
        pytest.raises(FetchError, match="HTTP 404"),
    ):
        client.get_collateral(quote)


def test_default_client_and_cache_dir(vectors: Path, server: LocalServer, tmp_path: Path) -> None:
    quote, doc = vector(vectors, "tdx_v4_quote")
    server.routes = pcs_routes(doc, "tdx", "B0C06F000000", "platform", spaced=False)
    with PccsClient(server.url, tmp_path / "c") as client:
        assert client.get_collateral(quote).tcb_info == doc["tcb_info"]
    assert len(list((tmp_path / "c").glob("*.body"))) == 4


def _break(routes: Routes, suffix: str, *, status: int | None = None, **change: object) -> None:
    path = next(p for p in routes if suffix in p)
    old_status, headers, body = routes[path]
    headers = change.get("headers", headers)  # type: ignore[assignment]
    body = change.get("body", body)  # type: ignore[assignment]
    routes[path] = (status or old_status, headers, body)


@pytest.mark.parametrize(
    ("suffix", "change", "message"),
    [
        ("tcb?", {"status": 404}, "tcb?fmspc=00A067110000 answered HTTP 404"),
        ("tcb?", {"headers": {}}, "no tcb-info-issuer-chain header"),
        ("tcb?", {"headers": {"TCB-Info-Issuer-Chain": "x"}}, "holds no PEM"),
        ("tcb?", {"body": b"not json"}, "not a JSON object"),
        ("tcb?", {"body": b"\xff"}, "not a JSON object"),
        ("tcb?", {"body": b'{"tcbInfo":' + b"[" * 100_000}, "not a JSON object"),
        ("tcb?", {"body": b'{"tcbInfo":{},"tcbInfo":{},"signature":"00"}'}, "duplicate key"),
        ("tcb?", {"body": b'{"signature":"00"}'}, "no 'tcbInfo' object"),
        ("tcb?", {"body": b'{"tcbInfo":[],"signature":"00"}'}, "no 'tcbInfo' object"),
        ("tcb?", {"body": b'{"tcbInfo":{}}'}, "'signature' is not a hex string"),
        ("tcb?", {"body": b'{"tcbInfo":{},"signature":"xy"}'}, "'signature' is not a hex"),
        ("identity", {"status": 500}, "qe/identity answered HTTP 500"),
        ("identity", {"headers": {}}, "no sgx-enclave-identity-issuer-chain header"),
        ("pckcrl", {"body": b"\x30\x03abc"}, "not a CRL"),
        ("pckcrl", {"headers": {}}, "no sgx-pck-crl-issuer-chain header"),
        ("rootcacrl", {"body": b"abc"}, "odd number of digits"),
        ("rootcacrl", {"body": b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----"}, "PEM"),
        ("rootcacrl", {"status": 404}, "rootcacrl answered HTTP 404"),
    ],
)
def test_fetch_errors_name_the_url(
    vectors: Path, server: LocalServer, suffix: str, change: dict[str, object], message: str
) -> None:
    quote, doc = vector(vectors, "sgx_v3_quote")
    server.routes = pcs_routes(doc, "sgx", "00A067110000", "processor", spaced=False)
    _break(server.routes, suffix, **change)  # type: ignore[arg-type]
    with (
        PccsClient(server.url, http=local_http(None)) as client,
        pytest.raises(FetchError, match=r"^fetch: ") as info,
    ):
        client.get_collateral(quote)
    assert message in str(info.value)
    assert server.url in str(info.value)


def test_other_encodings_are_accepted(vectors: Path, server: LocalServer) -> None:
    """v3 header name, a DER root CRL, a PEM PCK CRL, upper-case hex."""
    quote, doc = vector(vectors, "sgx_v3_quote")
    routes = pcs_routes(doc, "sgx", "00A067110000", "processor", spaced=False)
    tcb_path = next(p for p in routes if "tcb?" in p)
    status, headers, body = routes[tcb_path]
    routes[tcb_path] = (
        status,
        {"SGX-TCB-Info-Issuer-Chain": headers["TCB-Info-Issuer-Chain"]},
        body,
    )
    root_path = next(p for p in routes if "rootcacrl" in p)
    routes[root_path] = (200, {}, bytes.fromhex(doc["root_ca_crl"]))
    crl_path = next(p for p in routes if "pckcrl" in p)
    crl = x509.load_der_x509_crl(bytes.fromhex(doc["pck_crl"]))
    pem = crl.public_bytes(serialization.Encoding.PEM)
    routes[crl_path] = (200, routes[crl_path][1], pem)
    server.routes = routes
    with PccsClient(server.url, http=local_http(None)) as client:
        fetched = client.get_collateral(quote)
    assert fetched == IntelCollateral.model_validate(doc)


def test_refetched_json_must_not_be_reserialised(vectors: Path, server: LocalServer) -> None:
    """The signature covers the served bytes: the same object re-serialised is refused."""
    quote, doc = vector(vectors, "tdx_v4_quote")
    pretty = dict(doc, tcb_info=json.dumps(json.loads(doc["tcb_info"]), indent=1))
    server.routes = pcs_routes(pretty, "tdx", "B0C06F000000", "platform", spaced=True)
    with PccsClient(server.url, http=local_http(None)) as client:
        fetched = client.get_collateral(quote)
    assert fetched.tcb_info == pretty["tcb_info"]  # kept byte for byte
    with pytest.raises(VerificationError, match="the TCB info signature does not verify"):
        verify_quote(quote, at=utc("2025-07-01"), collateral=fetched)


def test_malformed_quote_is_a_verification_error(server: LocalServer) -> None:
    with (
        PccsClient(server.url, http=local_http(None)) as client,
        pytest.raises(VerificationError, match="^malformed quote"),
    ):
        client.get_collateral(b"\x03\x00\x02\x00")
    assert not server.requests


class DictHttp:
    """Intel's PCS, played by a dict of URL -> response (no network)."""

    def __init__(self, answers: dict[str, Response]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def get(self, url: str, *, refresh: bool = False, offline: bool = False) -> Response:
        self.asked.append(url)
        if url not in self.answers:
            raise FetchError(f"fetch: GET {url} answered HTTP 404")
        return self.answers[url]

    def close(self) -> None:
        pass


def test_intel_pcs_root_crl_comes_from_the_distribution_point(vectors: Path) -> None:
    quote, doc = vector(vectors, "tdx_v4_quote")
    routes = pcs_routes(doc, "tdx", "B0C06F000000", "platform", spaced=False)
    answers = {
        INTEL_PCS_URL + path: Response(body, {k.lower(): v for k, v in headers.items()})
        for path, (_, headers, body) in routes.items()
        if "rootcacrl" not in path
    }
    root = x509.load_pem_x509_certificate(
        (vectors / "intel" / "intel_sgx_root_ca.pem").read_bytes()
    )
    points = root.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    root_crl = str(points[0].full_name[0].value)  # type: ignore[index]
    assert root_crl == INTEL_ROOT_CA_CRL_URL
    answers[root_crl] = Response(bytes.fromhex(doc["root_ca_crl"]), {})
    http = DictHttp(answers)
    client = PccsClient(INTEL_PCS_URL + "/tdx/certification/v4", http=http)  # type: ignore[arg-type]
    assert client.is_intel_pcs
    assert client.get_collateral(quote) == IntelCollateral.model_validate(doc)
    assert http.asked[-1] == root_crl
    assert all(url.startswith("https://") for url in http.asked)
    client.close()


# --- raw JSON members -------------------------------------------------------------------


def test_raw_members_keep_the_bytes() -> None:
    text = ' { "a" : {"x":1,  "y" : [1, 2]} ,\n"b":"s\\u0041", "c": null }  '
    assert raw_members(text) == {"a": '{"x":1,  "y" : [1, 2]}', "b": '"s\\u0041"', "c": "null"}
    assert raw_members("{}") == {}
    for bad in ("", "[]", '{"a":1', '{"a":1}x', '{"a" 1}', "{1:2}", '{"a":1,}', '{"a":1 "b":2}'):
        with pytest.raises(ValueError):
            raw_members(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5), st.booleans())
def test_raw_members_round_trip(doc: dict[str, object], pretty: bool) -> None:
    text = json.dumps(doc, indent=2 if pretty else None)
    members = raw_members(text)
    assert {k: json.loads(v) for k, v in members.items()} == doc
    assert all(v in text for v in members.values())
