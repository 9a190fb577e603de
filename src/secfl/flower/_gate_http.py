"""The gate's HTTP side: how it is served, and the headers and answers of its requests.

:func:`serve` runs a :class:`~secfl.flower._gate.FleetGate` over TLS behind the
SPM's connection guard (:mod:`secfl._internal.httpguard`), in a thread;
:func:`server_context` is the TLS context of policies made before the gate had mutual
TLS. The helpers read the one header a request may give of each kind that matters
(two could be read differently here and by Flower), name the hop-by-hop headers the
gate never forwards, and write its one-line JSON answers. Kept apart from the gate
itself (:mod:`secfl.flower._gate`: which calls pass, whose keys, the memory budget),
which is what a review of the gate reads.
"""

from __future__ import annotations

import binascii
import json
import ssl
import threading
from base64 import b64decode
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

import uvicorn

from secfl._internal.httpguard import Guard, Limits, file_budget

if TYPE_CHECKING:
    from secfl.flower._gate import FleetGate

__all__ = ["NODE_KEY_HEADER", "serve", "server_context"]

#: Where a SuperNode names its key (``flwr.supercore.constant.FLEET_HTTP_PUBLIC_KEY_HEADER``):
#: base64 of the SPKI PEM, as Flower registers and compares it.
NODE_KEY_HEADER = b"flwr-public-key"
_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host", b"content-length",
})  # fmt: skip
#: What of the SuperLink's answer the gate writes itself: one ``date`` (uvicorn's), no
#: ``server`` (both went out twice: Flower's and the gate's own).
_OWN = frozenset({b"date", b"server"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The request's one ``content-length`` (checked by the HTTP parser), or None."""
    values = [v for k, v in headers if k.lower() == b"content-length"]
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 12:
        return None
    return int(values[0])


def _node_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key named by the one ``flwr-public-key`` header; None if absent, repeated or
    not base64 (two headers could be read differently here and by Flower)."""
    values = [v for k, v in headers if k.lower() == NODE_KEY_HEADER]
    if len(values) != 1:
        return None
    try:
        return b64decode(values[0], validate=True)
    except (binascii.Error, ValueError):
        return None


async def _answer(
    send: Send, status: int, error: str, *, retry: bool = False, close: bool = False
) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *([(b"retry-after", b"1")] if retry else []),
        *([(b"connection", b"close")] if close else []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(
    gate: FleetGate,
    host: str,
    port: int,
    tls: ssl.SSLContext | Callable[[], ssl.SSLContext],
) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve ``gate`` over TLS on ``host:port`` in a thread; returns once it listens.

    ``tls`` is the server's context, or a function returning the current one (a
    certificate renewed while serving). Behind the same connection guard as the SPM
    (:mod:`secfl._internal.httpguard`: TLS done by it, deadlines for the handshake,
    headers and body, a cap on a request's head, stalled connections evicted at the
    connection cap): uvicorn alone kept a connection that never finished its request
    open for ever, and 256 of them, from anyone who reaches the gate, locked every
    SuperNode out (503)."""
    # at most 256 connections (with MAX_BODY: 4 GiB of requests in memory); uvicorn's own
    # limit_concurrency would count the stalled ones and answer 503 to everyone else
    guard = Guard(file_budget(Limits(max_connections=256)), tls)
    config = uvicorn.Config(
        gate,
        host=host,
        port=port,
        http=guard.protocol_class(),
        ws="none",  # no WebSocket: an upgrade is refused (secfl._internal.httpguard)
        loop="asyncio",  # see secfl._internal.httpguard: uvloop reads before start_tls can run
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
        server_header=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="secfl-fleet-gate", daemon=True)
    thread.start()
    return server, thread


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """The gate's context with the policy's SuperLink certificate (the policies made
    before the gate had mutual TLS: any client may connect)."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.set_alpn_protocols(["http/1.1"])
    tls.load_cert_chain(certfile, keyfile)
    return tls
