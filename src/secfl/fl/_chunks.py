"""Chunked streaming of a buffer (a model or an update), with a hard size limit.

:func:`chunks` cuts a buffer into pieces for a streaming transport and
:class:`Reassembler` puts it back together, refusing more than a limit (or than the
sender announced), so no message-size ceiling applies and no peer can make the
receiver allocate without bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from secfl.errors import FlError

__all__ = ["DEFAULT_CHUNK_SIZE", "Reassembler", "chunks"]

#: Default size of one streamed chunk (1 MiB: well under gRPC's 4 MiB default limit).
DEFAULT_CHUNK_SIZE = 1 << 20


def chunks(data: bytes | bytearray | memoryview, size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """``data`` in consecutive pieces of ``size`` bytes (the last may be shorter; an
    empty buffer gives one empty piece, so a stream always has a first message).

    Each piece is a new ``bytes`` (gRPC sends only ``bytes``), except that ``bytes``
    which fit in one piece are yielded as they are, without a copy."""
    if type(size) is not int or size <= 0:
        raise FlError(f"tensors: chunk size must be a positive integer, not {size!r}")
    if type(data) is bytes and len(data) <= size:
        yield data
        return
    view = memoryview(data).cast("B")
    if len(view) == 0:
        yield b""
        return
    for begin in range(0, len(view), size):
        yield bytes(view[begin : begin + size])


class Reassembler:
    """Collects streamed chunks into one buffer, refusing more than ``max_bytes``.

    With ``expected_size`` (announced by the sender in its first message) the buffer
    is allocated once and a stream that ends short or runs long is refused; without
    it the buffer grows. :meth:`finish` returns the buffer (a ``bytearray``; no
    extra copy) and may be called once.
    """

    def __init__(self, max_bytes: int, expected_size: int | None = None) -> None:
        if type(max_bytes) is not int or max_bytes < 0:
            raise FlError(f"tensors: max_bytes must be a non-negative integer, not {max_bytes!r}")
        if expected_size is not None:
            if type(expected_size) is not int or expected_size < 0:
                raise FlError(f"tensors: invalid announced size {expected_size!r}")
            if expected_size > max_bytes:
                raise FlError(
                    f"tensors: the announced {expected_size} bytes exceed the limit of {max_bytes}"
                )
        self.max_bytes = max_bytes
        self.expected_size = expected_size
        self._buffer = bytearray(expected_size or 0)
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        """Bytes received so far."""
        return self._size

    def add(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append one chunk; :class:`FlError` once the limit would be passed."""
        if self._done:
            raise FlError("tensors: a chunk arrived after the end of the stream")
        piece = memoryview(chunk).cast("B")
        new_size = self._size + len(piece)
        limit = self.max_bytes if self.expected_size is None else self.expected_size
        if new_size > limit:
            which = "announced size" if self.expected_size is not None else "limit"
            raise FlError(f"tensors: the stream passes its {which} of {limit} bytes")
        if self.expected_size is None:
            self._buffer += piece
        else:
            self._buffer[self._size : new_size] = piece
        self._size = new_size

    def extend(self, pieces: Iterable[bytes | bytearray | memoryview]) -> None:
        for piece in pieces:
            self.add(piece)

    def finish(self) -> bytearray:
        """The whole buffer; :class:`FlError` if fewer bytes came than announced."""
        if self._done:
            raise FlError("tensors: the stream was already finished")
        if self.expected_size is not None and self._size != self.expected_size:
            raise FlError(
                f"tensors: the stream ended after {self._size} of {self.expected_size} bytes"
            )
        self._done = True
        buffer, self._buffer = self._buffer, bytearray()
        return buffer
