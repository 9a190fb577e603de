"""How the aggregator takes an update in: the ``Submit`` handler of
:class:`~secfl.fl._rounds.Rounds`, in one of three ways by the strategy and the
aggregation order.

- A sum the order cannot change (FedAvg, FedProx, FedAdam): folded while it streams in,
  one stream at a time (:mod:`secfl.fl._incoming`), in either order.
- A rule that needs whole updates (the robust rules) in arrival order: received whole
  in its turn (:mod:`secfl.fl._turn`), one at a time, and folded.
- Such a rule in canonical order: received whole and kept for the round loop.

Every path vets the header against the open attempt (a sender that was sampled and
still owes an update); the streamed and in-turn paths before the update takes the
stream or the turn, and again once it has. A refused update (malformed, wrong shapes
or dtypes, NaN/Inf, oversized, for another round, from a collaborator not sampled, a
sample count that is not an integer from 1 to the policy's ``max_samples``, metrics
that are not finite numbers) is answered with the reason and leaves the round
unharmed; the sender counts as done without an update.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from secfl._internal.values import quoted
from secfl.errors import FlError, StaleRevocations, TransportError
from secfl.fl import _messages as msg
from secfl.fl._attempt import Attempt, Participant
from secfl.fl._config import FederationConfig
from secfl.fl._incoming import Receiver, message_header
from secfl.fl._tensors import from_bytes, header_allowance
from secfl.fl._transport import Peer, PeerPolicy, join
from secfl.fl._turn import Turn
from secfl.fl.strategies._base import Update, check_update
from secfl.fl.strategies._fedavg import FedAvgAccumulator

__all__ = ["Submissions", "without_tensors"]

log = logging.getLogger("secfl.fl._aggregator")


class Submissions:
    """The ``Submit`` paths of :class:`~secfl.fl._rounds.Rounds`, its base class: the
    state they work on is the round's, set up by ``Rounds.__init__``."""

    config: FederationConfig
    max_update_bytes: int
    #: Guards all of the round's state; notified when an attempt may have settled.
    cond: threading.Condition
    participants: dict[str, Participant]
    attempt: Attempt | None
    epoch: str
    receiver: Receiver
    #: Who may call (the server's): read again as an update is taken in (None: nobody's).
    peers: PeerPolicy | None
    _turn: Turn | None
    _fold: threading.Lock
    #: The call reading each sender's whole update: its attempt, a token, its cancel.
    _receiving: dict[str, tuple[Attempt, object, Callable[[], None] | None]]

    def _seen(self, peer: Peer) -> Participant:
        now = time.monotonic()
        who = self.participants.get(peer.service)
        if who is None:
            raise FlError(f"protocol: '{peer.service}' has not joined")
        who.last_seen, who.serial = now, peer.serial
        return who

    def submit(self, pieces: Iterator[bytes], peer: Peer) -> bytes:
        # In arrival order one update at a time is received and folded: the others wait
        # (gRPC flow control holds their senders), so memory stays at one update.
        marks: list[float] = []
        with self.cond:
            a = self.attempt
        if a is None:  # between attempts: no update is owed (and none is read)
            raise FlError("protocol: no open round")
        if isinstance(a.accumulator, FedAvgAccumulator):
            # folded while it streams in; the receiver takes one update at a time
            reply = self._submit_streamed(_marked(pieces, marks), peer, a, a.accumulator)
        elif self._turn is not None:
            reply = self._submit_in_turn(_marked(pieces, marks), peer, a, self._turn)
        else:  # kept whole for the round loop; read only once its header is vetted
            pieces = _marked(pieces, marks)
            head = self._vetted_head(pieces, peer, a)
            with self._one_call(peer, a):
                opened = self._open(pieces, a, peer)
                reply = self._submit(itertools.chain((head,), opened), peer, a)
        with self.cond:
            a = self.attempt
            if a is not None and len(marks) == 2:
                a.arrivals[peer.service] = (marks[0], marks[1], time.monotonic())
        return reply

    def _vet(self, header: dict[str, Any], peer: Peer, a: Attempt | None) -> None:
        """The update is for the open attempt ``a`` and its sender owes one (caller
        holds ``cond``)."""
        key = [header.get("round"), header.get("attempt")]
        if (
            a is None
            or a is not self.attempt
            or not a.open
            or [header.get("epoch"), *key] != [self.epoch, a.round, a.number]
        ):
            raise FlError(f"protocol: no open round {quoted(key[0])} attempt {quoted(key[1])}")
        if peer.service not in a.sampled:
            raise FlError(f"protocol: '{peer.service}' was not sampled for round {a.round}")
        if a.settled(peer.service):
            raise FlError(f"protocol: '{peer.service}' has no pending update in this round")

    def _standing(self, peer: Peer) -> None:
        """``peer`` not revoked as its update is taken in: revocation is checked when a
        call begins, and an update may stream in for the whole round (found by a hostile
        review: a site revoked meanwhile had its update aggregated). A list gone stale
        meanwhile (the SPM unreachable) raises StaleRevocations, which refuses nothing:
        the call is answered UNAVAILABLE, as one that begins then is, and the sender
        sends its update again once the list is read (a review of that review: a slow
        SPM at a round's end refused, for the round, every update still coming in)."""
        if self.peers is not None:
            try:
                self.peers.recheck(peer)
            except StaleRevocations:
                raise
            except TransportError as exc:
                raise FlError(str(exc)) from None

    def _refused(self, a: Attempt | None, peer: Peer, reason: str) -> None:
        with self.cond:
            if a and a.open and peer.service in a.sampled and not a.settled(peer.service):
                a.refused[peer.service] = reason
                self._settled(a)

    def _submit_streamed(
        self, pieces: Iterator[bytes], peer: Peer, a: Attempt, acc: FedAvgAccumulator
    ) -> bytes:
        """An update folded while it streams in (:mod:`secfl.fl._incoming`)."""
        got: dict[str, Any] = {}

        def check(header: dict[str, Any]) -> int:
            with self.cond:
                self._seen(peer)
                try:
                    self._vet(header, peer, a)
                except FlError:
                    got["misdirected"] = True  # for another attempt: this one unharmed
                    raise
            got["samples"] = self._samples(header, peer.service, a)
            got["metrics"] = msg.metric_values(header)
            return int(got["samples"])

        def done(header: dict[str, Any], commit: Callable[[], None]) -> None:
            update = Update(peer.service, {"_": np.zeros(0)}, got["samples"], got["metrics"])
            with self.cond:
                # vetted again before it counts: a sender dropped as silent (or refused)
                # while its stream came in, or a round that moved on, takes none (the
                # raise takes the folded stream back out); its update was in the model
                # while the round listed it as dropped (a review, and its review)
                self._vet(header, peer, a)
                self._standing(peer)
                commit()
                a.updates[peer.service] = update
                self._settled(a)

        def alive() -> None:  # queued or uploading: busy, not silent
            with self.cond:
                self._seen(peer)

        wait = a.deadline - time.monotonic()
        try:
            self.receiver.receive(
                pieces, acc, a.global_params, peer.service, check, wait, done,
                alive=alive, stall=self.config.dead_after,
                lost=lambda why: self._lose(a, peer.service, why),
            )  # fmt: skip
        except (FlError, TransportError) as exc:
            if not got.get("misdirected") and not isinstance(exc, StaleRevocations):
                self._refused(a, peer, str(exc))
            log.warning("round %d: refused the update of '%s': %s", a.round, peer.service, exc)
            raise
        return msg.encode({"kind": "accepted", "round": a.round, "attempt": a.number})

    def _submit_in_turn(self, pieces: Iterator[bytes], peer: Peer, a: Attempt, turn: Turn) -> bytes:
        """A whole update received in its turn (:mod:`secfl.fl._turn`): its header read
        and vetted first, so that a caller that owes none never holds the turn."""
        pieces = iter(pieces)
        head = self._vetted_head(pieces, peer, a)
        header = msg.decode(head, "update")[0]

        def alive() -> None:  # waiting for its turn: busy, not silent
            with self.cond:
                self._seen(peer)

        def vet() -> None:  # the attempt may have moved on while it waited
            with self.cond:
                self._vet(header, peer, a)

        def lost(why: str) -> None:  # refused; a stalled call is ended (it holds its pieces)
            self._lose(a, peer.service, why)
            if "stalled" in why and peer.cancel is not None:
                peer.cancel()

        try:
            taking = turn.take(
                peer.service, a.deadline, self.config.dead_after, alive=alive, vet=vet,
                lost=lost,
            )  # fmt: skip
            with taking as mine, self._one_call(peer, a):
                return self._submit(itertools.chain((head,), mine.pieces(pieces)), peer, a)
        except FlError as exc:
            self._refused(a, peer, str(exc))
            raise

    def _vetted_head(self, pieces: Iterator[bytes], peer: Peer, a: Attempt) -> bytes:
        """The update message's header, read from ``pieces`` alone and vetted: a caller
        that has not joined, was not sampled or owes no update is refused before any of
        its payload is read (else four calls of a stranger held four updates' worth of
        memory each until their headers were read)."""
        try:
            head = message_header(pieces)
            header = msg.decode(head, "update")[0]
        except (FlError, TransportError) as exc:
            self._refused(a, peer, str(exc))
            raise
        with self.cond:
            self._seen(peer)
            self._vet(header, peer, a)
        return head

    @contextlib.contextmanager
    def _one_call(self, peer: Peer, a: Attempt) -> Iterator[None]:
        """``peer``'s only call reading a whole update (each holds up to one in memory:
        four calls of one sampled sender held four), for the open attempt ``a``. Another
        call for ``a`` is refused; an earlier one for a closed attempt is ended (else
        :meth:`end_calls` ends it when the next attempt closes), so a sender whose
        connection broke is not locked out either."""
        token = object()
        with self.cond:
            if a is not self.attempt or not a.open:
                raise FlError(f"protocol: no open round {a.round} attempt {a.number}")
            earlier = self._receiving.get(peer.service)
            if earlier is not None and earlier[0] is a:
                raise FlError(f"protocol: '{peer.service}' is already sending its update")
            self._receiving[peer.service] = (a, token, peer.cancel)
        if earlier is not None and earlier[2] is not None:
            log.warning(
                "round %d: '%s' sends an update for attempt %d: its call for attempt %d, "
                "still open, was ended", a.round, peer.service, a.number, earlier[0].number,
            )  # fmt: skip
            earlier[2]()  # gRPC's cancel: its handler, waiting for a piece, wakes and ends
        try:
            yield
        finally:
            with self.cond:
                if self._receiving.get(peer.service, (None, None))[1] is token:
                    del self._receiving[peer.service]

    def end_calls(self, a: Attempt) -> None:
        """``a`` just closed: end the calls still reading a whole update for an attempt
        before it. Such a call stalled through a whole attempt, and would hold what it
        read for as long as its sender kept the connection (gRPC's cancel wakes its
        handler; the sender sees CANCELLED). A call of ``a`` itself ends at its next
        piece, with the reason, or when the next attempt closes."""
        with self.cond:
            ends = [end for (of, _, end) in self._receiving.values() if of is not a and not of.open]
        for end in ends:
            if end is not None:
                end()

    def _open(self, pieces: Iterator[bytes], a: Attempt, peer: Peer) -> Iterator[bytes]:
        """``pieces`` while ``a`` is open: an update still arriving when its attempt
        closed is dropped at its next piece, not buffered on into the next attempt. Its
        sender is seen as pieces arrive (once a second): a site uploading for longer
        than ``dead_after`` is busy, not silent (found by a hostile review: it was
        dropped mid-upload, every attempt, in canonical order)."""
        seen = time.monotonic()
        for piece in pieces:
            now = time.monotonic()
            with self.cond:
                if not a.open:
                    raise FlError(
                        f"protocol: round {a.round} attempt {a.number} closed while the update "
                        "was arriving"
                    )
                if now - seen >= 1.0:
                    self._seen(peer)
                    seen = now
            yield piece

    def _submit(self, pieces: Iterator[bytes], peer: Peer, a: Attempt) -> bytes:
        """A whole update, for ``a`` (the attempt open when it began: an update that
        began in another attempt is refused, never added to this one's sum)."""
        try:
            whole = join(pieces, self.max_update_bytes + msg.MAX_HEADER + 4)
            header, payload = msg.decode(whole, "update")
        except (FlError, TransportError) as exc:  # oversized or unreadable: refused too
            self._refused(a, peer, str(exc))
            raise
        with self.cond:
            self._seen(peer)
            self._vet(header, peer, a)
        try:
            update = self._update(header, payload, peer.service, a)
            check_update(update, a.global_params)
            # vetted again, then counted, while the round loop cannot close the attempt's
            # books (it takes ``_fold`` once the attempt is closed): a check that outlasted
            # the attempt counts nowhere, not in the model without being listed (a review)
            with self._fold:
                with self.cond:
                    self._vet(header, peer, a)
                    self._standing(peer)
                if a.accumulator is not None:
                    a.accumulator.add(update)
                with self.cond:
                    kept = update if a.accumulator is None else without_tensors(update)
                    a.updates[peer.service] = kept
                    self._settled(a)
        except FlError as exc:
            self._refused(a, peer, str(exc))
            log.warning("round %d: refused the update of '%s': %s", a.round, peer.service, exc)
            raise
        return msg.encode({"kind": "accepted", "round": a.round, "attempt": a.number})

    def _lose(self, a: Attempt, name: str, why: str) -> None:
        """``name``'s update lost its turn (:mod:`secfl.fl._turn`): refused for ``a``, so
        that another call of the same sender does not get the turn again."""
        with self.cond:
            if a.open and name in a.sampled and not a.settled(name):
                a.refused[name] = f"protocol: {why}"
                self._settled(a)

    def _settled(self, a: Attempt) -> None:
        """One more of ``a``'s participants settled (caller holds ``cond``): the round
        loop wakes when the last one has (it looks for the silent ones on its own)."""
        if all(a.settled(n) for n in a.sampled):
            self.cond.notify_all()

    def _samples(self, header: dict[str, Any], name: str, a: Attempt) -> int:
        """The update's sample count: from 1 to the policy's ``max_samples``, and no
        more than its sender reported when it joined (``a.caps``)."""
        samples = msg.sample_count(header, self.config.max_samples)
        cap = a.caps.get(name)
        if cap is not None and samples > cap:
            raise FlError(
                f"samples: '{name}' reports {samples} samples, more than the {cap} it "
                "reported when it joined (a larger count would take other updates' share "
                "of the round's weight)"
            )
        return samples

    def _update(self, header: dict[str, Any], payload: memoryview, name: str, a: Attempt) -> Update:
        samples = self._samples(header, name, a)
        metrics = msg.metric_values(header)
        params, _ = from_bytes(
            payload,
            max_bytes=self.max_update_bytes,
            max_header=header_allowance(a.global_params),
            copy=False,
        )
        return Update(sender=name, params=params, num_samples=samples, metrics=metrics)


def _marked(pieces: Iterator[bytes], marks: list[float]) -> Iterator[bytes]:
    """``pieces``, noting when the first one and the end of the stream came."""
    for piece in pieces:
        if not marks:
            marks.append(time.monotonic())
        yield piece
    marks.append(time.monotonic())


def without_tensors(update: Update) -> Update:
    """The update without its tensors (already folded): keeps memory to one model."""
    return Update(update.sender, {"_": np.zeros(0)}, update.num_samples, update.metrics)
