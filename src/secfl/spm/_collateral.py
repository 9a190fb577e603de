"""Intel collateral for the SPM's TCB appraisal: fetched from a PCCS, kept fresh.

Without collateral, an Intel quote proves its signature chain only: its TCB status
is ``unknown``, so an out-of-date platform or a revoked PCK certificate would pass
wherever a policy allows an unknown TCB. Started with ``--pccs URL``, the SPM fetches
the collateral of each quote's platform (its FMSPC) and appraises every SGX and TDX
quote against it: status, advisories, CRLs.

Nothing here is trusted. The collateral is signed by Intel and checked with every
quote (:func:`secfl.tee._intel_collateral.appraise`), so the PCCS, the network and
the cache (in the SPM's data folder, outside its TEE) can withhold it, or serve an
older copy still within its dates, but not forge one. What they can do is bounded:

- Freshness. A copy is fetched again once it is ``max_age`` old (an hour by default),
  so a revocation that reached the PCCS reaches the SPM within that time. The copy
  that last verified is kept in memory and serves until then, and while the PCCS
  fails; the cache on disk is read only when memory has none.
- No rollback. Once a copy has verified, none older is taken: not a TCB info or QE
  identity of a lower ``tcbEvaluationDataNumber`` (Intel raises it at each TCB
  recovery), nor a PCK or root CRL issued before the one verified (a lifted
  revocation). The SPM keeps these floors in its audit log, so they hold across
  restarts (:mod:`secfl.spm._collateral_floors`).
- Work. A copy from the cache that did not verify (forged, torn, expired) is not
  verified again: its digest and the refusal are kept (in memory), and the refusal
  is repeated while the cache serves those bytes, so a cache the host filled with
  megabytes of forgery costs a hash per attestation, not a verification.
- Time. A fetch runs on a thread of its own; an attestation waits for it at most
  ``timeout`` seconds, without holding anything other attestations need, and
  concurrent attestations of a platform share one fetch, which itself ends at the
  same deadline however slowly the PCCS answers (:mod:`secfl._internal.httpcache`).
  A PCCS that fails, or whose copy is refused, is asked again ``retry_after`` seconds
  after the first failure, however many attestations fail meanwhile.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from secfl._internal.httpcache import CachedHttp
from secfl.errors import FetchError, SpmError, VerificationError
from secfl.spm._collateral_floors import CollateralFloors, Key, MemoryFloors, record_of
from secfl.tee._intel import IntelCollateral, load_pck_chain, parse_quote, pck_ca, pck_fmspc
from secfl.tee._intel_collateral import evaluation_number
from secfl.tee._pccs import PccsClient

__all__ = ["CollateralSource", "pccs_url"]

#: A (TEE, FMSPC, PCK CA) platform: what one TCB info covers.
Platform = tuple[str, str, str]
#: Platforms whose verified collateral is kept in memory, at most (about 20 KiB each).
MAX_PLATFORMS = 4096

#: Characters of a refusal kept with the digest of the copy it refused.
MAX_REASON = 300

#: How :class:`CachedHttp` says that it has no copy.
NOT_CACHED = "no cached answer"

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
        floors: CollateralFloors | None = None,
    ) -> None:
        """``floors``: where what was verified is kept, never to be gone back on (TCB
        evaluation numbers per platform, the QE identity's per TEE, CRL issue times per
        issuing CA); the SPM's are in its audit log, the default in memory."""
        self.url = pccs_url(url)
        self.max_age = max_age
        self.retry_after = retry_after
        self.timeout = timeout
        self._clock = clock
        self._http = CachedHttp(cache_dir, timeout=timeout)
        self._fresh = PccsClient(self.url, http=self._http, refresh=True)
        self._cached = PccsClient(self.url, http=self._http, offline=True)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="secfl-pccs")
        #: Fetches under way, and when each began: later callers wait out what is left.
        self._inflight: dict[Platform, tuple[Future[IntelCollateral], float]] = {}
        self._fetched: dict[Platform, float] = {}
        self._failed: dict[Platform, float] = {}
        self._errors: dict[Platform, FetchError] = {}  # why the last fetch failed
        #: The collateral that last verified, per platform (memory: the cache is the host's).
        self._verified: dict[Platform, IntelCollateral] = {}
        #: The last copy that failed a check of its own, per platform: digest, refusal.
        self._refused: dict[Platform, tuple[bytes, str]] = {}
        self.floors: CollateralFloors = MemoryFloors() if floors is None else floors
        self._lock = threading.RLock()  # a done callback may run in the submitting thread

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> CollateralSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, quote: bytes) -> IntelCollateral:
        """The collateral of ``quote``'s platform: fetched when the copy is old, else
        (or when the fetch fails, is late, or is older than what this SPM verified) the
        copy verified last, or the cache's. Raises :class:`FetchError` when there is
        none; a quote whose PCK chain cannot be read raises
        :class:`~secfl.errors.VerificationError` (callers verify the quote first), and
        so does a cached copy refused before (:meth:`rejected`): the same refusal, the
        copy not verified again."""
        platform = _platform(quote)
        self.floors.refresh()  # what other SPMs sharing the database verified
        with self._lock:
            future, began = self._inflight.get(platform, (None, 0.0))
            if future is None and self._due(platform):
                future, began = self._worker.submit(self._fetch, platform, quote), self._clock()
                self._inflight[platform] = (future, began)
                future.add_done_callback(lambda _: self._settle(platform))
        error: FetchError | None = None
        if future is not None:
            try:
                fresh = future.result(timeout=max(0.0, began + self.timeout - self._clock()))
            except FetchError as exc:
                error = exc
            except (TimeoutError, CancelledError):
                error = FetchError(f"fetch: {self.url} gave no collateral in {self.timeout:g} s")
            else:
                with self._lock:
                    try:
                        return self._not_older(platform, fresh)
                    except FetchError as exc:  # a rollback: asked again after retry_after
                        error = self._errors[platform] = exc
                        self._fetched.pop(platform, None)
                        self._failed[platform] = self._clock()
        with self._lock:
            return self._kept(platform, quote, error or self._errors.get(platform))

    def verified(self, quote: bytes, collateral: IntelCollateral) -> None:
        """``collateral`` held for ``quote`` (its signatures verified): keep it, and
        refuse from now on anything older (a rollback by the PCCS or the cache)."""
        platform = _platform(quote)
        record = _record(platform, collateral)
        with self._lock:
            try:
                self._not_older(platform, collateral)
            except FetchError:
                return  # a later copy verified meanwhile: it stays
            self.floors.hold(record)  # before the lock goes: no older copy after this one
            if len(self._verified) < MAX_PLATFORMS or platform in self._verified:
                self._verified[platform] = collateral  # bounded; each came with a genuine quote
        self.floors.persist(record)  # outside the lock: it may commit

    def rejected(
        self,
        quote: bytes,
        collateral: IntelCollateral | None = None,
        reason: str = "",
        *,
        copy_fault: bool = False,
    ) -> None:
        """The copy ``get`` gave for ``quote`` (``collateral``) did not verify (forged,
        torn, expired: ``reason``): ask the PCCS again after ``retry_after``, not after
        ``max_age``; and if a check of the copy's own refused it (``copy_fault``: a
        :class:`~secfl.errors.CollateralFault`, whatever the quote and the time), refuse
        it again without verifying it when the cache serves it again. A copy expired or
        not yet valid, or refused by dcap-qvl (the quote's QE report, its FMSPC), is
        verified again: the clock, or another quote, may pass it (found by a review).

        The PCCS is asked again ``retry_after`` after the first refusal, however often
        the copy is refused meanwhile (each refusal put it off before: under steady
        attestations it was never asked again)."""
        platform = _platform(quote)
        with self._lock:
            self._fetched.pop(platform, None)
            now, failed = self._clock(), self._failed.get(platform)
            if failed is None or now - failed >= self.retry_after:
                self._failed[platform] = now
            room = len(self._refused) < MAX_PLATFORMS or platform in self._refused
            if collateral is not None and copy_fault and room:
                self._refused[platform] = (_digest(collateral), reason[:MAX_REASON])

    # --- under the lock ------------------------------------------------------------------

    def _due(self, platform: Platform) -> bool:
        now = self._clock()
        fetched, failed = self._fetched.get(platform), self._failed.get(platform)
        old = fetched is None or now - fetched >= self.max_age
        return old and (failed is None or now - failed >= self.retry_after)

    def _kept(self, platform: Platform, quote: bytes, error: FetchError | None) -> IntelCollateral:
        """The copy verified last, else the cache's (if not older than what was seen)."""
        kept = self._verified.get(platform)
        if kept is not None:
            try:  # another platform's copy may have raised the shared floors since
                return self._not_older(platform, kept)
            except FetchError as exc:
                error = error or exc
        try:
            cached = self._cached.get_collateral(quote)
            refused = self._refused.get(platform)
            if refused is not None and refused[0] == _digest(cached):
                raise VerificationError(
                    f"{refused[1]} (the cached copy, refused before: not verified again)"
                )
            return self._not_older(platform, cached)
        except (FetchError, ValueError) as exc:
            cache = str(exc).removeprefix("fetch: ")
            if not isinstance(exc, FetchError):
                cache = f"the cached collateral is malformed ({cache})"
            if error is None:
                raise FetchError(f"fetch: {cache}") from None
            if cache.startswith(NOT_CACHED):
                raise error from None
            raise FetchError(f"{error}; and {cache}") from None

    def _not_older(self, platform: Platform, collateral: IntelCollateral) -> IntelCollateral:
        for key, value in _marks(platform, collateral):
            if value < self.floors.get(key):
                what = _WHAT[key[0]](key)
                raise FetchError(
                    f"fetch: {self.url} served a {what} than the one this SPM verified"
                )
        return collateral

    # --- on the worker -------------------------------------------------------------------

    def _fetch(self, platform: Platform, quote: bytes) -> IntelCollateral:
        try:
            with self._http.deadline(self.timeout):  # the four GETs share it
                collateral = self._fresh.get_collateral(quote)
        except Exception as exc:  # anything a PCCS's answer provokes: no collateral
            error = (
                exc
                if isinstance(exc, FetchError)
                else FetchError(f"fetch: {self.url}: {type(exc).__name__}: {exc}")
            )
            with self._lock:
                self._failed[platform] = self._clock()
                self._errors[platform] = error
            raise error from None
        with self._lock:
            try:  # checked here too: the caller may have stopped waiting
                self._not_older(platform, collateral)
            except FetchError as exc:  # a rollback: asked again after retry_after
                self._failed[platform] = self._clock()
                self._errors[platform] = exc
                self._fetched.pop(platform, None)
                raise
            self._fetched[platform] = self._clock()
            self._failed.pop(platform, None)
            self._errors.pop(platform, None)
        return collateral

    def _settle(self, platform: Platform) -> None:
        with self._lock:
            self._inflight.pop(platform, None)


