"""A real HTTP server on 127.0.0.1 for fetcher tests: never the real network.

Routes map a request path (with its query string) to ``(status, headers, body)``;
every request path is recorded, so tests can check what a client asked and that a
cached answer did not ask again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from secfl._internal.httpcache import CachedHttp

Routes = dict[str, tuple[int, dict[str, str], bytes]]


@dataclass
class LocalServer:
    """What the server answers (``routes``) and what it was asked (``requests``)."""

    routes: Routes = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""
    #: Seconds to wait before each answer (a slow server).
    delay: float = 0.0

    def serve_file(self, path: str, body: bytes) -> None:
        self.routes[path] = (200, {}, body)


@contextmanager
def local_server() -> Iterator[LocalServer]:
    """Run a :class:`LocalServer` on a free loopback port for the ``with`` block."""
    state = LocalServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if state.delay:
                time.sleep(state.delay)
            status, headers, body = state.routes.get(self.path, (404, {}, b"not found"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def local_http(cache_dir: Path | None) -> CachedHttp:
    """A cached client that ignores proxy settings from the environment."""
    return CachedHttp(cache_dir, timeout=5, trust_env=False)
