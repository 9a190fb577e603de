"""Connection limits for the SPM's HTTPS server: slow or silent clients cannot hold it.

uvicorn (0.55, httptools) has no timeout for a request's headers or body: its only
timer is the keep-alive one, armed *after* a response. A client that opens a
connection and sends half a header (or, over TLS, nothing at all: the handshake
waits 60 s) holds a file descriptor for as long as it likes, and a few hundred of
them exhaust ``RLIMIT_NOFILE`` so that nobody else gets in. ``limit_concurrency``
does not help: it counts connections only once their headers are complete and
answers 503 without closing anything.

So every connection goes through a :class:`Guard`, which the server uses as its
protocol. Each connection is one of::

    waiting   accepted, TLS handshake and request headers not complete yet
    body      headers complete, body still arriving
    handling  request complete, the SPM is answering
    idle      between two requests of a keep-alive connection

and has a deadline in each phase (``waiting``: ``header_timeout`` from accept; ``body``:
``body_timeout`` from the headers; ``handling``: ``request_timeout`` from the headers;
``idle``: ``keep_alive + header_timeout``), after which it is aborted (no TLS
close-notify wait: the descriptor is freed at once). At most ``max_connections`` are
open; a new one beyond that evicts the oldest ``waiting`` or ``idle`` connection (then
the oldest ``body`` one), never one being answered. A flood of stalled connections
thus only ever displaces other stalled connections, and an honest client that
completes its request in milliseconds is served. A request's line and headers may
take ``MAX_HEAD`` bytes (answered 431 beyond): httptools takes megabytes of headers,
and uvicorn's ``h11_max_incomplete_event_size`` applies to h11 only. uvicorn's own
parser refusals (400) are JSON like every other refusal.

TLS is done here (``loop.start_tls``) rather than by the server, so that a
connection is counted and timed from accept, not from the end of its handshake. A
server whose context asks for client certificates finds the one each request's
connection presented in the ASGI scope, under :data:`PEER_CERT` (DER). The context
may be given as a function returning the current one (a certificate renewed while
serving: each new connection takes the context of its time).
This needs asyncio's own event loop: uvloop starts reading a new connection right
after ``connection_made`` even if the protocol paused it, so the client's first TLS
bytes would arrive before ``start_tls`` could take them.

:func:`file_budget` raises the soft ``RLIMIT_NOFILE`` to the hard one and keeps
``max_connections`` (and the listen backlog, whose connections are accepted in
batches) well below it, leaving room for the database and the process itself.
What this does not stop: a flood of *fast* connections (SYN floods, request floods)
from many addresses; that needs a network-level limit in front of the SPM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from secfl._internal.fdlimit import RESERVED_FDS, open_fds, raise_file_limit
from secfl.errors import SpmError

__all__ = [
    "MAX_HEAD",
    "MIN_CONNECTIONS",
    "PEER_CERT",
    "RESERVED_FDS",
    "Connection",
    "Guard",
    "Limits",
    "file_budget",
]

log = logging.getLogger("uvicorn.error")

#: Descriptors kept free for the database pool, logs and the event loop itself.
#: Bytes a request line and its headers may take (httptools has no limit of its own).
MAX_HEAD = 64 * 1024
#: The ASGI scope's key for the client certificate (DER) of the request's connection.
PEER_CERT = "secfl.peer_cert"
#: Outside a body, the bytes parsed before the caps are checked again.
HEAD_SLICE = 4096
MIN_CONNECTIONS = 16
_WAITING, _BODY, _HANDLING, _IDLE = "waiting", "body", "handling", "idle"
#: Eviction order: lower first; phases absent here are never evicted.
_EVICTABLE = {_WAITING: 0, _IDLE: 0, _BODY: 1}


@dataclass(frozen=True)
class Limits:
    """Timeouts (seconds) and the connection cap; see the module docstring."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    request_timeout: float = 60.0
    keep_alive: float = 5.0
    max_connections: int = 1000
    backlog: int = 1024

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "request_timeout", "keep_alive"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise SpmError(f"connections: {name} must be in (0, 3600] seconds, not {value}")
        if not MIN_CONNECTIONS <= self.max_connections <= 1_000_000:
            raise SpmError(
                f"connections: max_connections must be in [{MIN_CONNECTIONS}, 1000000], "
                f"not {self.max_connections}"
            )


