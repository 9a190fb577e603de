"""gRPC over mutual TLS between the aggregator and its collaborators.

Both sides present the certificate the SPM issued after attestation and accept a
peer only when its certificate chains to the policy's identity CA (checked by
TLS, at the handshake: another CA, a self-signed or an expired certificate never
gets a channel), when it is not revoked (the SPM's revocation list, refreshed by
the caller) and when it names a service of the expected role in the policy (the
URI SAN ``secfl://POLICY/SERVICE``, checked on every call). A refusal is logged
and answered with PERMISSION_DENIED naming the check.

A certificate is also checked for expiry on every call: an HTTP/2 connection
outlives the handshake, and a collaborator whose short-lived certificate expired
must renew it (attest again) before it is heard. What a certificate says (serial,
expiry, service) is parsed once per certificate and cached (:class:`PeerPolicy`);
the checks themselves run on every call. The server's own certificate can be
replaced while it runs (:meth:`Server.rotate`). A secure server answers ``Who`` with
the serial of the certificate it presents, which a collaborator pins
(:mod:`secfl.fl._pin`).

``--insecure`` mode (no TLS, the peer's name taken from what it claims) exists only
to measure the overhead of the secure one; it logs a warning whenever it is used.

Messages are bytes, no protobuf code generation: every method is registered with
a generic handler. Large payloads (models, updates) stream as chunks of at most
``CHUNK_SIZE`` bytes, so there is no message-size ceiling; the receiver bounds the
total it accepts. An *exchange* streams both ways on one call: pieces up, then an
answer and a streamed payload down (``Client.exchange``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import TypeVar

import grpc
from cryptography import x509

from secfl._internal import fdlimit
from secfl.errors import SecflError, StaleRevocations, TransportError
from secfl.fl._channel import CLIENT_OPTIONS, RECONNECT_OPTIONS, Client
from secfl.fl._peers import PEER_CACHE_SIZE, Peer, PeerPolicy
from secfl.fl._wire import (
    CHUNK_SIZE,
    INSECURE_NAME,
    INSECURE_WARNING,
    MESSAGE_LIMIT,
    SERVICE,
    WHO,
    WHOLE,
    Credentials,
    join,
)

__all__ = [
    "CHUNK_SIZE",
    "CLIENT_OPTIONS",
    "INSECURE_NAME",
    "INSECURE_WARNING",
    "MAX_CALLS_PER_PEER",
    "MESSAGE_LIMIT",
    "MIN_WORKERS",
    "PEER_CACHE_SIZE",
    "RECONNECT_OPTIONS",
    "SERVER_OPTIONS",
    "SERVICE",
    "SPARE_WORKERS",
    "UPLOAD_WINDOW",
    "WHO",
    "WHOLE",
    "Client",
    "Credentials",
    "Download",
    "Exchange",
    "Peer",
    "PeerPolicy",
    "Server",
    "TransportError",
    "Unary",
    "Upload",
    "join",
    "pool_size",
]

log = logging.getLogger("secfl.fl._transport")

R = TypeVar("R")

#: Calls one peer (a service of the policy) may have under way at once. An honest
#: collaborator has one or two (``SubmitNext`` or ``Next``, and a ``Beat``); a peer
#: holding calls open without sending (a valid certificate is enough to try) would
#: otherwise take every thread of the aggregator's pool, and the others' calls with them.
MAX_CALLS_PER_PEER = 4
#: Threads a server keeps beyond every peer's share: for calls it refuses (a stranger's,
#: a revoked peer's, one past a peer's share), which hold a thread only to be refused.
SPARE_WORKERS = 8
#: The fewest threads a server has, however few peers it names.
MIN_WORKERS = 16

#: The HTTP/2 flow-control window the server gives each stream it receives (uploads:
#: ``Submit``), fixed. With gRPC's BDP probing the window grows with the measured
#: bandwidth, and every upload waiting for the aggregator's receive window has that
#: much buffered in gRPC. Measured on loopback (a loaded 2-core machine, noisy): three
#: uploads held waiting cost the server 30-45 MiB with mTLS and 100-400 MiB in
#: plaintext; with the window fixed at 4 MiB, 24 MiB. One mTLS upload moves as fast
#: (interleaved A/B: 460-540 MB/s median either way), and so does a 100M-parameter
#: round of bench_scale.py. The cost: over a WAN one upload moves at most 4 MiB per
#: round trip (42 MB/s at 100 ms). Downloads are governed by the clients' windows.
UPLOAD_WINDOW = 4 << 20
#: Milliseconds a connection has to finish its TLS handshake: one that sends nothing
#: is closed then (gRPC's default, two minutes, let idle sockets pile up).
HANDSHAKE_TIMEOUT_MS = 10_000
#: Connections a server accepts at most, whatever its file limit allows: a federation
#: has far fewer peers, each with a connection or two.
MAX_CONNECTIONS = 4096
#: The server's gRPC options: message limits, the fixed upload window, the handshake's
#: deadline (the connection cap depends on the process: :func:`connection_cap`).
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", UPLOAD_WINDOW),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
)


def connection_cap() -> int:
    """Connections the server may hold: what the open-file limit (raised to the hard
    one) leaves once the process's own files are set aside, at most
    :data:`MAX_CONNECTIONS`. Uncapped, 1100 idle TCP connections (no TLS needed) took
    every descriptor under a limit of 1024: no collaborator could join and the
    aggregator could not write its checkpoint (a review). Past the cap, connections are
    refused and the process keeps its files; a flood can still keep peers waiting."""
    room = fdlimit.raise_file_limit() - fdlimit.open_fds() - fdlimit.RESERVED_FDS
    return max(16, min(MAX_CONNECTIONS, room // 2))  # (a pending accept holds one too)


def pool_size(peers: int) -> int:
    """Threads for a server of ``peers`` peers: each peer's full share of calls
    (:data:`MAX_CALLS_PER_PEER`) and :data:`SPARE_WORKERS` more, at least
    :data:`MIN_WORKERS`. Fewer, and peers holding their share open without sending
    could together leave another peer's call queued with no thread to take it."""
    return max(MIN_WORKERS, MAX_CALLS_PER_PEER * peers + SPARE_WORKERS)


