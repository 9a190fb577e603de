"""Fetch the collateral of an Intel DCAP quote from a PCCS or Intel's PCS (API v4).

The collateral is signed by Intel and checked by :func:`secfl.tee._intel.verify_quote`,
so fetching needs no trust in the server or the cache; it only has to keep the
signed bytes intact. In particular ``tcbInfo`` and ``enclaveIdentity`` are kept
as the exact substrings the server sent (their signatures cover those bytes),
never re-serialised.

Endpoints (``{base}`` without ``/sgx|tdx/certification/v4``; ``{tee}`` is sgx or tdx):

- ``GET {base}/{tee}/certification/v4/tcb?fmspc=FMSPC``: ``{"tcbInfo": {...},
  "signature": "hex"}``, header ``TCB-Info-Issuer-Chain`` (``SGX-TCB-Info-Issuer-Chain``
  in API v3 and some PCCS), URL-encoded PEM;
- ``GET {base}/{tee}/certification/v4/qe/identity``: ``{"enclaveIdentity": {...},
  "signature": "hex"}``, header ``SGX-Enclave-Identity-Issuer-Chain``;
- ``GET {base}/sgx/certification/v4/pckcrl?ca=processor|platform&encoding=der``: the
  CRL, header ``SGX-PCK-CRL-Issuer-Chain``;
- the root CA CRL: ``GET {base}/sgx/certification/v4/rootcacrl`` from a PCCS (hex
  text or DER); Intel's PCS has no such endpoint, so from the PCS the CRL comes
  from the distribution point of the Intel SGX Root CA (``INTEL_ROOT_CA_CRL_URL``).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secfl._internal.httpcache import CachedHttp, Response
from secfl.errors import FetchError
from secfl.tee._intel import IntelCollateral, load_pck_chain, parse_quote, pck_ca, pck_fmspc

__all__ = [
    "INTEL_PCS_URL",
    "INTEL_ROOT_CA_CRL_URL",
    "PccsClient",
    "raw_members",
]

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
#: The CRL distribution point of the Intel SGX Root CA certificate.
INTEL_ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"

_TCB_CHAIN_HEADERS = ("tcb-info-issuer-chain", "sgx-tcb-info-issuer-chain")
_QE_CHAIN_HEADERS = ("sgx-enclave-identity-issuer-chain",)
_CRL_CHAIN_HEADERS = ("sgx-pck-crl-issuer-chain",)
_HEX = frozenset(string.hexdigits)


class PccsClient:
    """Collateral for quotes from one PCCS/PCS, through an optional on-disk cache.

    ``http`` (a :class:`CachedHttp`) replaces the default client built on ``cache_dir``.
    """

    def __init__(
        self,
        base_url: str,
        cache_dir: Path | str | None = None,
        *,
        http: CachedHttp | None = None,
        refresh: bool = False,
        offline: bool = False,
    ) -> None:
        base = base_url.strip().rstrip("/")
        for suffix in ("/sgx/certification/v4", "/tdx/certification/v4"):
            base = base.removesuffix(suffix)
        self.base_url = base
        self.refresh = refresh
        #: Read the cache only: what is not cached is a :class:`FetchError`.
        self.offline = offline
        self._own_http = http is None
        self.http = http if http is not None else CachedHttp(cache_dir)

    def close(self) -> None:
        if self._own_http:
            self.http.close()

    def __enter__(self) -> PccsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_intel_pcs(self) -> bool:
        return self.base_url.startswith(INTEL_PCS_URL)

    def _url(self, tee: str, path: str) -> str:
        return f"{self.base_url}/{tee}/certification/v4/{path}"

    def get_collateral(self, quote: bytes) -> IntelCollateral:
        """Fetch (or read from the cache) everything needed to appraise ``quote``.

        Raises :class:`FetchError` naming the URL that failed; a quote too malformed
        to name its FMSPC raises :class:`~secfl.errors.VerificationError`.
        """
        parsed = parse_quote(quote)
        chain = load_pck_chain(parsed.pck_chain_pem)
        fmspc, ca, tee = pck_fmspc(chain[0]), pck_ca(chain), parsed.kind

        url = self._url(tee, f"tcb?fmspc={fmspc}")
        reply = self._get(url)
        tcb_info, tcb_sig = _signed_json(reply.body, "tcbInfo", url)
        tcb_chain = _header(reply, _TCB_CHAIN_HEADERS, url)

        url = self._url(tee, "qe/identity")
        reply = self._get(url)
        qe_identity, qe_sig = _signed_json(reply.body, "enclaveIdentity", url)
        qe_chain = _header(reply, _QE_CHAIN_HEADERS, url)

        url = self._url("sgx", f"pckcrl?ca={ca}&encoding=der")
        reply = self._get(url)
        pck_crl = _crl_der(reply.body, url)
        crl_chain = _header(reply, _CRL_CHAIN_HEADERS, url)

        root_ca_crl = self._root_ca_crl()
        try:
            return IntelCollateral(
                tcb_info=tcb_info,
                tcb_info_signature=tcb_sig,
                tcb_info_issuer_chain=tcb_chain,
                qe_identity=qe_identity,
                qe_identity_signature=qe_sig,
                qe_identity_issuer_chain=qe_chain,
                pck_crl=pck_crl.hex(),
                pck_crl_issuer_chain=crl_chain,
                root_ca_crl=root_ca_crl.hex(),
            )
        except ValueError as exc:  # pydantic's ValidationError is one
            first = str(exc).splitlines()[1:2] or [type(exc).__name__]
            raise FetchError(f"fetch: {self.base_url}: malformed collateral ({first[0]})") from None

    def _get(self, url: str) -> Response:
        return self.http.get(url, refresh=self.refresh, offline=self.offline)

    def _root_ca_crl(self) -> bytes:
        """From the PCCS's ``rootcacrl``; from the PCS, Intel's published root CA CRL.

        (The PCS URL is fixed here, not read from the quote: a quote is untrusted
        until verified and must not choose what this client fetches.)
        """
        url = INTEL_ROOT_CA_CRL_URL if self.is_intel_pcs else self._url("sgx", "rootcacrl")
        return _crl_der(self._get(url).body, url)


def _header(reply: Response, names: tuple[str, ...], url: str) -> str:
    """An issuer chain header, URL-decoded to PEM (``+`` is base64, not a space)."""
    for name in names:
        if name in reply.headers:
            pem = unquote(reply.headers[name])
            if "-----BEGIN CERTIFICATE-----" not in pem:
                raise FetchError(f"fetch: {url}: header {name} holds no PEM certificate")
            return pem
    raise FetchError(f"fetch: {url}: the answer has no {names[0]} header")


def _signed_json(body: bytes, key: str, url: str) -> tuple[str, str]:
    """The raw text of ``key``'s object (as signed) and the hex ``signature``."""
    try:
        text = body.decode("utf-8")
        members = raw_members(text)
    except (ValueError, RecursionError) as exc:
        raise FetchError(f"fetch: {url}: not a JSON object ({exc})") from None
    if key not in members or not members[key].startswith("{"):
        raise FetchError(f"fetch: {url}: no '{key}' object in the answer")
    signature = json.loads(members["signature"]) if "signature" in members else None
    if (
        not isinstance(signature, str)
        or not signature
        or len(signature) % 2
        or not set(signature) <= _HEX
    ):
        raise FetchError(f"fetch: {url}: 'signature' is not a hex string of whole bytes")
    return members[key], signature


