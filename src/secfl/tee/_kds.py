"""Fetch AMD certificates from the Key Distribution Service (KDS), with a disk cache.

KDS (AMD 57230, "VCEK Certificate and KDS Interface Specification") serves:

- ``GET /vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` -> the
  VCEK of one chip at one TCB, DER. ``hwid`` is the report's chip_id in hex (64
  bytes; Turin: its first 8 bytes, and the query adds ``fmcSPL``);
- ``GET /vcek/v1/{product}/cert_chain`` -> ASK then ARK, PEM;
- ``GET /vlek/v1/{product}/cert_chain`` -> ASVK then ARK, PEM (a VLEK itself is
  issued only to its cloud provider, so it comes with the evidence).

What is fetched is not trusted: :func:`secfl.tee._amd.verify_report` checks it up to
the pinned ARK. The cache only spares AMD's rate-limited service.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from secfl._internal.httpcache import CachedHttp
from secfl._internal.x509util import load_der, load_pem_chain
from secfl.errors import FetchError, VerificationError
from secfl.tee._snp_report import PRODUCTS, Product, SnpReport, parse_report, tcb_parts

__all__ = [
    "KDS_URL",
    "KdsClient",
]

KDS_URL: Final = "https://kdsintf.amd.com"
_TURIN_HWID_SIZE: Final = 8


class KdsClient:
    """A KDS client: ``base_url`` (a mirror or a test server), cache in ``cache_dir``.

    ``http`` replaces the transport (a configured :class:`CachedHttp`); then
    ``cache_dir`` is ignored.
    """

    def __init__(
        self,
        base_url: str = KDS_URL,
        cache_dir: Path | str | None = None,
        *,
        http: CachedHttp | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http or CachedHttp(cache_dir)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KdsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def vcek_url(self, report: bytes | SnpReport, product: str | None = None) -> str:
        """The KDS URL of the VCEK that signed ``report`` (product from CPUID if omitted)."""
        parsed = _parse(report)
        line = _product(product, parsed)
        if parsed.signing_key != "vcek":
            raise FetchError(
                f"fetch: the report is signed by a {parsed.signing_key.upper()}, not a VCEK; "
                "KDS gives a VLEK only to its cloud provider, so take it from the auxblob"
            )
        if parsed.mask_chip_key or not parsed.chip_id.strip(b"\x00"):
            raise FetchError("fetch: the report's chip_id is masked, so KDS cannot find its VCEK")
        hwid = parsed.chip_id[:_TURIN_HWID_SIZE] if line == "Turin" else parsed.chip_id
        query = "&".join(f"{k}={v}" for k, v in _ordered(tcb_parts(parsed.reported_tcb, line)))
        return f"{self.base_url}/vcek/v1/{line}/{hwid.hex()}?{query}"

    def chain_url(self, product: str, *, vlek: bool = False) -> str:
        """The KDS URL of the ASK+ARK (or, with ``vlek``, ASVK+ARK) bundle of ``product``."""
        return f"{self.base_url}/{'vlek' if vlek else 'vcek'}/v1/{_product(product)}/cert_chain"

    def get_vcek(self, report: bytes | SnpReport, product: str | None = None) -> bytes:
        """The VCEK (DER) that signed ``report``, from the cache or KDS."""
        url = self.vcek_url(report, product)
        return self._fetch(url, _as_der)

    def get_chain(self, product: str, *, vlek: bool = False) -> bytes:
        """The ASK (or ASVK) then ARK of ``product`` as PEM, from the cache or KDS."""
        return self._fetch(self.chain_url(product, vlek=vlek), _as_chain)

    def get_certs(
        self, report: bytes | SnpReport, product: str | None = None
    ) -> tuple[bytes, bytes]:
        """(VCEK DER, ASK+ARK PEM) for ``report``: what ``verify_report`` needs."""
        parsed = _parse(report)
        line = _product(product, parsed)
        return self.get_vcek(parsed, line), self.get_chain(line)

    def _fetch(self, url: str, check: Callable[[bytes, str], bytes]) -> bytes:
        """GET ``url``; a cached body that does not parse is fetched once more."""
        body = self._http.get(url).body
        try:
            return check(body, url)
        except FetchError:
            return check(self._http.get(url, refresh=True).body, url)


def _parse(report: bytes | SnpReport) -> SnpReport:
    if isinstance(report, SnpReport):
        return report
    try:
        return parse_report(report)
    except VerificationError as exc:
        raise FetchError(f"fetch: cannot read the report ({exc})") from None


def _product(product: str | None, parsed: SnpReport | None = None) -> Product:
    """Validate ``product`` or take it from the report's CPUID; it must agree with both."""
    from_cpuid = parsed.product if parsed is not None else None
    if product is None:
        if from_cpuid is None:
            raise FetchError(
                "fetch: this report (version 2) does not name its product line; "
                f"give it ({', '.join(PRODUCTS)})"
            )
        return from_cpuid
    for line in PRODUCTS:
        if product == line:
            if from_cpuid is not None and from_cpuid != line:
                raise FetchError(f"fetch: the report comes from a {from_cpuid} CPU, not {line}")
            return line
    raise FetchError(f"fetch: unknown product '{product}' (one of {', '.join(PRODUCTS)})")


def _ordered(parts: dict[str, int]) -> list[tuple[str, int]]:
    order = ("fmcSPL", "blSPL", "teeSPL", "snpSPL", "ucodeSPL")
    return [(key, parts[key]) for key in order if key in parts]


def _as_der(body: bytes, url: str) -> bytes:
    try:
        load_der(body, "vcek")
    except VerificationError:
        raise FetchError(f"fetch: {url} did not return a DER certificate") from None
    return body


def _as_chain(body: bytes, url: str) -> bytes:
    try:
        certs = load_pem_chain(body, "cert_chain")
    except VerificationError:
        raise FetchError(f"fetch: {url} did not return a PEM certificate chain") from None
    if len(certs) != 2:
        raise FetchError(f"fetch: {url} returned {len(certs)} certificates, expected 2")
    return body
