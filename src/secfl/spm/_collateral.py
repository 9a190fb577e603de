"""Intel collateral for the SPM's TCB appraisal: fetched from a PCCS, kept fresh.

Without collateral, an Intel quote proves its signature chain only: its TCB status
is ``unknown``, so an out-of-date platform or a revoked PCK certificate would pass
wherever a policy allows an unknown TCB. Started with ``--pccs URL``, the SPM fetches
the collateral of each quote's platform (its FMSPC) and appraises every SGX and TDX
quote against it: status, advisories, CRLs.

Nothing here is trusted. The collateral is signed by Intel and checked with every
quote (:func:`secfl.tee._intel_collateral.appraise`), so the PCCS, the network and
the cache (in the SPM's data folder, outside its TEE) can withhold it, or serve an
older copy still within its dates, but not forge one. A copy is fetched again once
it is ``max_age`` old (an hour by default), so a revocation that reached the PCCS
reaches the SPM within that time. While the PCCS cannot be reached, the copy last
fetched serves until its own dates end, and the PCCS is asked again at most every
``retry_after`` seconds, so a dead PCCS does not stall every attestation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from secfl._internal.httpcache import CachedHttp
from secfl.errors import FetchError, SpmError
from secfl.tee._intel import IntelCollateral, load_pck_chain, parse_quote, pck_ca, pck_fmspc
from secfl.tee._pccs import PccsClient

__all__ = ["CollateralSource", "pccs_url"]

#: Seconds a PCCS has for one answer, all of it (the SPM waits while it fetches).
FETCH_TIMEOUT = 10.0


class CollateralSource:
    """The current Intel collateral for quotes, from the PCCS or Intel PCS at ``url``."""

    def __init__(
        self,
        url: str,
        cache_dir: Path | str,
        *,
        max_age: float = 3600.0,
        retry_after: float = 60.0,
        timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = pccs_url(url)
        self.max_age = max_age
        self.retry_after = retry_after
        self._clock = clock
        self._http = CachedHttp(cache_dir, timeout=timeout)
        self._fresh = PccsClient(self.url, http=self._http, refresh=True)
        self._cached = PccsClient(self.url, http=self._http, refresh=False)
        self._fetched: dict[tuple[str, str, str], float] = {}
        self._failed: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CollateralSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, quote: bytes) -> IntelCollateral:
        """The collateral of ``quote``'s platform: fetched again when the copy is old,
        else (or when the PCCS fails) the cached one. Raises :class:`FetchError`
        when there is neither; a quote whose PCK chain cannot be read raises
        :class:`~secfl.errors.VerificationError` (callers verify the quote first)."""
        parsed = parse_quote(quote)
        chain = load_pck_chain(parsed.pck_chain_pem)
        platform = (parsed.kind, pck_fmspc(chain[0]), pck_ca(chain))
        with self._lock:  # one fetch at a time: concurrent attestations share it
            now = self._clock()
            fetched = self._fetched.get(platform)
            failed = self._failed.get(platform)
            due = fetched is None or now - fetched >= self.max_age
            if due and (failed is None or now - failed >= self.retry_after):
                try:
                    collateral = self._fresh.get_collateral(quote)
                except FetchError as exc:
                    self._failed[platform] = now
                    try:
                        return self._cached.get_collateral(quote)
                    except FetchError:
                        raise exc from None
                self._fetched[platform] = now
                self._failed.pop(platform, None)
                return collateral
            return self._cached.get_collateral(quote)


def pccs_url(url: str) -> str:
    """``url`` if it names a PCCS or the PCS: http(s)://HOST[:PORT][/PATH], else
    :class:`SpmError` in one line. (Plain http does no harm to what is fetched,
    which Intel signed; a PCCS on the host's loopback often has no certificate.)"""
    try:  # urlsplit and .port raise ValueError ('https://[::1', ':99999', ':abc')
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a bad port)
    except ValueError:
        raise SpmError(f"pccs: '{url[:200]}' is not a URL: give https://HOST[:PORT]") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpmError(f"pccs: '{url[:200]}' is not an http(s):// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SpmError(f"pccs: '{url[:200]}' has a query, fragment or user: give the base URL")
    return url