def raw_members(text: str) -> dict[str, str]:
    """The members of a top-level JSON object as raw substrings of ``text``.

    ``{"a": {"x": 1}}`` gives ``{"a": '{"x": 1}'}``, byte for byte as written.
    Raises ValueError for anything but one JSON object (duplicate keys included).
    """
    decoder = json.JSONDecoder()
    ws = " \t\n\r"
    i = len(text) - len(text.lstrip(ws))
    if text[i : i + 1] != "{":
        raise ValueError("expected '{'")
    members: dict[str, str] = {}
    i += 1
    while True:
        i = _skip(text, i, ws)
        if text[i : i + 1] == "}" and not members:
            i += 1
            break
        key, i = decoder.raw_decode(text, i)
        if not isinstance(key, str):
            raise ValueError(f"expected a string key at {i}")
        if key in members:
            raise ValueError(f"duplicate key '{key}'")
        i = _skip(text, i, ws)
        if text[i : i + 1] != ":":
            raise ValueError(f"expected ':' at {i}")
        i = _skip(text, i + 1, ws)
        _, end = decoder.raw_decode(text, i)
        members[key] = text[i:end]
        i = _skip(text, end, ws)
        if text[i : i + 1] == ",":
            i += 1
            continue
        if text[i : i + 1] == "}":
            i += 1
            break
        raise ValueError(f"expected ',' or '}}' at {i}")
    if text[i:].strip(ws):
        raise ValueError(f"extra data after the object at {i}")
    return members


def _skip(text: str, i: int, ws: str) -> int:
    while i < len(text) and text[i] in ws:
        i += 1
    return i


def _crl_der(body: bytes, url: str) -> bytes:
    """A CRL answer as DER: DER as is, hex text decoded, PEM converted."""
    data = body
    stripped = body.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            data = x509.load_pem_x509_crl(stripped).public_bytes(serialization.Encoding.DER)
        except ValueError as exc:
            raise FetchError(f"fetch: {url}: not a PEM CRL ({exc})") from None
    elif stripped and all(chr(b) in _HEX for b in stripped):
        try:
            data = bytes.fromhex(stripped.decode("ascii"))
        except ValueError:
            raise FetchError(f"fetch: {url}: hex CRL with an odd number of digits") from None
    try:
        x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise FetchError(f"fetch: {url}: not a CRL (DER, hex or PEM) ({exc})") from None
    return data
