"""HTTP GET with an on-disk cache, for vendor collateral and certificates.

Collateral and certificates are signed by the vendor and checked after download,
so the cache needs no integrity of its own; it only spares the network. Entries
are keyed by URL and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

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
            _atomic_write(paths[1], json.dumps(response.headers).encode())
            _atomic_write(paths[0], response.body)
        return response


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
