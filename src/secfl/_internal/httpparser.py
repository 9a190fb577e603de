"""The HTTP/1.1 protocol a guarded connection runs (:mod:`secfl._internal.httpguard`).

uvicorn's httptools protocol with what the guard needs of it: it reports each
request's progress to its :class:`~secfl._internal.httpconn.Connection` (the phases
whose deadlines the guard keeps), counts a request's line and fields, and a chunked
body's trailers, against :data:`MAX_HEAD` (httptools has no limit of its own), refuses
every protocol upgrade, answers its own refusals in JSON like every other refusal,
and drops an idle connection at once when the server stops.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from secfl._internal.httpconn import Connection

__all__ = ["BODY", "HANDLING", "IDLE", "MAX_HEAD", "PEER_CERT", "WAITING", "GuardedHttp"]

#: Bytes a request line and its headers may take (httptools has no limit of its own).
MAX_HEAD = 64 * 1024
#: The ASGI scope's key for the client certificate (DER) of the request's connection.
PEER_CERT = "secfl.peer_cert"
#: A connection's phases (see :mod:`secfl._internal.httpguard`); the protocol here moves
#: it from one to the next as each request goes.
WAITING, BODY, HANDLING, IDLE = "waiting", "body", "handling", "idle"


def _json_response(status: int, error: str) -> bytes:
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, reporting each request's progress to its connection,
    its own refusals in JSON like every other (secfl.spm._apierrors)."""

    def __init__(self, conn: Connection, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn = conn
        self._fields = 0  # bytes of this request's fields so far (see on_header)
        self._trailers = False  # after a chunk's size line, before its data: maybe trailers
        self._body_now = 0  # body bytes the parser reported in the current feed
        self._tail = 0  # bytes read since the last body byte while trailers may come

    def send_400_response(self, msg: str) -> None:
        self.refuse(400, "http: not a valid HTTP/1.1 request")

    def refuse(self, status: int, error: str) -> None:
        """Answer ``{"error": ...}`` outside any request, and close."""
        if not self.transport.is_closing():
            self.transport.write(_json_response(status, error))
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.conn.in_head = True
        self._fields = self._tail = 0
        self._trailers = False

    def on_url(self, url: bytes) -> None:
        self._fields += len(url)
        if self._fields > MAX_HEAD:
            self.conn.refuse_head()
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Every field the parser reports, trailers of a chunked body included, counts
        against MAX_HEAD: httptools adds trailers to the request's header list after the
        head (where the connection counts bytes) has ended, without limit. (With the
        four bytes of its ": " and line end: a head of empty fields counts in full.)"""
        self._fields += len(name) + len(value) + 4
        if self._fields > MAX_HEAD:
            self.conn.refuse_head()
            return
        super().on_header(name, value)

    def data_received(self, data: bytes) -> None:
        # httptools keeps a field's name and value in its own buffer until the NEXT field
        # starts: one trailer that never ends reaches no on_header. So every byte read
        # in a chunked body's trailer section (what the feed did not deliver as body)
        # counts too.
        before, self._body_now = self._trailers, 0
        super().data_received(data)
        if before or self._trailers:
            self._tail += len(data) - self._body_now
            if self._tail > MAX_HEAD:
                self.conn.refuse_head()

    @property
    def in_trailers(self) -> bool:
        """Whether a chunked body's chunk header or trailer section may be under way."""
        return self._trailers

    @property
    def body_fed(self) -> int:
        """Body bytes the parser reported in the last ``data_received``."""
        return self._body_now

    @property
    def trailer_bytes(self) -> int:
        """Bytes read since the body's last byte while trailers may come."""
        return self._tail

    def on_chunk_header(self) -> None:
        self._trailers = True

    def on_chunk_complete(self) -> None:
        self._trailers = False

    def on_body(self, body: bytes) -> None:
        if self.conn.refused:
            return
        self._trailers, self._tail = False, 0
        self._body_now += len(body)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        # the parser goes on through what one read delivered after a refusal (431): a
        # request whose head was refused, or one behind it, never reaches the app
        if self.conn.refused:
            return
        if self.parser.should_upgrade():  # Connection: upgrade (WebSocket, h2c), CONNECT
            # Refused before the app sees it: uvicorn handed a WebSocket upgrade to its
            # WebSocket protocol where one is installed (the Flower venv), which took the
            # connection from this guard (never told of its end, counted as busy until
            # the request deadline: 256 of them locked every client out), and forwarded
            # an h2c upgrade's request with its body cut off.
            self.conn.refuse_request(400, "http: no protocol upgrade is served")
            return
        self.conn.enter(BODY)
        cast(dict[str, Any], self.scope)[PEER_CERT] = self.conn.peer_cert
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self.conn.refused:
            return
        super().on_message_complete()
        if self.cycle is None or not self.cycle.response_complete:
            self.conn.enter(HANDLING)  # else already answered (e.g. 413): stays idle

    def _should_upgrade(self) -> bool:
        return False  # every upgrade is refused (on_headers_complete): none is made

    def _unsupported_upgrade_warning(self) -> None:
        pass  # refused already, in one line to the client; nothing to log per request

    def shutdown(self) -> None:
        """The server is stopping: an idle connection is dropped at once. uvicorn's own
        closes it gracefully, and the TLS layer then waits ``ssl_shutdown_timeout`` for
        the peer's close_notify, which an idle keep-alive client never sends: every
        restart of the SPM would take 5 s while an aggregator held a connection. A
        request under way is answered first, and so is an answer not yet all written
        out (uvicorn's shutdown: dropping the connection would lose its tail)."""
        idle = self.cycle is None or self.cycle.response_complete
        if idle and not self.conn.unsent():
            self.conn.close_now(None)
        else:
            super().shutdown()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        self.conn.enter(HANDLING if pipelined else IDLE)
