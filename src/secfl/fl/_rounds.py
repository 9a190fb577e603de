"""The aggregator's side of the wire: who has joined, who is alive, and one round
attempt at a time — which collaborators were sampled, the model they get, the
updates that came back.

Collaborators call in (they may sit behind firewalls; the aggregator never dials
out): ``Join`` once, then ``Next`` to ask for work (a long poll answered with
``train``, ``wait`` or ``done``), ``Submit`` to stream an update, and ``Beat``
while they train so that a collaborator that vanished mid-round is noticed long
before the round's deadline. A collaborator sends its update with ``SubmitNext``:
``Submit`` and ``Next`` on one call, answered with the update's verdict and then,
on the same call, its next instruction the moment the next attempt opens (a push on
a call already made, and one call a round instead of two). Every
handler runs on a transport thread; the round loop (:mod:`secfl.fl._aggregator`)
waits on :class:`Rounds`' condition. How an update is taken in (vetted, received,
folded or refused) is :mod:`secfl.fl._submit`'s.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from secfl.errors import FlError, StaleRevocations
from secfl.fl import _messages as msg
from secfl.fl._attempt import Attempt, Participant
from secfl.fl._chunks import DEFAULT_CHUNK_SIZE, chunks
from secfl.fl._config import FederationConfig
from secfl.fl._envelope import SignedModel
from secfl.fl._incoming import Receiver
from secfl.fl._submit import Submissions, without_tensors
from secfl.fl._transport import Peer, Server
from secfl.fl._turn import Turn

__all__ = ["BEAT", "POLL_SECONDS", "Attempt", "Participant", "Rounds", "without_tensors"]

log = logging.getLogger("secfl.fl._aggregator")

BEAT = "Beat"
#: How long one ``Next`` call waits for work before answering ``wait``.
POLL_SECONDS = 5.0


class Rounds(Submissions):
    """Thread-safe state shared by the transport handlers and the round loop."""

    def __init__(
        self,
        config: FederationConfig,
        *,
        max_update_bytes: int,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config
        self.max_update_bytes = max_update_bytes
        lock = threading.RLock()
        #: The round loop's: notified when it may have something to do (the attempt
        #: settled, someone joined or heard "done"). Its lock guards all of this state.
        self.cond = threading.Condition(lock)
        #: The ``Next`` handlers', on the same lock: notified only when an attempt opens
        #: or training ends. A wake-up is a thread taking the GIL and, on a busy machine,
        #: a core handed over: an update that arrives wakes no handler that waits for
        #: the next round, and no round loop while other updates are still owed.
        self._work = threading.Condition(lock)
        self.participants: dict[str, Participant] = {}
        self.attempt: Attempt | None = None
        self.finished = False
        self._fold = threading.Lock()
        self._receiving = {}
        self.peers = None  # the server's, once registered
        #: Names this aggregator process: an attempt is (epoch, round, number), so a
        #: restarted aggregator's round 5 attempt 1 is not mistaken for the last one's.
        self.epoch = os.urandom(8).hex()
        #: Arrival order, whole updates: one received and folded at a time.
        self._turn = Turn() if config.aggregation_order == "arrival" else None
        self.told_done: set[str] = set()
        #: Where streamed updates come in (one stream at a time; each one's take-back
        #: copy is spilled, sealed, to an unlinked file in ``spill_dir``).
        self.receiver = Receiver(max_update_bytes + msg.MAX_HEADER + 4, spill_dir=spill_dir)

    def register(self, server: Server) -> None:
        self.peers = server.peers
        server.unary(msg.JOIN, self.join)
        server.unary(BEAT, self.beat)
        server.download(msg.NEXT, self.next)
        server.upload(msg.SUBMIT, self.submit)
        server.exchange(msg.SUBMIT_NEXT, self.submit_next)

    # --- handlers (transport threads) -------------------------------------------------------

    def join(self, request: bytes, peer: Peer) -> bytes:
        header, _ = msg.decode(request, "join")
        samples = header.get("samples")
        if samples is not None:
            samples = msg.sample_count(header, self.config.max_samples)
        with self.cond:
            rejoin = peer.service in self.participants
            self.participants[peer.service] = Participant(
                peer.service, peer.serial, samples, time.monotonic()
            )
            self.cond.notify_all()
        log.info("%s '%s' (certificate %s)", "rejoined:" if rejoin else "joined:",
                 peer.service, peer.serial or "-")  # fmt: skip
        return msg.encode(
            {
                "kind": "welcome",
                "participant": peer.service,
                "rounds": self.config.rounds,
                "heartbeat": self.config.heartbeat,
            }
        )

    def beat(self, request: bytes, peer: Peer) -> bytes:
        with self.cond:
            self._seen(peer)
        return msg.encode({"kind": "ok"})

    def next(self, request: bytes, peer: Peer) -> Iterable[bytes]:
        header, _ = msg.decode(request, "next")
        return self._next(header.get("done", []), peer)

    def submit_next(self, pieces: Iterator[bytes], peer: Peer) -> Iterator[bytes]:
        """``Submit``, then ``Next`` having done this attempt: the verdict on the
        update, then the next instruction (a refused update ends the call with the
        refusal, as ``Submit`` does)."""
        reply = self.submit(pieces, peer)
        yield reply
        verdict, _ = msg.decode(reply, "accepted")  # a refusal raised: it ends the call
        done = [self.epoch, verdict.get("round"), verdict.get("attempt")]
        yield from self._next(done, peer)

    def _next(self, done: object, peer: Peer) -> Iterable[bytes]:
        deadline = time.monotonic() + POLL_SECONDS
        with self.cond:
            while True:
                self._seen(peer)
                if self.finished:
                    self.told_done.add(peer.service)
                    self.cond.notify_all()  # finish() waits for every "done" heard
                    return [msg.encode({"kind": msg.DONE})]
                a = self.attempt
                if (
                    a is not None
                    and a.open
                    and peer.service in a.sampled
                    and not a.settled(peer.service)
                    and done != [self.epoch, a.round, a.number]
                ):
                    # a poll outlasts the check of its call: the model goes to no site
                    # revoked meanwhile (found by a hostile review); it owes no update.
                    # A list gone stale meanwhile refuses nothing: "wait", and the next
                    # poll is UNAVAILABLE until the list is read again
                    try:
                        self._standing(peer)
                    except StaleRevocations:
                        return [msg.encode({"kind": msg.WAIT})]
                    except FlError as exc:
                        self._refused(a, peer, str(exc))
                        raise
                    a.fetched.add(peer.service)
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return [msg.encode({"kind": msg.WAIT})]
                self._work.wait(min(left, self.config.heartbeat))
        head = {
            "kind": msg.TRAIN,
            "round": a.round,
            "attempt": a.number,
            "epoch": self.epoch,
            "config": a.configs[peer.service],
            "deadline_s": max(0.0, a.deadline - time.monotonic()),
        }
        return _model_stream(head, a.model, lambda: a.mark_sent(peer.service))

    # --- the round loop's side --------------------------------------------------------------

    def alive(self) -> list[str]:
        """Names of participants heard from within ``dead_after`` (caller holds no lock)."""
        with self.cond:
            return self._alive()

    def _alive(self) -> list[str]:
        limit = time.monotonic() - self.config.dead_after
        return sorted(p.name for p in self.participants.values() if p.last_seen >= limit)

    def wait_available(self, count: int, timeout: float) -> list[str]:
        """Wait until ``count`` participants are alive; FlError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(alive := self._alive()) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FlError(
                        f"round: only {len(alive)} of the {count} collaborators needed "
                        f"are connected after {timeout:.0f} s"
                    )
                self.cond.wait(min(left, 1.0))
            return alive

    def open(self, attempt: Attempt) -> None:
        with self.cond:
            attempt.opened = time.monotonic()
            self.attempt = attempt
            self._work.notify_all()

    def wait_closed(self, stop: Callable[[], bool] = lambda: False) -> Attempt:
        """Wait until every sampled participant has settled (an update, a refusal, or
        silence past ``dead_after``) or the deadline passes; then close the attempt."""
        with self.cond:
            a = self.attempt
            assert a is not None
            while True:
                now = time.monotonic()
                limit = now - self.config.dead_after
                for name in a.sampled:
                    who = self.participants.get(name)
                    if not a.settled(name) and (who is None or who.last_seen < limit):
                        a.dropped.add(name)
                        log.warning("round %d: '%s' went silent: dropped", a.round, name)
                if all(a.settled(n) for n in a.sampled) or now >= a.deadline or stop():
                    break
                self.cond.wait(min(a.deadline - now, 0.5))
            a.open = False
            self.cond.notify_all()
        self.end_calls(a)  # a whole update still coming in: its call ends
        self.receiver.cancel()  # a streamed update still coming in is taken out again
        if self._turn is not None:  # a whole one still coming in is refused at its next piece
            self._turn.close("came in after its round closed")
        self.receiver.idle()  # until the next round, its spill file holds no pages
        with self._fold:  # an update being folded right now finishes first
            return a

    def finish(self, timeout: float = 10.0) -> None:
        """Tell every collaborator training is over; wait (up to ``timeout``) until each
        one still alive has heard it, so none is left calling a stopped server."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.finished = True
            self._work.notify_all()
            while not set(self._alive()) <= self.told_done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        self.receiver.close()  # no update comes any more: its spill file goes


def _model_stream(
    head: dict[str, Any], model: SignedModel, sent: Callable[[], object]
) -> Iterator[bytes]:
    """The ``train`` reply; a model that fits one chunk goes as one message (each
    message of a stream is a hop between gRPC's threads on both sides)."""
    first = msg.header_bytes(head) + model.prefix()
    if len(first) + len(model.payload) <= DEFAULT_CHUNK_SIZE:
        yield first + bytes(model.payload)
    else:
        yield first
        yield from chunks(model.payload)
    sent()
