"""One update coming in through :class:`~secfl.fl._incoming.Receiver`'s window: its
headers, its stretches (spilled, sealed, then folded by the fold worker), and their
exact take-back from the spill file (see :mod:`secfl.fl._incoming`).

An update whose values fit in the window but one slot (:func:`fits`) is not spilled:
no slot is written twice while it comes in, so its take-back reads the stretches
where they still are, in the window. For a small model that is most of the cost of
receiving an update (a file opened, a key made, a write: 0.25 of 0.34 ms of CPU for
the digits model), and its values never reach the disk."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import numpy as np

from secfl.errors import FlError, TransportError
from secfl.fl import _messages as msg
from secfl.fl._spill import Spill, SpillFile
from secfl.fl._tensors import (
    MAX_HEADER_BYTES,
    Layout,
    check_like,
    header_allowance,
    parse_header_json,
)
from secfl.fl.strategies._base import Params
from secfl.fl.strategies._fedavg import FedAvgAccumulator, Incoming

__all__ = ["FOLD_BYTES", "SLOTS", "Check", "Stream"]

#: A stretch: fold (and spill) once this many bytes of values are in.
FOLD_BYTES = 4 << 20
#: Stretches in the window: one filling while the others are spilled and folded.
SLOTS = 3

#: Vets a message header (raises to refuse); returns the update's sample count.
Check = Callable[[dict[str, Any]], int]


def fits(values: int, stretch: int) -> bool:
    """Whether ``values`` bytes come in without a slot of the window written twice.
    With ``SLOTS - 1`` stretches' worth, the first ``SLOTS - 1`` slots are filled and
    folded (less than one element each carried over) and the rest never fills the
    last one, so the stream never wraps around to the first slot."""
    return values <= (SLOTS - 1) * stretch


class Stream:
    """One update coming in: its headers, its place in the window, its spill file."""

    def __init__(
        self,
        window: memoryview,
        stretch: int,
        capacity: int,
        spill_file: SpillFile,
        worker: futures.ThreadPoolExecutor,
        acc: FedAvgAccumulator,
        global_params: Params,
        sender: str,
        check: Check,
    ) -> None:
        self.window = window  # SLOTS slots of ``stretch`` bytes
        self.stretch = stretch
        self.capacity = capacity
        self.spill_file = spill_file
        self.worker = worker
        self.acc = acc
        self.global_params = global_params
        self.max_header = header_allowance(global_params)
        self.sender = sender
        self.check = check
        self.lost = ""  # why it lost the receive window to another sender, if it did
        self.size = 0  # bytes of the message received
        self.prefix = bytearray()  # the message until both headers are in
        self.header: dict[str, Any] = {}
        self.incoming: Incoming | None = None
        self.spill: Spill | None = None
        #: Where each stretch lies in the window when it is not spilled: (start, slot
        #: offset, length), by its first byte of values.
        self.kept: list[tuple[int, int, int]] = []
        self.data_start = -1  # where the tensor values begin in the message
        self.expected = -1  # the whole message's size, once the headers are read
        self.order: list[tuple[str, np.dtype[Any], int, int]] = []  # (name, dtype, begin, end)
        self.places: dict[str, tuple[np.dtype[Any], int]] = {}
        self.next_tensor = 0
        self.folded = 0  # bytes of values handed to the worker (from the data start)
        self.elements = 0
        self.slot = 0  # the slot being filled; it holds values from ``folded`` on
        self.fill = 0
        self.busy: list[futures.Future[None] | None] = [None] * SLOTS
        self.stop = threading.Event()  # a stretch failed: the later ones do nothing
        self.last_piece = time.monotonic()

    # --- bytes in ------------------------------------------------------------------------

    def add(self, piece: bytes) -> None:
        self.last_piece = time.monotonic()
        try:
            self._add(piece)
        finally:  # waiting for the worker (a slow disk) is ours, not the sender's silence
            self.last_piece = time.monotonic()

    def _add(self, piece: bytes) -> None:
        chunk = memoryview(piece).cast("B")
        end = self.size + len(chunk)
        limit = self.expected if self.expected >= 0 else self.capacity
        if end > limit:
            raise TransportError(f"message: tensors: the stream passes its limit of {limit} bytes")
        self.size = end
        if self.incoming is not None:
            self._feed(chunk)
            return
        self.prefix += chunk
        self._headers()
        if self.incoming is not None:
            if self.size > self.expected:  # the piece completing the headers ran past
                raise TransportError(
                    f"message: tensors: the stream passes its limit of {self.expected} bytes"
                )
            values = bytes(memoryview(self.prefix)[self.data_start :])
            self.prefix = bytearray()
            self._feed(memoryview(values))

    def _feed(self, data: memoryview) -> None:
        """Copy values into the window, handing each full slot to the worker."""
        while len(data):
            base = self.slot * self.stretch
            take = min(self.stretch - self.fill, len(data))
            self.window[base + self.fill : base + self.fill + take] = data[:take]
            self.fill += take
            data = data[take:]
            if self.fill == self.stretch:
                self._submit()

    def _settled(self, wait: bool) -> None:
        """Raise the first failure of a stretch (waiting for all of them with ``wait``)."""
        for at, job in enumerate(self.busy):
            if job is not None and (wait or job.done()):
                self.busy[at] = None
                job.result()  # raises the job's error

    def finish(self) -> None:
        """The stream ended: every stretch folded (still uncounted: :meth:`commit`
        counts it, :meth:`abort` takes it out)."""
        if self.incoming is None:
            raise TransportError(f"message: the stream ended after {self.size} bytes")
        if self.size != self.expected:
            raise TransportError(
                f"message: the stream ended after {self.size} of {self.expected} bytes"
            )
        self._submit()
        self._settled(wait=True)

    def commit(self) -> None:
        """Count the finished update as its sender's in the sum; close the spill file."""
        assert self.incoming is not None  # (finish() saw to it)
        self.incoming.done(self.elements)
        self._close()

    def abort(self) -> None:
        """Take the folded stretches out again (from the spill file), close it."""
        self.stop.set()
        futures.wait([job for job in self.busy if job is not None])
        self.busy = [None] * SLOTS  # nothing may still be adding when they are taken out
        try:
            if self.incoming is not None:
                self.incoming.abort(self._values)
        finally:
            self._close()

    def _close(self) -> None:
        if self.spill is not None:
            self.spill.close()

    # --- headers -------------------------------------------------------------------------

    def _headers(self) -> None:
        """Parse both headers once they are in; until then, do nothing."""
        if self.size < 4:
            return
        (hlen,) = struct.unpack_from(">I", self.prefix, 0)
        if hlen > msg.MAX_HEADER:
            raise FlError(f"message: header length {hlen} is out of range")
        at = 4 + hlen
        if self.size < at + 8:
            return
        (tlen,) = struct.unpack_from("<Q", self.prefix, at)
        if tlen > MAX_HEADER_BYTES:
            raise FlError(f"tensors: malformed: header length {tlen} does not fit")
        if tlen > self.max_header:  # refused before its bytes are waited for or parsed
            raise FlError(
                f"tensors: the header's {tlen} bytes exceed the {self.max_header} that the "
                "model's tensors need"
            )
        start = at + 8 + tlen
        if self.size < start:
            return
        header, _ = msg.decode(bytes(self.prefix[:at]), "update")
        samples = self.check(header)
        layout, _ = parse_header_json(bytes(self.prefix[at + 8 : start]), None)
        self._match(layout)
        data_len = sum(int(ref.nbytes) for ref in self.global_params.values())
        if start + data_len > self.capacity:
            raise FlError(f"tensors: {start + data_len} bytes exceed the limit of {self.capacity}")
        self.header, self.data_start, self.expected = header, start, start + data_len
        spill = (
            None
            if fits(data_len, self.stretch)
            else Spill(None, data_len, self.sender, file=self.spill_file)
        )
        try:
            self.incoming = self.acc.incoming(self.sender, samples)
        except BaseException:
            if spill is not None:
                spill.close()
            raise
        self.spill = spill

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
        self.places = {name: (dtype, begin) for name, dtype, begin, _ in self.order}

    # --- values --------------------------------------------------------------------------

    def _values(self, name: str, begin: int, count: int) -> np.ndarray:
        """``count`` values of tensor ``name`` from element ``begin``, read back from
        the spill file (authenticated: an altered file raises), or from the window."""
        dtype, start = self.places[name]
        offset = start + begin * dtype.itemsize
        first, plain = self._stretch(offset)
        if offset - first + count * dtype.itemsize > len(plain):  # cannot happen: fail closed
            raise FlError(f"aggregate: the spilled values of tensor '{name}' are cut short")
        return np.frombuffer(plain, dtype=dtype, count=count, offset=offset - first)

    def _stretch(self, offset: int) -> tuple[int, bytes | memoryview]:
        """The folded stretch holding value byte ``offset``: its first byte, its bytes."""
        if self.spill is not None:
            return self.spill.read(offset)
        for start, at, length in self.kept:
            if start <= offset < start + length:
                return start, self.window[at : at + length]
        raise FlError(f"aggregate: no folded stretch holds byte {offset}")  # cannot happen

    def _submit(self) -> None:
        """Hand the slot's complete values (from ``folded`` on) to the worker, then move
        to the next slot, carrying a split element's bytes over."""
        assert self.incoming is not None
        self._settled(wait=False)
        base = self.slot * self.stretch
        slot = self.window[base : base + self.fill]
        start = self.folded
        have = start + self.fill
        work: list[tuple[str, int, np.ndarray]] = []
        while self.next_tensor < len(self.order):
            name, dtype, begin, end = self.order[self.next_tensor]
            if self.folded < begin:  # cannot happen: the layout tiles the data
                raise FlError("tensors: malformed: a gap between tensors")
            upto = min(have, end)
            first = (self.folded - begin) // dtype.itemsize
            last = (upto - begin) // dtype.itemsize
            if last > first:
                offset = begin + first * dtype.itemsize - start
                work.append((name, first, np.frombuffer(slot, dtype, last - first, offset)))
                self.elements += last - first
                self.folded = begin + last * dtype.itemsize
            if self.folded < end:
                break
            self.next_tensor += 1
        used = self.folded - start
        if used:
            if self.spill is None:
                self.kept.append((start, base, used))
            args = (self.stop, self.spill, self.incoming, start, slot[:used], work)
            if self.expected - self.data_start <= self.stretch:
                # the whole update is this one stretch: nothing to overlap, so no hand-over
                # to the worker (two thread switches, more than the fold of a small model)
                done: futures.Future[None] = futures.Future()
                try:
                    _spill_and_fold(*args)
                except BaseException as exc:
                    done.set_exception(exc)
                else:
                    done.set_result(None)
                self.busy[self.slot] = done
            else:
                self.busy[self.slot] = self.worker.submit(_spill_and_fold, *args)
        # the next slot, once its last stretch is spilled and folded
        nxt = (self.slot + 1) % SLOTS
        job, self.busy[nxt] = self.busy[nxt], None
        if job is not None:
            job.result()
        carry = self.fill - used  # less than one element
        self.window[nxt * self.stretch : nxt * self.stretch + carry] = slot[used:]
        self.slot, self.fill = nxt, carry


def _spill_and_fold(
    stop: threading.Event,
    spill: Spill | None,
    incoming: Incoming,
    start: int,
    data: memoryview,
    work: list[tuple[str, int, np.ndarray]],
) -> None:
    """Spill a stretch, then fold it: whatever is folded can be read back. After a
    failure, the stream's later stretches do nothing."""
    if stop.is_set():
        return
    try:
        if spill is not None:
            spill.write(start, data)
        for name, first, values in work:
            incoming.fold(name, first, values)
    except BaseException:
        stop.set()
        raise
