"""An update folded into the round's sum while it streams in, through a small window.

Receiving a whole update and then folding it costs a fresh buffer per update (a
growing one, at that) and serialises the wire and the arithmetic. With an
accumulator that can take an update piece by piece and give it back exactly
(:class:`~secfl.fl.strategies.FedAvgAccumulator`), :meth:`Receiver.receive` instead:

1. reads the message header as soon as it is in, and lets the caller check it (the
   round, the attempt, the sender's place in it, the sample count) before any value
   is folded;
2. reads the safetensors header and requires exactly the global model's tensors
   (names, dtypes, shapes) tiling exactly the global model's byte size, so the
   stream's end is known in advance;
3. copies the values into a small window of :data:`SLOTS` stretches of
   :data:`FOLD_BYTES` (one per aggregator, reused by every update); each full
   stretch (its complete elements; a split element's bytes carry over to the next)
   goes to the fold worker, which first **spills** it, sealed, to an unlinked file
   (:class:`~secfl.fl._spill.Spill`: AES-256-GCM under a key of this stream's own,
   kept in memory only), then folds it (each piece checked — NaN, Inf, the exact
   sum's range — before it is added). The arithmetic and the encryption overlap
   the wire; a slot is reused only once its stretch is spilled and folded. An update
   of one stretch is folded where it comes in (nothing to overlap), and one that fits
   in the window is not spilled (:mod:`secfl.fl._stream`);
4. on any failure (a bad value, a stream that ends short or runs long, a broken
   connection, the round closing, a stall, a spill that cannot be written) takes
   every folded stretch out again, exactly, from the spilled bytes (read back and
   authenticated; a stretch is spilled before it is folded, so whatever was folded
   can be read back): the round's sum is as if the update never came. A spill file
   altered on disk fails authentication, and the sum is then unusable (fail closed).

Nothing of a stream outlives the call but the accepted update's sender, sample count
and metrics; its spill file (the receiver's, kept open for the next stream: see
:class:`~secfl.fl._spill.SpillFile`) holds its ciphertext under a key that is gone
when it ends, either way, and the receiver's :meth:`~Receiver.close` closes it. One
stream's bytes, stretches and take-back are :class:`~secfl.fl._stream.Stream`'s.

Memory: the window (:data:`SLOTS` x :data:`FOLD_BYTES`, 12 MiB), one stretch's
ciphertext and the headers, not an update: with the int64 sum (two float32 models)
that is the aggregator's peak while updates come in, beside gRPC's chunks. The new
model is written into fresh memory while each tensor's sum is given back page by page
(:meth:`~secfl.fl.strategies._exact.ExactSum.mean_into`), so finishing needs the sum
and a few blocks. On disk: at most one update's values, as ciphertext, in a file with
no name (page cache, not the process's memory, until written back).
"""

from __future__ import annotations

import collections
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

from secfl.errors import FlError, TransportError
from secfl.fl import _messages as msg
from secfl.fl._spill import SpillFile
from secfl.fl._stream import FOLD_BYTES, SLOTS, Check, Stream
from secfl.fl._turn import overstayed
from secfl.fl.strategies._base import Params
from secfl.fl.strategies._fedavg import FedAvgAccumulator

__all__ = ["FOLD_BYTES", "SLOTS", "Receiver", "message_header"]

log = logging.getLogger("secfl.fl._aggregator")


