"""One whole update received at a time, and no sender keeps the others waiting by
going quiet or by trickling its update in.

In ``arrival`` order a rule that needs whole updates (a median, Krum) folds each one
as it comes, and receiving one at a time keeps the aggregator's memory at one
update: the other senders wait (gRPC's flow control holds them). The waiting must
not be anyone's to prolong:

- a sender takes its turn only once its header is read and vetted (the caller's
  business: one that owes no update never holds it, however long it stays silent
  before its header), and is vetted again when it gets the turn;
- a sender that waits is kept alive (it is busy, not silent) and gives up at the
  round's deadline;
- the holder loses the turn to a waiting sender when it has sent nothing for
  ``stall`` seconds, or has held it past its share of the time: the time that was
  left when it took the turn, over itself and the senders waiting now
  (:func:`overstayed`). A sender that trickles its update in, never quite stalling,
  keeps the others out for half the time left at most when one waits, and honest
  uploads that take less than that go through in the order they came. The loser's
  next piece is refused, and its update for the round with it (``lost``).

The streamed receiver (:mod:`secfl.fl._incoming`) keeps its window by the same rules.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from secfl.errors import FlError

__all__ = ["Turn", "TurnHolder", "overstayed"]

log = logging.getLogger("secfl.fl._aggregator")


def overstayed(
    now: float, last_piece: float, stall: float, since: float, left: float, waiting: int
) -> str:
    """Why a holder must give way to one of the ``waiting`` senders (at least one), or
    "" if it need not: it sent its last piece at ``last_piece`` and took the turn at
    ``since``, when ``left`` seconds were left until the deadline."""
    if now - last_piece > stall:
        return "stalled"
    share = max(0.0, left) / (1 + max(1, waiting))
    if now - since > share:
        return f"held the window past its share of the time ({share:.1f} s)"
    return ""


class TurnHolder:
    """The sender whose update is being received."""

    def __init__(
        self,
        turn: Turn,
        sender: str,
        left: float,
        alive: Callable[[], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self.sender = sender
        self.since = self.last_piece = time.monotonic()
        self.left = left  # seconds to the deadline when it took the turn
        self.receiving = True
        self.lost = ""  # why it lost the turn
        self.on_lost = on_lost  # refuses its update, in its own attempt
        self._turn = turn
        self._alive = alive
        self._beat = self.since

    def pieces(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """``pieces`` while this sender holds the turn; the time of each is noted, and
        ``alive()`` called about once a second (the sender is busy, not silent)."""
        for piece in pieces:
            self._note(last=False)
            yield piece
        self._note(last=True)

    def _note(self, *, last: bool) -> None:
        with self._turn.cond:
            if self.lost:
                raise FlError(
                    f"protocol: the update of '{self.sender}' {self.lost} and lost its turn"
                )
            self.last_piece = now = time.monotonic()
            if last:
                self.receiving = False  # all in: folding it is not stalling
        if now - self._beat >= 1.0:
            self._alive()
            self._beat = now


class Turn:
    """The right to send a whole update, one sender at a time."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._holder: TurnHolder | None = None
        self._waiting: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def take(
        self,
        sender: str,
        deadline: float,
        stall: float,
        *,
        alive: Callable[[], None],
        vet: Callable[[], None],
        lost: Callable[[str], None],
    ) -> Iterator[TurnHolder]:
        """Wait for the turn (until ``deadline``, a ``time.monotonic()`` value, calling
        ``alive()`` about twice a second) and hold it for the ``with`` block. ``vet()``
        raises if the sender owes no update any more: it runs while it waits (a sender
        refused meanwhile neither waits on nor counts against the holder's share) and
        once it has the turn. A holder still receiving loses it to a waiting sender by
        :func:`overstayed`, and its ``lost(why)`` is called."""
        with self.cond:
            self._waiting[sender] += 1
            try:
                while self._holder is not None:
                    vet()
                    holder, now = self._holder, time.monotonic()
                    over = holder.receiving and overstayed(
                        now, holder.last_piece, stall, holder.since, holder.left,
                        len(self._waiting),
                    )  # fmt: skip
                    if over:
                        log.warning("the update of '%s' %s: its turn goes to '%s'",
                                    holder.sender, over, sender)  # fmt: skip
                        self._lose(holder, over)
                        break
                    if now >= deadline:
                        raise FlError(
                            f"protocol: no room for the update of '{sender}' before the deadline"
                        )
                    self.cond.wait(min(deadline - now, 0.5))
                    alive()
            finally:
                self._waiting[sender] -= 1
                if self._waiting[sender] <= 0:
                    del self._waiting[sender]
            left = deadline - time.monotonic()
            mine = self._holder = TurnHolder(self, sender, left, alive, lost)
        try:
            vet()
            yield mine
        finally:
            with self.cond:
                if self._holder is mine:
                    self._holder = None
                    self.cond.notify_all()

    def close(self, why: str) -> None:
        """The round closed: its holder, if any, loses the turn (its next piece is
        refused) and it goes to the next round's senders."""
        with self.cond:
            if self._holder is not None and self._holder.receiving:
                self._lose(self._holder, why)

    def _lose(self, holder: TurnHolder, why: str) -> None:
        holder.lost = why
        self._holder = None
        self.cond.notify_all()
        holder.on_lost(f"the update {why} and lost its turn")
