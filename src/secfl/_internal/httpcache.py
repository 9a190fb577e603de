"""HTTP GET with an on-disk cache, for vendor collateral and certificates.

Collateral and certificates are signed by the vendor and checked after download,
so the cache needs no integrity of its own; it only spares the network. Entries
are keyed by URL and written atomically. A server or a cache file is still bounded:
an answer larger than ``max_bytes``, or one not complete within ``timeout`` (headers
included: a server that trickles them a byte at a time never trips a read timeout),
is refused. Each fetch runs on an event loop of its own under that deadline, which
cancels it wherever it waits; callers are synchronous (never inside an event loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from secfl._internal import files
from secfl.errors import FetchError


@dataclass(frozen=True)
class Response:
    """The parts of an HTTP response that fetchers use."""

    body: bytes
    headers: dict[str, str]


#: The largest answer fetched or read from the cache (vendor collateral is tens of KiB).
MAX_BYTES = 4 << 20


class CachedHttp:
    """GET ``url`` through a cache directory (``None``: no cache)."""

    def __init__(
        self,
        cache_dir: Path | str | None = None,
        *,
        timeout: float = 30.0,
        trust_env: bool = True,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.timeout = timeout
        self.max_bytes = max_bytes
        #: Whether proxies and CA bundles come from the environment (httpx's ``trust_env``).
        self.trust_env = trust_env
        self._local = threading.local()

    def close(self) -> None:
        """Nothing to release: each fetch has its own client (kept for ``with``)."""

    def __enter__(self) -> CachedHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _paths(self, url: str) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(url.encode()).hexdigest()
        return self.cache_dir / f"{key}.body", self.cache_dir / f"{key}.headers.json"

    def get(self, url: str, *, refresh: bool = False, offline: bool = False) -> Response:
        """Return the cached response for ``url`` or fetch it (HTTP 200 only);
        ``offline``: the cached one or :class:`FetchError`, never the network."""
        paths = self._paths(url)
        if paths and not refresh and os.path.lexists(paths[0]) and os.path.lexists(paths[1]):
            return self._cached(url, *paths)
        if offline:
            raise FetchError(f"fetch: no cached answer for {url}")
        response = self._fetch(url)
        if paths:
            _store(paths[1], json.dumps(response.headers).encode())
            _store(paths[0], response.body)
        return response

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Every fetch of this thread inside the block ends by ``seconds`` from now, all
        of them together (a collateral is four GETs: one deadline for the four)."""
        self._local.deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.deadline = None

    def _fetch(self, url: str) -> Response:
        timeout = self.timeout
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise FetchError(f"fetch: GET {url}: no time left before the deadline")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise FetchError(f"fetch: GET {url}: called inside an event loop (call from a thread)")
        # A loop of our own, closed without waiting for its executor: a DNS lookup that
        # hangs (asyncio runs getaddrinfo on a thread) must not outlast the deadline, as
        # asyncio.run's wait for that executor would make it.
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(self._fetch_async(url), timeout))
        except TimeoutError:
            raise FetchError(f"fetch: GET {url}: no full answer in {timeout:.2g} s") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"fetch: GET {url} failed: {exc}") from None
        finally:
            with suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()  # its executor shut down without waiting

    async def _fetch_async(self, url: str) -> Response:
        body = bytearray()
        async with httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, trust_env=self.trust_env
        ) as client:
            # Unencoded only: a compressed answer could grow a thousandfold in one chunk.
            headers = {"Accept-Encoding": "identity"}
            async with client.stream("GET", url, headers=headers) as reply:
                if reply.status_code != 200:
                    raise FetchError(f"fetch: GET {url} answered HTTP {reply.status_code}")
                encoding = reply.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise FetchError(f"fetch: GET {url}: answered in encoding '{encoding[:40]}'")
                async for chunk in reply.aiter_raw():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise FetchError(
                            f"fetch: GET {url}: the answer exceeds {self.max_bytes} bytes"
                        )
                return Response(
                    body=bytes(body), headers={k.lower(): v for k, v in reply.headers.items()}
                )

    def _cached(self, url: str, body: Path, headers: Path) -> Response:
        """A cached answer; a cache file too large or unreadable is an error, not a crash."""
        try:
            doc = json.loads(files.read_bounded(headers, self.max_bytes, untrusted=True))
            data = files.read_bounded(body, self.max_bytes, untrusted=True)
        except files.TooLarge:
            raise FetchError(
                f"fetch: the cached answer for {url} exceeds {self.max_bytes} bytes"
            ) from None
        except (OSError, ValueError, RecursionError) as exc:  # JSON nested thousands deep
            raise FetchError(f"fetch: the cached answer for {url} is unreadable ({exc})") from None
        if not isinstance(doc, dict) or not all(  # header values are ASCII on the wire
            isinstance(k, str) and isinstance(v, str) and v.isascii() for k, v in doc.items()
        ):
            raise FetchError(f"fetch: the cached headers for {url} are not a JSON object of texts")
        return Response(body=data, headers=doc)


def _store(path: Path, data: bytes) -> None:
    """Cache ``data`` at ``path`` (0600, written whole: see :mod:`secfl._internal.files`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write(path, data, mode=0o600, fsync=False)
    except OSError as exc:
        raise FetchError(f"fetch: cannot cache '{path}': {exc.strerror or exc}") from None