def _platform(quote: bytes) -> Platform:
    parsed = parse_quote(quote)
    chain = load_pck_chain(parsed.pck_chain_pem)
    return (parsed.kind, pck_fmspc(chain[0]), pck_ca(chain))


def _digest(c: IntelCollateral) -> bytes:
    """SHA-256 of every field of ``c``, each length-prefixed."""
    h = hashlib.sha256()
    for value in c.model_dump().values():
        data = str(value).encode()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.digest()


def _record(platform: Platform, c: IntelCollateral) -> dict[str, object]:
    """What must never go back, of ``c`` (:func:`~secfl.spm._collateral_floors.record_of`)."""
    tee, fmspc, ca = platform
    return record_of(
        tee, fmspc, ca, evaluation_number(c.tcb_info), evaluation_number(c.qe_identity),
        _issued(c.pck_crl), _issued(c.root_ca_crl),
    )  # fmt: skip


def _marks(platform: Platform, c: IntelCollateral) -> list[tuple[Key, int]]:
    """``c``'s value of each floor (unchecked: a copy not yet verified may say anything)."""
    tee, fmspc, ca = platform
    keys: list[Key] = [("tcb", tee, fmspc), ("qe", tee), ("crl", ca), ("crl", "root")]
    values = [
        evaluation_number(c.tcb_info), evaluation_number(c.qe_identity),
        _issued(c.pck_crl), _issued(c.root_ca_crl),
    ]  # fmt: skip
    return list(zip(keys, values, strict=True))


#: What each kind of floor is, for a refusal.
_WHAT: dict[str, Callable[[Key], str]] = {
    "tcb": lambda k: f"TCB info of FMSPC {k[2]} of an older TCB evaluation",
    "qe": lambda k: f"{k[1]} QE identity of an older TCB evaluation",
    "crl": lambda k: (
        "root CA CRL issued earlier" if k[1] == "root" else f"PCK {k[1]} CRL issued earlier"
    ),
}


def _issued(hex_der: str) -> int:
    """A CRL's thisUpdate in seconds (0 when unreadable: it does not verify anyway)."""
    try:
        return int(x509.load_der_x509_crl(bytes.fromhex(hex_der)).last_update_utc.timestamp())
    except ValueError:
        return 0


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
