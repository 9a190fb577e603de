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

TLS is done by the guard's connections (``loop.start_tls``) rather than by the
server, so that a connection is counted and timed from accept, not from the end of
its handshake. A server whose context asks for client certificates finds the one each
request's connection presented in the ASGI scope, under
:data:`~secfl._internal.httpparser.PEER_CERT` (DER). The context may be given as a
function returning the current one (a certificate renewed while serving: each new
connection takes the context of its time).
This needs asyncio's own event loop: uvloop starts reading a new connection right
after ``connection_made`` even if the protocol paused it, so the client's first TLS
bytes would arrive before ``start_tls`` could take them.

:func:`file_budget` raises the soft ``RLIMIT_NOFILE`` to the hard one and keeps
``max_connections`` (and the listen backlog, whose connections are accepted in
batches) well below it, leaving room for the database and the process itself.
What this does not stop: a flood of *fast* connections (SYN floods, request floods)
from many addresses; that needs a network-level limit in front of the SPM.

This module holds what a server is built with: the :class:`Limits`,
:func:`file_budget` and the :class:`Guard` (the open connections and the cap). Each
connection's own machinery is in :mod:`secfl._internal.httpconn` (the
:class:`~secfl._internal.httpconn.Connection` protocol: TLS from accept, the deadlines,
the slices a read is parsed in) and :mod:`secfl._internal.httpparser` (uvicorn's HTTP
protocol as a guarded connection runs it: ``MAX_HEAD``, refusals in JSON).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from secfl._internal.fdlimit import RESERVED_FDS, open_fds, raise_file_limit
from secfl._internal.httpconn import Connection
from secfl._internal.httpparser import BODY, IDLE, WAITING
from secfl.errors import SpmError

__all__ = [
    "MIN_CONNECTIONS",
    "RESERVED_FDS",
    "Guard",
    "Limits",
    "file_budget",
]

log = logging.getLogger("uvicorn.error")

MIN_CONNECTIONS = 16
#: Eviction order: lower first; phases absent here are never evicted.
_EVICTABLE = {WAITING: 0, IDLE: 0, BODY: 1}


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