class Receiver:
    """The right to fold one stream at a time into a round's sum, and the small
    window (:data:`SLOTS` stretches of ``stretch`` bytes) every stream comes through.

    ``capacity``: the largest update message accepted; ``spill_dir``: where each
    stream's spill file is made (unlinked at once; on disk, not tmpfs: the
    aggregator's checkpoint folder, else the system's temporary folder).

    Each piece is written and folded under the receiver's lock; waiting for the next
    piece is not. So :meth:`cancel` (the round closing) can take the stream's folded
    part out of the sum between two pieces, without waiting for a sender that went
    quiet, and the window is free for the next stream at once; the cancelled stream
    refuses its next piece without touching the window.
    """

    def __init__(
        self,
        capacity: int,
        *,
        spill_dir: str | os.PathLike[str] | None = None,
        stretch: int = FOLD_BYTES,
    ) -> None:
        if type(capacity) is not int or capacity < 16:
            raise FlError(f"tensors: invalid update buffer size {capacity!r}")
        if type(stretch) is not int or stretch < 64:
            raise FlError(f"tensors: invalid stretch size {stretch!r}")
        self.capacity = capacity
        self.spill_dir = spill_dir
        self._spill_file = SpillFile(spill_dir)  # every stream's, in turn
        self.stretch = stretch
        self._window: mmap.mmap | None = None
        self._lock = threading.Condition()
        self._owner: Stream | None = None
        self._since = 0.0  # when the owner took the window
        self._left = 0.0  # the seconds to its deadline then
        self._owner_lost: Callable[[str], None] = lambda why: None  # refuses its update
        self._waiting: collections.Counter[str] = collections.Counter()  # senders waiting
        #: Spills and folds one stream's stretches in order while the next ones arrive.
        self._worker = futures.ThreadPoolExecutor(1, thread_name_prefix="secfl-fold")

    def _take(self) -> memoryview:
        if self._window is None:
            # anonymous memory, mapped as it is first written
            size = SLOTS * self.stretch
            self._window = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return memoryview(self._window)

    def receive(
        self,
        pieces: Iterator[bytes],
        acc: FedAvgAccumulator,
        global_params: Params,
        sender: str,
        check: Check,
        wait: float,
        done: Callable[[dict[str, Any], Callable[[], None]], None],
        *,
        alive: Callable[[], None] = lambda: None,
        stall: float = 10.0,
        lost: Callable[[str], None] = lambda why: None,
    ) -> dict[str, Any]:
        """Stream ``sender``'s update message through the window into ``acc``; returns
        its header.

        ``check(header)`` vets the message header (it raises to refuse) and returns
        the sample count: it runs on the header alone, before the window is taken, so
        a caller that owes no update never holds it, and again once the stream has the
        window. ``done(header, commit)`` is called once it is wholly folded, before a
        :meth:`cancel` can run: it vets the update again and calls ``commit()``, which
        counts it in the sum, then records it; if it raises before ``commit()``, the
        stream is taken out again (a sender dropped while its update came in).
        Waiting for the window lasts at most ``wait`` seconds; a stream holding it that
        has sent nothing for ``stall`` seconds loses it (and its folded part), and so
        does one that has held it past its share of the time while another waits
        (:func:`secfl.fl._turn.overstayed`: a sender that trickles its update in keeps
        no one from sending theirs), and its ``lost(why)`` is called. A waiter's
        ``check`` runs again while it waits: one that owes no update any more neither
        waits on nor counts against the owner's share.
        ``alive()`` is called while this stream waits and as it comes in (the sender is
        busy, not silent). On any failure the folded part is
        taken out again and the error raised (:class:`FlError`, or
        :class:`TransportError` for the stream itself)."""
        pieces = iter(pieces)
        head = message_header(pieces)
        header = msg.decode(head, "update")[0]
        check(header)
        give_up = time.monotonic() + max(0.0, wait)
        with self._lock:
            self._waiting[sender] += 1
            try:
                while self._owner is not None:
                    check(header)
                    owner, now = self._owner, time.monotonic()
                    over = overstayed(now, owner.last_piece, stall, self._since, self._left,
                                      len(self._waiting))  # fmt: skip
                    if over:
                        log.warning("the update of '%s' %s: taken out", owner.sender, over)
                        owner.lost = over
                        self._owner = None
                        owner.abort()
                        self._owner_lost(f"the update {over} and lost its turn")
                        break
                    left = give_up - time.monotonic()
                    if left <= 0:
                        raise FlError(
                            f"protocol: no room for the update of '{sender}' before the deadline"
                        )
                    self._lock.wait(min(left, 0.5))
                    alive()
            finally:
                self._waiting[sender] -= 1
                if self._waiting[sender] <= 0:
                    del self._waiting[sender]
            stream = self._owner = Stream(
                self._take(), self.stretch, self.capacity, self._spill_file, self._worker,
                acc, global_params, sender, check,
            )  # fmt: skip
            self._since = time.monotonic()
            self._left = give_up - self._since
            self._owner_lost = lost
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
                stream.finish()
                done(stream.header, stream.commit)
                self._owner = None
                self._lock.notify_all()
        except BaseException:
            with self._lock:
                if self._owner is stream:
                    self._owner = None
                    self._lock.notify_all()
                    stream.abort()  # may raise (the sum is then unusable): the window is free
            raise
        return stream.header

    def _mine(self, stream: Stream) -> None:
        if self._owner is not stream and stream.lost:
            raise FlError(
                f"protocol: the update of '{stream.sender}' {stream.lost} and lost its turn"
            )
        if self._owner is not stream:
            raise FlError(
                f"protocol: the round closed while the update of '{stream.sender}' came in"
            )

    def cancel(self) -> None:
        """Take the stream in progress (if any) out of its sum and free the window."""
        with self._lock:
            self._cancel()

    def idle(self) -> None:
        """No stream is expected for a while (the round closed): the spill file's pages
        go back, unless a stream holds the window."""
        with self._lock:
            if self._owner is None:
                self._spill_file.empty()

    def close(self) -> None:
        """Take out the stream in progress (if any) and close the spill file."""
        with self._lock:
            try:
                self._cancel()
            finally:
                self._spill_file.close()

    def _cancel(self) -> None:
        if self._owner is not None:
            stream, self._owner = self._owner, None
            self._lock.notify_all()
            stream.abort()


def message_header(pieces: Iterator[bytes]) -> bytes:
    """The framed message header (its length prefix included) from the stream's first
    pieces, read before the window is taken: at most ``4 + MAX_HEADER`` bytes are
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