def file_budget(limits: Limits) -> Limits:
    """``limits`` with ``max_connections`` and ``backlog`` fitted to this process's file
    limit, after raising its soft limit to the hard one. :class:`SpmError` if the limit
    leaves too little room to serve."""
    soft = raise_file_limit()
    # Up to about three accept batches (each at most ``backlog``) can be open before
    # the guard sees them and evicts; see the module docstring.
    backlog = max(8, min(limits.backlog, soft // 8))
    room = soft - open_fds() - RESERVED_FDS - 3 * backlog
    if room < MIN_CONNECTIONS:
        need = soft - room + MIN_CONNECTIONS
        raise SpmError(
            f"connections: the open-file limit of {soft} leaves room for {max(room, 0)} "
            f"connections; raise it (ulimit -n) to at least {need}"
        )
    return Limits(
        header_timeout=limits.header_timeout,
        body_timeout=limits.body_timeout,
        request_timeout=limits.request_timeout,
        keep_alive=limits.keep_alive,
        max_connections=min(limits.max_connections, room),
        backlog=backlog,
    )


class Guard:
    """The open connections of one server, their deadlines and the cap."""

    def __init__(self, limits: Limits, tls: ssl.SSLContext | Callable[[], ssl.SSLContext]) -> None:
        self.limits = limits
        self.tls = tls
        self.live: dict[Connection, None] = {}  # insertion order: oldest first
        self.tasks: set[asyncio.Task[None]] = set()
        self._dropped = 0
        self._logged = 0.0

    def context(self) -> ssl.SSLContext:
        """The TLS context for a new connection."""
        return self.tls if isinstance(self.tls, ssl.SSLContext) else self.tls()

    def protocol_class(self) -> type[Connection]:
        """The protocol class to hand to uvicorn (``Config(http=...)``)."""
        return cast(type[Connection], type("GuardedConnection", (Connection,), {"guard": self}))

    def admit(self, conn: Connection) -> bool:
        """Count ``conn`` in; at the cap, evict the oldest stalled connection first.
        False (refuse ``conn``) when every open connection is being answered."""
        if len(self.live) >= self.limits.max_connections:
            victim = min(
                (c for c in self.live if c.phase in _EVICTABLE),
                key=lambda c: (_EVICTABLE[c.phase], c.since),
                default=None,
            )
            if victim is None:
                self.dropped("refused: every connection is busy")
                return False
            victim.close_now(f"evicted ({victim.phase}) at the cap")
        self.live[conn] = None
        return True

    def dropped(self, why: str) -> None:
        """Count a connection the guard closed; log at most every 10 s."""
        self._dropped += 1
        now = time.monotonic()
        if now - self._logged >= 10:
            log.warning(
                "connections: closed %d stalled or excess connection(s) (last: %s); "
                "%d open, cap %d",
                self._dropped,
                why,
                len(self.live),
                self.limits.max_connections,
            )
            self._dropped, self._logged = 0, now


def _json_response(status: int, error: str) -> bytes:
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Http(HttpToolsProtocol):
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
        self.conn.enter(_BODY)
        cast(dict[str, Any], self.scope)[PEER_CERT] = self.conn.peer_cert
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self.conn.refused:
            return
        super().on_message_complete()
        if self.cycle is None or not self.cycle.response_complete:
            self.conn.enter(_HANDLING)  # else already answered (e.g. 413): stays idle

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
        self.conn.enter(_HANDLING if pipelined else _IDLE)


class Connection(asyncio.Protocol):
    """One accepted TCP connection: counted, timed, upgraded to TLS, then HTTP.

    It is the raw socket's protocol until the TLS handshake, then the TLS transport's
    protocol, forwarding to uvicorn's HTTP protocol once that exists.
    """

    guard: ClassVar[Guard]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = _loop or asyncio.get_event_loop()
        self._http_args: dict[str, Any] = {
            "config": config,
            "server_state": server_state,
            "app_state": app_state,
            "_loop": _loop,
        }
        self.raw: asyncio.Transport | None = None
        self.http: _Http | None = None
        self.phase = _WAITING
        self.since = self.loop.time()
        self._request_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._early: list[bytes] = []
        self._eof = False
        self.in_head = False  # between a request's first byte and the end of its headers
        self._head = 0  # bytes received meanwhile
        self._refused = False
        self.closed = False
        #: The client's certificate (DER), when the server's context asks for one.
        self.peer_cert: bytes | None = None

    # --- lifetime ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport = cast(asyncio.Transport, transport)
        transport.pause_reading()  # nothing is read before the TLS layer is in place
        if not self.guard.admit(self):
            self.closed = True
            transport.abort()
            return
        self._arm(self.guard.limits.header_timeout)
        task = self.loop.create_task(self._handshake())
        self.guard.tasks.add(task)
        task.add_done_callback(self.guard.tasks.discard)

    async def _handshake(self) -> None:
        raw = self.raw
        if raw is None or self.closed or raw.is_closing():
            self.close_now(None)
            return
        limits = self.guard.limits
        try:
            tls = await self.loop.start_tls(
                raw,
                self,
                self.guard.context(),
                server_side=True,
                ssl_handshake_timeout=limits.header_timeout,
                ssl_shutdown_timeout=min(5.0, limits.header_timeout),
            )
        except Exception:  # a failed or timed-out handshake: nothing to answer
            self.close_now(None)
            return
        if tls is None or self.closed or tls.is_closing():
            self.close_now(None)
            return
        ssl_object = tls.get_extra_info("ssl_object")
        if ssl_object is not None:  # what a server that asks for one was shown (DER)
            self.peer_cert = ssl_object.getpeercert(binary_form=True)
        self.http = _Http(self, **self._http_args)
        self.http.connection_made(tls)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if self._eof:
            self.http.eof_received()

    def unsent(self) -> int:
        """Bytes written but not yet handed to the kernel (TLS layer and socket)."""
        queued = 0
        for transport in (self.http.transport if self.http else None, self.raw):
            if transport is not None and not transport.is_closing():
                queued += transport.get_write_buffer_size()
        return queued

    def close_now(self, why: str | None) -> None:
        """Free the slot and the descriptor at once (abort: no close-notify wait)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self in self.guard.live:
            del self.guard.live[self]
            if why is not None:
                self.guard.dropped(why)
        self.closed = True
        if self.raw is not None:
            self.raw.abort()  # a no-op once closed; else frees the descriptor now

    # --- deadlines ----------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(max(seconds, 0.0), self._expired)

    def _expired(self) -> None:
        self._timer = None
        self.close_now(f"{self.phase} for too long")

    def enter(self, phase: str) -> None:
        """Move to ``phase``, with that phase's deadline."""
        if self.closed:
            return
        limits, now = self.guard.limits, self.loop.time()
        self.phase, self.since = phase, now
        if phase == _BODY:
            self.in_head, self._head = False, 0
            self._request_deadline = now + limits.request_timeout
            self._arm(limits.body_timeout)
        elif phase == _HANDLING:
            self._arm(self._request_deadline - now)
        else:  # idle: uvicorn closes after keep_alive; a next request has header_timeout
            self._arm(limits.keep_alive + limits.header_timeout)

    # --- the TLS transport's events, forwarded to HTTP ------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.http is None:
            if not self.closed:
                self._early.append(data)  # decrypted before start_tls() returned
            return
        # What one read brought is parsed a slice at a time and counted after each: a
        # head (or a trailer section) padded past MAX_HEAD that ends within one read was
        # parsed whole, its request handed to the app, before the count saw it (found
        # by reviews, also behind a body's end). A body goes in slices of MAX_HEAD, the
        # rest in slices of HEAD_SLICE, and no slice takes a head or a trailer section
        # past the cap (it could end in it).
        http, view = self.http, memoryview(data)
        while view and not self._refused and not http.transport.is_closing():
            step = MAX_HEAD if self.phase == _BODY and not http.in_trailers else HEAD_SLICE
            if self.in_head or http.in_trailers:
                counted = self._head if self.in_head else http.trailer_bytes
                if counted >= MAX_HEAD:
                    self.refuse_head()
                    return
                step = min(step, MAX_HEAD - counted)
            piece, view = view[:step], view[step:]
            http.data_received(bytes(piece))
            if self.in_head:  # a request has begun and its headers are not complete yet
                # (the piece's body bytes, a request before it, are not its head: found
                # by a review, a pipelined head behind a body was refused for them)
                self._head += len(piece) - http.body_fed
                if self._head > MAX_HEAD:
                    self.refuse_head()

    @property
    def refused(self) -> bool:
        """Whether this connection was refused outside any request (it is closing)."""
        return self._refused

    def refuse_request(self, status: int, error: str) -> None:
        """Answer ``status`` with ``error`` and close, before the app sees the request."""
        if not self._refused and self.http is not None:
            self._refused = True
            self.http.refuse(status, error)

    def refuse_head(self) -> None:
        """Answer 431 and close: a request's head, or its fields, passed MAX_HEAD."""
        self.refuse_request(431, f"headers: larger than the limit of {MAX_HEAD} bytes")

    def eof_received(self) -> bool | None:
        if self.http is not None:
            self.http.eof_received()  # uvicorn's returns None: close the transport
            return None
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close_now(None)
        if self.http is not None:
            self.http.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.http is not None:
            self.http.pause_writing()

    def resume_writing(self) -> None:
        if self.http is not None:
            self.http.resume_writing()
