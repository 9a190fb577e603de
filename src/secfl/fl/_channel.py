"""The collaborator's end of the transport: a channel to the aggregator over mutual
TLS (see :mod:`secfl.fl._transport` for what the server checks)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc
import grpc.experimental

from secfl._internal.values import one_line
from secfl.errors import TransportError
from secfl.fl._chunks import chunks
from secfl.fl._wire import (
    CHUNK_SIZE,
    INSECURE_NAME,
    INSECURE_WARNING,
    MESSAGE_LIMIT,
    SERVICE,
    WHOLE,
    Credentials,
    join,
)

__all__ = ["CLIENT_OPTIONS", "RECONNECT_OPTIONS", "Client"]

log = logging.getLogger("secfl.fl._transport")

R = TypeVar("R")

#: How soon a channel tries to connect again after a failure. gRPC's own backoff
#: grows to two minutes, so a collaborator waiting for an aggregator that is not up
#: yet would join long after it came up; capped at 2 s, it joins within about that
#: (one attempt a second or two: no hammering).
RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
#: Streamed answers are read in the calling thread: without it gRPC's Python layer
#: starts a thread to drive a streaming call whenever none is running.
CLIENT_OPTIONS = ((grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),)


class Client:
    """A channel to the aggregator, authenticated both ways, checked for its service.

    ``creds=None`` is --insecure mode: plaintext, calling itself ``name``.
    """

    def __init__(
        self,
        target: str,
        creds: Credentials | None,
        *,
        server_name: str,
        timeout: float = 60.0,
        name: str = "",
    ) -> None:
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
            *RECONNECT_OPTIONS,
            *CLIENT_OPTIONS,
        ]
        self._metadata: tuple[tuple[str, str], ...] | None = None
        if creds is None:
            log.warning(INSECURE_WARNING)
            self._metadata = ((INSECURE_NAME, name),)
            self._channel = grpc.insecure_channel(target, options=options)
            return
        self._channel = grpc.secure_channel(
            target,
            grpc.ssl_channel_credentials(
                root_certificates=creds.ca_pem,
                private_key=creds.key_pem,
                certificate_chain=creds.cert_pem,
            ),
            options=[("grpc.ssl_target_name_override", server_name), *options],
        )

    def _call(self, fn: Callable[[], R]) -> R:
        try:
            return fn()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            # the other side's words, which end up in our log: kept on one line
            detail = one_line(str(detail))
            raise TransportError(f"rpc: {code.name if code else 'error'}: {detail}") from None

    def unary(self, name: str, request: bytes, *, timeout: float | None = None) -> bytes:
        method: grpc.UnaryUnaryMultiCallable[bytes, bytes]
        method = self._channel.unary_unary(f"/{SERVICE}/{name}")
        wait = timeout or self.timeout
        return self._call(lambda: method(request, timeout=wait, metadata=self._metadata))

    def upload(
        self,
        name: str,
        data: bytes | bytearray | memoryview | Iterable[bytes],
        *,
        timeout: float | None = None,
    ) -> bytes:
        """Stream ``data`` (bytes, or an iterable of pieces) to ``name``."""
        method: grpc.StreamUnaryMultiCallable[bytes, bytes]
        method = self._channel.stream_unary(f"/{SERVICE}/{name}")
        # gRPC calls next() on the stream: a list of pieces needs iter() too
        pieces = chunks(data) if isinstance(data, bytes | bytearray | memoryview) else iter(data)
        wait = timeout or self.timeout
        return self._call(lambda: method(pieces, timeout=wait, metadata=self._metadata))

    def download(
        self, name: str, request: bytes, limit: int, *, timeout: float | None = None
    ) -> bytearray:
        method: grpc.UnaryStreamMultiCallable[bytes, bytes]
        method = self._channel.unary_stream(f"/{SERVICE}/{name}")
        wait = timeout or self.timeout
        return self._call(
            lambda: join(method(request, timeout=wait, metadata=self._metadata), limit)
        )

    def exchange(
        self,
        name: str,
        data: bytes | bytearray | memoryview | Iterable[bytes],
        limit: int,
        *,
        timeout: float | None = None,
    ) -> tuple[bytes, bytearray | None]:
        """Stream ``data`` to ``name``; its answer (one message), then the payload it
        streams after it (at most ``limit`` bytes). The answer settles the call: a
        failure before it raises TransportError, a failure of the payload after it only
        makes the payload None (the caller asks for it again some other way).

        ``data`` that is one piece of at most ``CHUNK_SIZE`` goes as one message (the
        ``WHOLE`` variant of the method): a streamed request costs gRPC a thread of its
        own to send it, on every call."""
        wait = timeout or self.timeout
        whole = _one_piece(data)
        start: Callable[[], Iterator[bytes]]
        if whole is not None:
            unary: grpc.UnaryStreamMultiCallable[bytes, bytes]
            unary = self._channel.unary_stream(f"/{SERVICE}/{name}{WHOLE}")
            start = functools.partial(unary, whole, timeout=wait, metadata=self._metadata)
        else:
            method: grpc.StreamStreamMultiCallable[bytes, bytes]
            method = self._channel.stream_stream(f"/{SERVICE}/{name}")
            pieces = (
                chunks(data) if isinstance(data, bytes | bytearray | memoryview) else iter(data)
            )
            start = functools.partial(method, pieces, timeout=wait, metadata=self._metadata)

        def call() -> tuple[bytes, bytearray | None]:
            answers = start()
            first = next(answers, None)
            if first is None:
                raise TransportError(f"rpc: {name}: the call ended without an answer")
            try:
                rest = join(answers, limit)
            except (grpc.RpcError, TransportError) as exc:
                answers.cancel()  # a grpc.Call too
                log.debug("%s: the payload after the answer failed: %s", name, exc)
                return first, None
            return first, rest or None

        return self._call(call)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_piece(data: bytes | bytearray | memoryview | Iterable[bytes]) -> bytes | None:
    """``data`` as one message, if it is one piece that fits a chunk."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data) if len(data) <= CHUNK_SIZE else None
    if isinstance(data, list | tuple) and len(data) == 1 and len(data[0]) <= CHUNK_SIZE:
        return bytes(data[0])
    return None
