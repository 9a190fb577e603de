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
verified (kept in memory; else the cache's) serves until its own dates end, and the
PCCS is asked again at most every ``retry_after`` seconds, so a dead PCCS does not
stall every attestation. Once a copy has verified, none of an older evaluation
(``tcbEvaluationDataNumber``: Intel raises it at each TCB recovery) is taken for that
platform, nor an older QE identity for that TEE, while the SPM runs: a PCCS cannot
roll an appraisal back to the levels before a recovery, short of a restart.
"""

from __future__ import annotations

import json
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

#: A (TEE, FMSPC, PCK CA) platform: what one TCB info covers.
Platform = tuple[str, str, str]
#: Platforms whose verified collateral is kept in memory, at most (about 20 KiB each).
MAX_PLATFORMS = 4096

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
        self._fetched: dict[Platform, float] = {}
        self._failed: dict[Platform, float] = {}
        #: The collateral that last verified, per platform (memory: the cache is the host's).
        self._verified: dict[Platform, IntelCollateral] = {}
        #: The highest evaluation verified: per platform (TCB info), per TEE (QE identity).
        self._floors: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CollateralSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, quote: bytes) -> IntelCollateral:
        """The collateral of ``quote``'s platform: fetched again when the copy is old,
        else (or when the PCCS fails, or serves an older evaluation than this SPM has
        seen) the copy last verified, or the cached one. Raises :class:`FetchError`
        when there is none; a quote whose PCK chain cannot be read raises
        :class:`~secfl.errors.VerificationError` (callers verify the quote first)."""
        platform = _platform(quote)
        with self._lock:  # one fetch at a time: concurrent attestations share it
            now = self._clock()
            fetched = self._fetched.get(platform)
            failed = self._failed.get(platform)
            due = fetched is None or now - fetched >= self.max_age
            if due and (failed is None or now - failed >= self.retry_after):
                try:
                    collateral = self._not_older(platform, self._fresh.get_collateral(quote))
                except FetchError as exc:
                    self._failed[platform] = now
                    return self._kept(platform, quote, exc)
                self._fetched[platform] = now
                self._failed.pop(platform, None)
                return collateral
            return self._kept(platform, quote, None)

    def verified(self, quote: bytes, collateral: IntelCollateral) -> None:
        """``collateral`` held for ``quote`` (its signatures verified): keep it, and
        refuse from now on any copy of an older evaluation (a rollback by the PCCS)."""
        platform = _platform(quote)
        tcb, qe = _evaluation(collateral.tcb_info), _evaluation(collateral.qe_identity)
        with self._lock:
            if len(self._verified) >= MAX_PLATFORMS and platform not in self._verified:
                return  # bounded; every platform here came with a genuine quote
            self._verified[platform] = collateral
            self._floors[platform] = max(tcb, self._floors.get(platform, 0))
            self._floors[platform[:1]] = max(qe, self._floors.get(platform[:1], 0))

    def rejected(self, quote: bytes) -> None:
        """The copy ``get`` gave for ``quote`` did not verify (forged, torn, expired):
        ask the PCCS again after ``retry_after``, not after ``max_age``."""
        platform = _platform(quote)
        with self._lock:
            self._fetched.pop(platform, None)
            self._failed[platform] = self._clock()

    def _kept(self, platform: Platform, quote: bytes, error: FetchError | None) -> IntelCollateral:
        """The copy last verified, else the cache's (if not older than what was seen)."""
        kept = self._verified.get(platform)
        if kept is not None:
            return kept
        try:
            return self._not_older(platform, self._cached.get_collateral(quote))
        except FetchError as exc:
            raise (error or exc) from None

    def _not_older(self, platform: Platform, collateral: IntelCollateral) -> IntelCollateral:
        for key, text, what in (
            (platform, collateral.tcb_info, f"TCB info of FMSPC {platform[1]}"),
            (platform[:1], collateral.qe_identity, f"{platform[0]} QE identity"),
        ):
            floor = self._floors.get(key, 0)
            if _evaluation(text) < floor:
                raise FetchError(
                    f"fetch: the PCCS served {what} of evaluation {_evaluation(text)}, older "
                    f"than evaluation {floor} this SPM has verified"
                )
        return collateral


def _platform(quote: bytes) -> Platform:
    parsed = parse_quote(quote)
    chain = load_pck_chain(parsed.pck_chain_pem)
    return (parsed.kind, pck_fmspc(chain[0]), pck_ca(chain))


def _evaluation(text: str) -> int:
    """A TCB info's or QE identity's ``tcbEvaluationDataNumber`` (0 when unreadable:
    such a document does not verify anyway)."""
    try:
        value = json.loads(text).get("tcbEvaluationDataNumber")
    except (ValueError, AttributeError, RecursionError):
        return 0
    if type(value) is not int or not 0 <= value < 1 << 31:
        return 0
    return value


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
