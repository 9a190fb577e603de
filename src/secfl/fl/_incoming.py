"""An update folded into the round's sum while it streams in, from one reused buffer.

Receiving a whole update and then folding it costs a fresh buffer per update (a
growing one, at that) and serialises the wire and the arithmetic. With an
accumulator that can take an update piece by piece and give it back exactly
(:class:`~secfl.fl.strategies.FedAvgAccumulator`), :meth:`Receiver.receive` instead:

1. copies the stream into :class:`Receiver`'s buffer, one per aggregator sized
   from the policy's model (mapped once per round, reused by every update of the
   round; pages a smaller update never touches are never resident);
2. reads the message header as soon as it is in, and lets the caller check it (the
   round, the attempt, the sender's place in it, the sample count) before any value
   is folded;
3. reads the safetensors header and requires exactly the global model's tensors
   (names, dtypes, shapes) tiling exactly the global model's byte size, so the
   stream's end is known in advance;
4. folds every complete stretch of values as it arrives (each stretch checked —
   NaN, Inf, the exact sum's range — before it is added), overlapping the
   arithmetic with the wire;
5. on any failure (a bad value, a stream that ends short or runs long, a broken
   connection) takes every folded stretch out again from the same bytes, exactly:
   the round's sum is as if the update never came.

The buffer stays the aggregator's; nothing of it outlives the call but the
accepted update's sender, sample count and metrics. At the round's end the buffer is
handed over (:meth:`Receiver.hand_over`): the round's new model is written into its
pages, already resident and holding only the last update, now folded, rather than
into as many pages mapped beside it; the next round maps a fresh buffer. So the
aggregator's peak is the sum and one update, whether it is receiving or finishing.
"""

from __future__ import annotations

import logging
import mmap
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import numpy as np

from secfl.errors import FlError, TransportError
from secfl.fl import _messages as msg
from secfl.fl._tensors import MAX_HEADER_BYTES, Layout, check_like, parse_header_json
from secfl.fl.strategies._base import Params
from secfl.fl.strategies._fedavg import FedAvgAccumulator, Incoming

__all__ = ["ALIGN", "FOLD_BYTES", "Receiver"]

log = logging.getLogger("secfl.fl._aggregator")

#: Fold once this many new bytes of values are in (amortises the per-call overhead).
FOLD_BYTES = 4 << 20
#: The values start at a multiple of this in the buffer (which is this much larger).
ALIGN = 64


