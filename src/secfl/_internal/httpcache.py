"""HTTP GET with an on-disk cache, for vendor collateral and certificates.

Collateral and certificates are signed by the vendor and checked after download,
so the cache needs no integrity of its own; it only spares the network. Entries
are keyed by URL and written atomically.
"""

from __future__ import annotations

import hashlib
import json
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


class CachedHttp:
    """GET ``url`` through a cache directory (``None``: no cache)."""

    def __init__(
        self,
        cache_dir: Path | str | None = None,
        *,
        timeout: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> CachedHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _paths(self, url: str) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(url.encode()).hexdigest()
        return self.cache_dir / f"{key}.body", self.cache_dir / f"{key}.headers.json"

    def get(self, url: str, *, refresh: bool = False) -> Response:
        """Return the cached response for ``url`` or fetch it (HTTP 200 only)."""
        paths = self._paths(url)
        if paths and not refresh and paths[0].exists() and paths[1].exists():
            headers = json.loads(paths[1].read_text())
            return Response(body=paths[0].read_bytes(), headers=headers)
        try:
            reply = self._client.get(url)
        except httpx.HTTPError as exc:
            raise FetchError(f"fetch: GET {url} failed: {exc}") from None
        if reply.status_code != 200:
            raise FetchError(f"fetch: GET {url} answered HTTP {reply.status_code}")
        response = Response(
            body=reply.content, headers={k.lower(): v for k, v in reply.headers.items()}
        )
        if paths:
            _store(paths[1], json.dumps(response.headers).encode())
            _store(paths[0], response.body)
        return response


def _store(path: Path, data: bytes) -> None:
    """Cache ``data`` at ``path`` (0600, written whole: see :mod:`secfl._internal.files`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write(path, data, mode=0o600, fsync=False)
    except OSError as exc:
        raise FetchError(f"fetch: cannot cache '{path}': {exc.strerror or exc}") from None