Unary = Callable[[bytes, Peer], bytes]
Upload = Callable[[Iterator[bytes], Peer], bytes]
Download = Callable[[bytes, Peer], Iterable[bytes]]
#: Pieces in, messages out: the first message is the answer, the rest one payload.
Exchange = Callable[[Iterator[bytes], Peer], Iterable[bytes]]


class Server:
    """A gRPC server that accepts only authorised peers (see :class:`PeerPolicy`).

    ``creds=None`` is --insecure mode: plaintext, every caller believed.
    ``workers`` (threads) defaults to :func:`pool_size` of the peers named.
    """

    def __init__(
        self, creds: Credentials | None, peers: PeerPolicy, *, workers: int | None = None
    ) -> None:
        self.peers = peers
        self.insecure = creds is None
        self._unary: dict[str, Unary] = {}
        self._upload: dict[str, Upload] = {}
        self._download: dict[str, Download] = {}
        self._exchange: dict[str, Exchange] = {}
        if workers is None:
            workers = pool_size(len(peers.services))
        options = [*SERVER_OPTIONS, ("grpc.max_allowed_incoming_connections", connection_cap())]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()  # calls under way, per peer service
        self._next_config: grpc.ServerCertificateConfiguration | None = None
        self._creds: grpc.ServerCredentials | None = None
        self._serial = b""  # of the certificate new handshakes get (WHO answers it)
        if creds is not None:
            self._serial = _serial(creds)
            self._creds = grpc.dynamic_ssl_server_credentials(
                self._config(creds),
                self._fetch_config,  # type: ignore[arg-type]  # None: no change (stubs omit it)
                require_client_authentication=True,
            )
        else:
            log.warning(INSECURE_WARNING)
        self.port = 0

    @staticmethod
    def _config(creds: Credentials) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(creds.key_pem, creds.cert_pem)], root_certificates=creds.ca_pem
        )

    def _fetch_config(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            config, self._next_config = self._next_config, None
        return config

    def rotate(self, creds: Credentials) -> None:
        """Present ``creds`` from the next handshake on (a renewed certificate)."""
        if self.insecure:
            return
        with self._lock:
            self._next_config = self._config(creds)
            self._serial = _serial(creds)

    def _who(self, request: bytes, peer: Peer) -> bytes:
        """The serial of the certificate this server presents from now on: the caller
        connects again to the name only that certificate carries (:mod:`secfl.fl._pin`)."""
        with self._lock:
            return self._serial

    def unary(self, name: str, fn: Unary) -> None:
        if name == WHO:
            raise ValueError(f"transport: {WHO} is the server's own method")
        self._unary[name] = fn

    def upload(self, name: str, fn: Upload) -> None:
        self._upload[name] = fn

    def download(self, name: str, fn: Download) -> None:
        self._download[name] = fn

    def exchange(self, name: str, fn: Exchange) -> None:
        self._exchange[name] = fn

    def _peer(self, context: grpc.ServicerContext) -> Peer:
        """The caller, authorised (:class:`PeerPolicy`) and within its share of calls."""
        peer = self._identify(context)
        with self._lock:
            under_way = self._calls[peer.service]
            if under_way < MAX_CALLS_PER_PEER:
                self._calls[peer.service] = under_way + 1
        if under_way >= MAX_CALLS_PER_PEER:
            log.warning("refused a call of '%s': %d calls under way", peer.service, under_way)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"peer: '{peer.service}' has {under_way} calls under way already",
            )
        if not context.add_callback(lambda: self._ended(peer.service)):
            self._ended(peer.service)  # the call ended already

        def cancel() -> None:  # ends the call: a handler waiting for its next piece wakes
            context.cancel()

        return dataclasses.replace(peer, cancel=cancel)

    def _ended(self, service: str) -> None:
        with self._lock:
            self._calls[service] -= 1
            if self._calls[service] <= 0:
                del self._calls[service]

    def _identify(self, context: grpc.ServicerContext) -> Peer:
        if self.insecure:
            name = dict(context.invocation_metadata()).get(INSECURE_NAME, "")
            if not name:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "peer: no name (insecure mode)")
            return Peer(self.peers.policy, str(name), "")
        found = context.auth_context().get("x509_pem_cert")
        certs: list[bytes] = found or []  # type: ignore[assignment]  # a list (stubs: bytes)
        try:
            return self.peers.check(certs[0] if certs else None)
        except StaleRevocations as exc:  # passing: collaborators try UNAVAILABLE again
            log.warning("refused a call: %s", exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise
        except TransportError as exc:
            log.warning("refused a call: %s", exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise  # abort raises; this keeps type checkers informed

    def _answer(self, fn: Unary, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        peer = self._peer(context)  # before the request is awaited: see _single
        return fn(self._single(requests, context), peer)

    def _guard(self, context: grpc.ServicerContext, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except SecflError as exc:
            log.warning("refused a request: %s", exc)
            context.abort(_status(exc), str(exc))
            raise

    def _streamed(
        self,
        down: Callable[[R, Peer], Iterable[bytes]],
        request: Callable[[], R],
        context: grpc.ServicerContext,
    ) -> Iterator[bytes]:
        peer = self._peer(context)  # before the request is awaited: see _single
        try:
            yield from down(request(), peer)
        except SecflError as exc:
            log.warning("refused a request: %s", exc)
            context.abort(_status(exc), str(exc))

    @staticmethod
    def _single(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """The one message of a call made as unary. Every method is served as a stream
        of requests, so that its handler (which identifies the caller and counts the
        call against its share) runs as the call arrives: gRPC holds a thread for a
        unary method's call until its message comes, before any handler runs, and a
        peer that opened such calls without sending took threads without limit."""
        first = next(requests, None)
        if first is None or next(requests, None) is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: not one message")
        return first

    def start(self, address: str = "127.0.0.1:0") -> int:
        """Listen on ``address`` (port 0: any); return the port."""
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        unary = dict(self._unary)
        if not self.insecure:
            unary[WHO] = self._who
        # every method takes a stream of requests (see _single); the caller is checked first
        for name, fn in unary.items():
            handlers[name] = grpc.stream_unary_rpc_method_handler(
                lambda it, ctx, fn=fn: self._guard(ctx, lambda: self._answer(fn, it, ctx))
            )
        for name, up in self._upload.items():
            handlers[name] = grpc.stream_unary_rpc_method_handler(
                lambda it, ctx, up=up: self._guard(ctx, lambda: up(it, self._peer(ctx)))
            )
        for name, down in self._download.items():
            handlers[name] = grpc.stream_stream_rpc_method_handler(
                lambda it, ctx, down=down: self._streamed(down, lambda: self._single(it, ctx), ctx)
            )
        for name, ex in self._exchange.items():
            handlers[name] = grpc.stream_stream_rpc_method_handler(
                lambda it, ctx, ex=ex: self._streamed(ex, lambda: it, ctx)
            )
            handlers[name + WHOLE] = grpc.stream_stream_rpc_method_handler(
                lambda it, ctx, ex=ex: self._streamed(
                    ex, lambda: iter((self._single(it, ctx),)), ctx
                )
            )
        generic = grpc.method_handlers_generic_handler(SERVICE, handlers)
        self._server.add_generic_rpc_handlers((generic,))
        if self._creds is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, self._creds)
        self._server.start()
        return self.port

    def stop(self, grace: float | None = 1.0) -> None:
        self._server.stop(grace).wait()


def _status(exc: SecflError) -> grpc.StatusCode:
    """A refused request's status: UNAVAILABLE (which collaborators try again) for a
    revocation list gone stale while the call was under way, as for one that began then."""
    if isinstance(exc, StaleRevocations):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INVALID_ARGUMENT


def _serial(creds: Credentials) -> bytes:
    """The serial of ``creds``' certificate, lowercase hex, as :data:`WHO` answers it."""
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    return format(cert.serial_number, "x").encode()