class Receiver:
    """One receive buffer of ``capacity`` bytes, reused by every update until it is
    handed over (:meth:`hand_over`), and the right to use it: one stream at a time.

    Each piece is written and folded under the receiver's lock; waiting for the next
    piece is not. So :meth:`cancel` (the round closing) can take the stream's folded
    part out of the sum between two pieces, without waiting for a sender that went
    quiet, and the buffer is free for the next stream at once; the cancelled stream
    refuses its next piece without touching the buffer.
    """

    def __init__(self, capacity: int) -> None:
        if type(capacity) is not int or capacity < 16:
            raise FlError(f"tensors: invalid update buffer size {capacity!r}")
        self.capacity = capacity + ALIGN
        self._memory: mmap.mmap | None = None
        self._lock = threading.Condition()
        self._owner: _Stream | None = None
        #: Folds one stream's pieces in order while its next pieces arrive.
        self._worker = futures.ThreadPoolExecutor(1, thread_name_prefix="secfl-fold")

    def _take(self) -> memoryview:
        if self._memory is None:
            # anonymous memory: pages are mapped as they are first written, so a buffer
            # sized for the largest allowed update costs only what updates fill
            # (``bytearray(n)`` would write zeros over all of it at once)
            self._memory = mmap.mmap(-1, self.capacity, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return memoryview(self._memory)

    def receive(
        self,
        pieces: Iterator[bytes],
        acc: FedAvgAccumulator,
        global_params: Params,
        sender: str,
        check: Check,
        wait: float,
        done: Callable[[dict[str, Any]], None],
        *,
        alive: Callable[[], None] = lambda: None,
        stall: float = 10.0,
    ) -> dict[str, Any]:
        """Stream ``sender``'s update message into the buffer and ``acc``; returns its
        header.

        ``check(header)`` vets the message header (it raises to refuse) and returns
        the sample count: it runs on the header alone, before the buffer is taken, so
        a caller that owes no update never holds it, and again once the stream has the
        buffer. ``done(header)`` records the update once it is wholly folded, before a
        :meth:`cancel` can run. Waiting for the buffer lasts at most ``wait`` seconds;
        a stream holding it that has sent nothing for ``stall`` seconds loses it (and
        its folded part). ``alive()`` is called while this stream waits and as it
        comes in (the sender is busy, not silent). On any failure the folded part is
        taken out again and the error raised (:class:`FlError`, or
        :class:`TransportError` for the stream itself)."""
        pieces = iter(pieces)
        head = _message_header(pieces)
        check(msg.decode(head, "update")[0])
        give_up = time.monotonic() + max(0.0, wait)
        with self._lock:
            while self._owner is not None:
                owner = self._owner
                if time.monotonic() - owner.last_piece > stall:
                    log.warning("the update of '%s' stalled: taken out", owner.sender)
                    self._owner = None
                    owner.abort()
                    break
                left = give_up - time.monotonic()
                if left <= 0:
                    raise FlError(
                        f"protocol: no room for the update of '{sender}' before the deadline"
                    )
                self._lock.wait(min(left, 0.5))
                alive()
            stream = self._owner = _Stream(
                self._take(), acc, global_params, sender, check, self._worker
            )
        beat = time.monotonic()
        try:
            with self._lock:
                self._mine(stream)
                stream.add(head)
            for piece in pieces:
                with self._lock:
                    self._mine(stream)
                    stream.add(piece)
                if time.monotonic() - beat >= 1.0:
                    alive()
                    beat = time.monotonic()
            with self._lock:
                self._mine(stream)
                stream.end()
                done(stream.header)
                self._owner = None
                self._lock.notify_all()
        except BaseException:
            with self._lock:
                if self._owner is stream:
                    stream.abort()
                    self._owner = None
                    self._lock.notify_all()
            raise
        return stream.header

    def _mine(self, stream: _Stream) -> None:
        if self._owner is not stream:
            raise FlError(
                f"protocol: the round closed while the update of '{stream.sender}' came in"
            )

    def cancel(self) -> None:
        """Take the stream in progress (if any) out of its sum and free the buffer."""
        with self._lock:
            self._cancel()

    def _cancel(self) -> None:
        if self._owner is not None:
            stream, self._owner = self._owner, None
            stream.abort()
            self._lock.notify_all()

    def hand_over(self, size: int) -> memoryview | None:
        """The buffer's first ``size`` bytes, given away for good (for the round's new
        model), or ``None`` if no update has used it yet or it is smaller.

        A stream still holding the buffer is cancelled first (as by :meth:`cancel`: its
        folded part is taken out, and it never writes again); a stream that comes later
        is given a new buffer, so nothing it writes reaches what was handed over. The
        bytes hold the last update until the caller overwrites them all."""
        with self._lock:
            self._cancel()
            memory = self._memory
            if memory is None or size > len(memory):
                return None
            self._memory = None
        return memoryview(memory)[:size]


Check = Callable[[dict[str, Any]], int]


def _message_header(pieces: Iterator[bytes]) -> bytes:
    """The framed message header (its length prefix included) from the stream's first
    pieces, read before the buffer is taken: at most ``4 + MAX_HEADER`` bytes are
    kept (plus the rest of the piece that completes it, one chunk at most)."""
    head = bytearray()
    for piece in pieces:
        head += piece
        if len(head) >= 4:
            (hlen,) = struct.unpack_from(">I", head, 0)
            if hlen > msg.MAX_HEADER:
                raise FlError(f"message: header length {hlen} is out of range")
            if len(head) >= 4 + hlen:
                return bytes(head)
        if len(head) > 4 + msg.MAX_HEADER:  # cannot happen: fail closed
            break
    raise TransportError(f"message: the stream ended after {len(head)} bytes")


class _Stream:
    def __init__(
        self,
        view: memoryview,
        acc: FedAvgAccumulator,
        global_params: Params,
        sender: str,
        check: Check,
        worker: futures.ThreadPoolExecutor,
    ) -> None:
        self.view = view
        self.acc = acc
        self.global_params = global_params
        self.sender = sender
        self.check = check
        self.size = 0
        self.base = 0  # where the message starts in the buffer
        self.header: dict[str, Any] = {}
        self.incoming: Incoming | None = None
        self.data_start = -1  # where the tensor values begin in the buffer
        self.expected = -1  # the whole message's size, once the headers are read
        self.order: list[tuple[str, np.dtype[Any], int, int]] = []  # (name, dtype, begin, end)
        self.next_tensor = 0
        self.folded = 0  # bytes of values handed to the fold worker (from the data start)
        self.elements = 0
        self.worker = worker
        self.last_piece = time.monotonic()
        self.jobs: list[futures.Future[None]] = []

    # --- bytes in ------------------------------------------------------------------------

    def add(self, piece: bytes) -> None:
        self.last_piece = time.monotonic()
        chunk = memoryview(piece).cast("B")
        end = self.size + len(chunk)
        limit = self.expected if self.expected >= 0 else len(self.view) - ALIGN
        if end > limit:
            raise TransportError(f"message: tensors: the stream passes its limit of {limit} bytes")
        self.view[self.base + self.size : self.base + end] = chunk
        self.size = end
        if self.incoming is None:
            self._headers()
        if self.incoming is not None and self.size - self.data_start - self.folded >= FOLD_BYTES:
            self._fold()

    def _settled(self, wait: bool) -> None:
        """Raise the first failure of a fold job (waiting for all of them with ``wait``)."""
        pending = []
        for job in self.jobs:
            if wait or job.done():
                job.result()  # raises the job's error
            else:
                pending.append(job)
        self.jobs = pending

    def end(self) -> None:
        if self.incoming is None:
            self._headers()
            if self.incoming is None:
                raise TransportError(f"message: the stream ended after {self.size} bytes")
        if self.size != self.expected:
            raise TransportError(
                f"message: the stream ended after {self.size} of {self.expected} bytes"
            )
        self._fold()
        self._settled(wait=True)
        self.incoming.done(self.elements)

    def abort(self) -> None:
        for job in self.jobs:  # nothing may still be adding when the pieces are taken out
            futures.wait([job])
        self.jobs = []
        if self.incoming is not None:
            self.incoming.abort(self._values)

    # --- headers -------------------------------------------------------------------------

    def _headers(self) -> None:
        """Parse both headers once they are in; until then, do nothing."""
        if self.size < 4:
            return
        (hlen,) = struct.unpack_from(">I", self.view, 0)
        if hlen > msg.MAX_HEADER:
            raise FlError(f"message: header length {hlen} is out of range")
        at = 4 + hlen
        if self.size < at + 8:
            return
        (tlen,) = struct.unpack_from("<Q", self.view, at)
        if tlen > MAX_HEADER_BYTES:
            raise FlError(f"tensors: malformed: header length {tlen} does not fit")
        start = at + 8 + tlen
        if self.size < start:
            return
        header, _ = msg.decode(self.view[:at], "update")
        samples = self.check(header)
        layout, _ = parse_header_json(self.view[at + 8 : start], None)
        self._match(layout)
        data_len = sum(int(ref.nbytes) for ref in self.global_params.values())
        if start + data_len > len(self.view) - ALIGN:
            raise FlError(
                f"tensors: {start + data_len} bytes exceed the limit of {len(self.view) - ALIGN}"
            )
        self.header, self.data_start, self.expected = header, start, start + data_len
        # move what is in so that the values start aligned (numpy reads them fastest)
        shift = -start % ALIGN
        if shift:
            self.view[shift : shift + self.size] = bytes(self.view[: self.size])
            self.base = shift
        self.incoming = self.acc.incoming(self.sender, samples)

    def _match(self, layout: Layout) -> None:
        """The update's tensors must be exactly the global model's (names, shapes,
        dtypes: checked on stand-ins that hold no memory, with the usual messages)."""
        shapes = {
            name: np.broadcast_to(np.zeros((), dtype=dtype), shape)
            for name, (dtype, shape, _, _) in layout.items()
        }
        check_like(
            shapes, self.global_params, what=f"aggregate: the update from '{self.sender}'",
            finite=False,
        )  # fmt: skip
        self.order = sorted(
            ((name, dtype, begin, end) for name, (dtype, _, begin, end) in layout.items()),
            key=lambda item: item[2],
        )

    # --- values --------------------------------------------------------------------------

    def _values(self, name: str, begin: int, count: int) -> np.ndarray:
        """``count`` values of tensor ``name`` from element ``begin``, in the buffer."""
        for tname, dtype, start, _ in self.order:
            if tname == name:
                offset = self.base + self.data_start + start + begin * dtype.itemsize
                return np.frombuffer(self.view, dtype=dtype, count=count, offset=offset)
        raise FlError(f"aggregate: no tensor '{name}'")  # cannot happen: fail closed

    def _fold(self) -> None:
        """Hand every complete value that has arrived and is not folded yet to the
        fold worker: the arithmetic overlaps receiving the next pieces."""
        assert self.incoming is not None
        self._settled(wait=False)
        work: list[tuple[str, int, np.ndarray]] = []
        have = self.size - self.data_start
        while self.next_tensor < len(self.order):
            name, dtype, begin, end = self.order[self.next_tensor]
            if self.folded < begin:  # cannot happen: the layout tiles the data
                raise FlError("tensors: malformed: a gap between tensors")
            upto = min(have, end)
            first = (self.folded - begin) // dtype.itemsize
            last = (upto - begin) // dtype.itemsize
            if last > first:
                work.append((name, first, self._values(name, first, last - first)))
                self.elements += last - first
                self.folded = begin + last * dtype.itemsize
            if self.folded < end:
                break
            self.next_tensor += 1
        if work:
            incoming = self.incoming
            self.jobs.append(self.worker.submit(_fold_all, incoming, work))


def _fold_all(incoming: Incoming, work: list[tuple[str, int, np.ndarray]]) -> None:
    for name, first, values in work:
        incoming.fold(name, first, values)
