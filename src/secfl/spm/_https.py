"""Requests to one SPM over keep-alive HTTPS connections that verify its certificate.

Why the standard library's ``http.client`` and not httpx here: the aggregator
increments the SPM's counter every round, and on rounds of tens of milliseconds
httpx's per-request machinery (request models, auth and redirect flows, its
connection pool) cost the aggregator about 1.1 ms of CPU a request against 0.44 ms
for the same request over ``http.client`` (measured on the development machine;
docs/benchmarks.md). Everything else stays as it was: the caller's
``ssl.SSLContext`` (which trusts exactly the pinned certificate) verifies every
connection, and nothing here turns a check off.

Connections are kept for reuse, one request at a time each, so that threads may
share a :class:`PinnedHttps`. An idle connection the SPM has closed meanwhile (it
drops idle keep-alive connections) is noticed before it is reused, not by sending
a request into it.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
from typing import NamedTuple
from urllib.parse import quote, urlencode

__all__ = ["MAX_BODY", "AnswerLost", "ConnectFailed", "PinnedHttps", "Reply", "RequestFailed"]

#: The largest answer read (bytes): the SPM's answers are small JSON documents.
MAX_BODY = 64 << 20
#: Idle connections kept per client.
_KEEP = 4
_PIECE = 64 << 10
#: A body up to this size goes out with its headers in one write (see :class:`_Connection`):
#: one TLS record (16 KiB) with the headers, as every request of the SPM client's is.
_ONE_WRITE = 15 << 10


class _Connection(http.client.HTTPSConnection):
    """``http.client``'s connection, writing a request's headers and a small body
    together: one TLS record, one wake-up of the SPM's event loop. (``http.client``
    writes them apart, and the SPM read the headers, then woke again for the body.)"""

    def _send_output(self, message_body: object = None, encode_chunked: bool = False) -> None:
        if (
            isinstance(message_body, bytes)
            and not encode_chunked
            and len(message_body) <= _ONE_WRITE
        ):
            self._buffer.extend((b"", message_body))  # type: ignore[attr-defined]
            request = b"\r\n".join(self._buffer)  # type: ignore[attr-defined]
            del self._buffer[:]  # type: ignore[attr-defined]
            self.send(request)
            return
        super()._send_output(message_body, encode_chunked)  # type: ignore[misc]


class ConnectFailed(Exception):
    """No answer, and worth one retry on a fresh connection (the SPM may have restarted
    with a new certificate): the connection or its TLS handshake failed, or the SPM
    closed it without answering, or mid-answer."""


class AnswerLost(ConnectFailed):
    """The request went out and the connection closed without (all of) its answer: the
    SPM may have acted on it. Sent again, only a request that may be (a read, or a
    named compare-and-increment)."""


class RequestFailed(Exception):
    """No answer (a timeout, an error after the request went out, an answer too large)."""


class Reply(NamedTuple):
    status: int
    body: bytes


class PinnedHttps:
    """HTTPS requests to ``host:port`` (under the path ``prefix``), verified with
    ``context``."""

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, timeout: float, *, prefix: str = ""
    ) -> None:
        self.host, self.port = host, port
        self._context = context
        self._timeout = timeout
        self._prefix = prefix
        self._idle: list[http.client.HTTPSConnection] = []
        self._closed = False
        self._lock = threading.Lock()

    @property
    def context(self) -> ssl.SSLContext:
        """The TLS context every connection verifies the SPM with."""
        return self._context

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, object] | None = None,
    ) -> Reply:
        """``method path`` answered. The request goes out at most once: a failure to
        connect is :class:`ConnectFailed`, a close before or during the answer
        :class:`AnswerLost`, anything else :class:`RequestFailed`."""
        if any(part in (".", "..") for part in path.split("/")):
            raise RequestFailed(f"'{path}' has a '.' or '..' segment")
        target = quote(self._prefix + path, safe="/:@-._~")
        if params:
            target += "?" + urlencode(params)
        sent = {"Accept": "application/json"}  # (http.client writes Host itself)
        if body is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        conn = self._take()
        try:
            if conn.sock is None:
                try:
                    conn.connect()
                except TimeoutError:
                    raise RequestFailed("timed out connecting") from None
                except (ssl.SSLError, OSError) as exc:
                    raise ConnectFailed(_reason(exc)) from None
            conn.request(method, target, body=body, headers=sent)
            try:
                answer = conn.getresponse()
                data = _read(answer)
            except (http.client.RemoteDisconnected, http.client.IncompleteRead) as exc:
                raise AnswerLost(_reason(exc)) from None
        except ConnectFailed:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise RequestFailed(_reason(exc)) from None
        except BaseException:
            conn.close()
            raise
        if answer.will_close or not answer.isclosed():
            conn.close()
        else:
            self._give_back(conn)
        return Reply(answer.status, data)

    def close(self) -> None:
        """Close the kept connections; one still in use is closed when its request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self) -> http.client.HTTPSConnection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return _Connection(
                    self.host, self.port, timeout=self._timeout, context=self._context
                )
            if _still_open(conn):
                return conn
            conn.close()

    def _give_back(self, conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < _KEEP:
                self._idle.append(conn)
                return
        conn.close()


def _read(answer: http.client.HTTPResponse) -> bytes:
    """The whole answer, at most :data:`MAX_BODY` bytes; an answer cut short raises
    ``IncompleteRead`` (a close without TLS's close_notify reads as an end of stream,
    so the length the answer announced is what tells)."""
    if answer.length is not None:
        if answer.length > MAX_BODY:
            raise RequestFailed(f"the answer is larger than {MAX_BODY} bytes")
        return answer.read()  # short of its Content-Length: IncompleteRead
    pieces, size = [], 0
    while piece := answer.read(_PIECE):  # chunked: a cut raises IncompleteRead
        size += len(piece)
        if size > MAX_BODY:
            raise RequestFailed(f"the answer is larger than {MAX_BODY} bytes")
        pieces.append(piece)
    return b"".join(pieces)


def _still_open(conn: http.client.HTTPSConnection) -> bool:
    """Whether an idle connection can take a request: nothing may be readable on it,
    in the socket or in the TLS layer's buffer (a close by the SPM, or bytes no
    request asked for)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        poller = select.poll()  # (select.select refuses descriptors from 1024 on)
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the answer was cut short ({len(exc.partial)} bytes)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
