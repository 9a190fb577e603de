"""One accepted connection of a guarded server (:mod:`secfl._internal.httpguard`).

A :class:`Connection` is the protocol the server runs for each accepted TCP
connection: counted in by its :class:`~secfl._internal.httpguard.Guard` (or refused
at the cap), given a deadline in each phase, upgraded to TLS here
(``loop.start_tls``) so that the handshake is counted and timed from accept too, then
handed to the HTTP protocol (:class:`~secfl._internal.httpparser.GuardedHttp`). What
one read brings is parsed a slice at a time, so that a head or a trailer section past
``MAX_HEAD`` is refused before its request reaches the app.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar, cast

from uvicorn.config import Config
from uvicorn.server import ServerState

from secfl._internal.httpparser import BODY, HANDLING, MAX_HEAD, WAITING, GuardedHttp

if TYPE_CHECKING:
    from secfl._internal.httpguard import Guard

__all__ = ["Connection"]

#: Outside a body, the bytes parsed before the caps are checked again.
HEAD_SLICE = 4096


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
        self.http: GuardedHttp | None = None
        self.phase = WAITING
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
        self.http = GuardedHttp(self, **self._http_args)
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
        if phase == BODY:
            self.in_head, self._head = False, 0
            self._request_deadline = now + limits.request_timeout
            self._arm(limits.body_timeout)
        elif phase == HANDLING:
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
            step = MAX_HEAD if self.phase == BODY and not http.in_trailers else HEAD_SLICE
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
