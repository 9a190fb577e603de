"""Local training: the collaborator's loop.

A collaborator calls the aggregator, never the other way round: it joins, asks
for work, and when sampled receives the signed global model, checks it
(:class:`ModelGate`: the aggregator's signature, this policy, and freshness — a
model older than the last one it accepted is a replay and stops the collaborator),
trains on its own data and streams its update back. While it trains it sends
heartbeats, so a collaborator that dies mid-round is noticed at once.

It waits for an aggregator that is not up yet and rides out an aggregator restart
(retrying about once a second or two for up to ``patience`` seconds, the policy's
``join_patience``, and joining again), renews its short-lived certificate by
attesting again (the ``renew`` hook), stops with one line saying to start it again
when the board approved a new policy version (a new run: the ``policy_changed``
hook), and never keeps anything but the current model in memory.

Short rounds are not spent on the round's own path: the collaborator keeps one
model and loads each global model into it (:mod:`secfl.fl._model_slot`), sends a
small update as one message, and sends it with ``SubmitNext``: the same call brings
back the next instruction, the moment the next round opens (one call a round).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from secfl._internal.values import quoted
from secfl.errors import FlError, SecflError, TransportError
from secfl.fl import _messages as msg
from secfl.fl._chunks import DEFAULT_CHUNK_SIZE
from secfl.fl._envelope import ModelEnvelope, PublicKey, open_model, read_unverified
from secfl.fl._model_slot import ModelSlot
from secfl.fl._pin import PIN
from secfl.fl._rounds import BEAT
from secfl.fl._tensors import DEFAULT_MAX_BYTES, from_bytes, state_dict_arrays, to_bytes
from secfl.fl._transport import Client
from secfl.tasks._base import Dataset, Task
from secfl.tasks._contract import call_task, check_metrics

__all__ = ["RETRY_SECONDS", "TRANSIENT", "Collaborator", "ModelGate"]

log = logging.getLogger("secfl.fl._collaborator")

R = TypeVar("R")

#: Transport failures worth waiting out (the aggregator restarting, a network blip).
TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "has not joined", "CANCELLED", PIN)
#: The longest pause between two attempts to reach the aggregator: a collaborator
#: joins within about this long of it coming up, without hammering it.
RETRY_SECONDS = 1.5


@dataclass
class ModelGate:
    """Accepts only global models signed by the aggregator's key, for this policy,
    each newer than the last (``verify_key=None``: --insecure, no checks but digest).

    ``floor`` is the lowest counter the first model may carry: the SPM's counter when
    the collaborator started. A collaborator that restarts has forgotten the last model
    it accepted; without the floor a hostile host could then feed it an older, validly
    signed model of the same policy."""

    verify_key: PublicKey | None
    policy_digest: str
    last: ModelEnvelope | None = None
    floor: int | None = None

    def accept(self, blob: bytes | memoryview) -> tuple[bytes, ModelEnvelope]:
        if self.verify_key is None:
            payload, envelope = read_unverified(blob)
        else:
            payload, envelope = open_model(
                blob,
                public_key=self.verify_key,
                policy_digest=self.policy_digest,
                last_round=None if self.last is None else self.last.round,
                last_counter=self._last_counter(),
                resend_of=self.last,
            )
        self.last = envelope
        return payload, envelope

    def _last_counter(self) -> int | None:
        if self.last is not None:
            return self.last.counter
        return None if self.floor is None else self.floor - 1


@dataclass
class Collaborator:
    """One site's local training; :meth:`run` returns when the federation is done."""

    task: Task
    data: Dataset
    connect: Callable[[], Client]
    gate: ModelGate
    #: Called before every call; True when the identity changed (reconnect).
    renew: Callable[[], bool] = lambda: False
    #: Called before every call; True when the channel must be made again (the
    #: aggregator's pinned certificate was revoked: :mod:`secfl.fl._pin`).
    stale: Callable[[], bool] = lambda: False
    #: Seconds to wait for an unreachable aggregator before giving up.
    patience: float = 3600.0
    #: True when the SPM's policy is no longer the one this collaborator attested to.
    policy_changed: Callable[[], bool] = lambda: False
    max_model_bytes: int = DEFAULT_MAX_BYTES
    trained: list[dict[str, Any]] = field(default_factory=list)

    def run(self) -> list[dict[str, Any]]:
        self._client: Client | None = None  # made by the first call (see _call)
        self._slot = ModelSlot(self.task)
        self._ahead: bytearray | None = None
        self._heartbeat = 2.0
        self._beating = _Heartbeat(self._beat, lambda: self._heartbeat)
        self._joined = False
        done: list[Any] = []
        try:
            self._join()
            while True:
                ask = msg.encode({"kind": "next", "done": done})
                ahead, self._ahead = self._ahead, None
                reply = ahead or self._next(ask)
                header, payload = msg.decode(reply)
                kind = header.get("kind")
                if kind == msg.DONE:
                    log.info("the federation is done after %d rounds here", len(self.trained))
                    return self.trained
                if kind != msg.TRAIN:
                    continue
                done = [
                    msg.field(header, "epoch", str),
                    msg.field(header, "round", int),
                    msg.field(header, "attempt", int),
                ]
                self._train_round(header, payload)
        finally:
            self._beating.close()
            self._drop()

    def _train_round(self, header: dict[str, Any], payload: memoryview) -> None:
        params_bytes, envelope = self._accept(payload)
        round = msg.field(header, "round", int)
        if envelope.round != round - 1:
            raise FlError(
                f"protocol: asked to train round {round} on the model of round {envelope.round}"
            )
        params, _ = from_bytes(params_bytes)
        model = self._slot.load(params)  # the model kept from the last round, reloaded
        config = dict(msg.field(header, "config", dict))
        if config.get("proximal_mu"):
            config["global_params"] = params
        with self._beating:
            result = call_task("train", self.task.train, model, self.data, config)
        update = to_bytes(state_dict_arrays(model))
        numbers = check_metrics(result, "train", required="loss")
        head = {
            "kind": "update",
            "round": round,
            "attempt": msg.field(header, "attempt", int),
            "epoch": msg.field(header, "epoch", str),
            "samples": len(self.data),
            "metrics": numbers,
        }
        # the next instruction comes back on the same call, as soon as the next round
        # opens (if it does not, within the aggregator's poll, the loop asks again)
        limit = self.max_model_bytes + msg.MAX_HEADER
        try:
            _, self._ahead = self._call(
                lambda c: c.exchange(msg.SUBMIT_NEXT, _pieces(head, update), limit, timeout=600)
            )
        except TransportError as exc:
            log.warning("round %d: the aggregator did not take the update: %s", round, exc)
            return
        self.trained.append({"round": round, **numbers})
        log.info("round %d: update sent (loss %.4f)", round, numbers.get("loss", float("nan")))

    def _accept(self, payload: memoryview) -> tuple[bytes, ModelEnvelope]:
        """The gate's verdict; a model of another policy version means the board
        approved a new one (a new run), which this collaborator cannot join."""
        try:
            return self.gate.accept(payload)
        except FlError as exc:
            if not str(exc).startswith("policy:"):
                raise
            try:
                changed = self.policy_changed()
            except SecflError:
                changed = False
            if changed:
                raise FlError(
                    "policy: the board approved a new version of the policy, a new run: "
                    "start this collaborator again with `secfl run` to join it"
                ) from None
            raise

    # --- calls ---------------------------------------------------------------------------

    def _next(self, ask: bytes) -> bytearray:
        """The aggregator's next instruction (a round to train, or done)."""
        limit = self.max_model_bytes + msg.MAX_HEADER
        return self._call(lambda c: c.download(msg.NEXT, ask, limit, timeout=60))

    def _join(self) -> None:
        welcome = self._call(
            lambda c: c.unary(msg.JOIN, msg.encode({"kind": "join", "samples": len(self.data)})),
            join=False,
        )
        header, _ = msg.decode(welcome, "welcome")
        beat = header.get("heartbeat", 2.0)
        if isinstance(beat, bool) or not isinstance(beat, int | float) or not 0 < beat <= 3600:
            raise FlError(
                "protocol: the aggregator's heartbeat is not a number of seconds in (0, 3600]"
            )
        self._heartbeat = float(beat)
        # a rejoin (the aggregator restarted) says so: the same line again would be held
        # back by the log's repeat filter, and the operator would not see it rejoin
        again = " again" if self._joined else ""
        self._joined = True
        log.info("joined%s as %s", again, quoted(header.get("participant")))

    def _call(self, fn: Callable[[Client], R], *, join: bool = True) -> R:
        """``fn`` with the current client, waiting out transient failures up to
        ``patience`` seconds (rejoining a restarted aggregator)."""
        give_up = time.monotonic() + self.patience
        delay = 0.2
        while True:
            try:
                # both hooks are asked each time (a renewal and a revoked pin together)
                if self.renew() | self.stale():
                    self._drop()
                if self._client is None:
                    self._client = self.connect()
                return fn(self._client)
            except TransportError as exc:
                text = str(exc)
                if not any(t in text for t in TRANSIENT):
                    raise
                # the aggregator may be back with another certificate (it restarted, or
                # renewed it): the next attempt makes the channel again, pinned anew
                self._drop()
                if time.monotonic() > give_up:
                    raise FlError(
                        f"collaborator: the aggregator was unreachable for {self.patience:.0f} s "
                        f"({text[:120]}); start it again once the aggregator is up (the "
                        "policy's federation.join_patience sets how long it waits)"
                    ) from None
                log.info("waiting for the aggregator (%s)", _reason(text))
            time.sleep(delay)
            delay = min(delay * 2, RETRY_SECONDS)
            if join:
                with contextlib.suppress(TransportError):
                    self._join()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _beat(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.unary(BEAT, msg.encode({"kind": "beat"}), timeout=5)
        except (TransportError, ValueError) as exc:  # ValueError: closed meanwhile
            log.debug("heartbeat failed: %s", exc)


class _Heartbeat:
    """``beat()`` every ``every()`` seconds while a round trains (``with``), from one
    thread for the collaborator's whole run: a thread started and joined every round
    cost a small round more than its beats.

    Entering and leaving a round wake nothing: waking the thread twice a round cost the
    training thread more than the beats (the woken thread takes the GIL, and on a busy
    machine a wake-up hands the core over). The thread instead wakes at its next deadline,
    the round's start plus the interval, or after one interval when no round trains, and
    finds the state then. A beat is never late for it: a round starts after the deadline
    the thread sleeps towards was set, so its own comes later (a shorter interval, which
    the aggregator may announce, wakes the thread).
    """

    def __init__(self, beat: Callable[[], None], every: Callable[[], float]) -> None:
        self._beat = beat
        self._every = every
        self._cond = threading.Condition()
        self._since: float | None = None  # training since (monotonic), else None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._until = 0.0  # when the thread wakes next (monotonic)
        #: Times the thread woke: what a round costs it (see the tests).
        self.wakes = 0

    def __enter__(self) -> None:
        with self._cond:
            self._since = now = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="secfl-beat", daemon=True)
                self._thread.start()
            elif self._until > now + self._every():
                self._cond.notify_all()

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._since = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                self.wakes += 1
                now = time.monotonic()
                if self._since is None:
                    self._until = now + self._every()
                    self._cond.wait(self._every())
                    continue
                left = self._since + self._every() - now
                if left > 0:
                    self._until = now + left
                    self._cond.wait(left)
                    continue
                self._since = now
                self._cond.release()
                try:
                    self._beat()
                except Exception as exc:  # a beat lost, not the next ones (nor the round)
                    log.debug("heartbeat failed: %s", exc)
                finally:
                    self._cond.acquire()


def _pieces(head: dict[str, Any], update: bytes) -> Iterable[bytes]:
    """The update message: one piece when it fits a chunk (each piece of a stream is a
    hop between gRPC's threads), transport-sized pieces otherwise."""
    if len(update) <= DEFAULT_CHUNK_SIZE:
        return [msg.header_bytes(head) + update]
    return msg.stream(head, update)


def _reason(text: str) -> str:
    """``UNAVAILABLE: Connection refused`` from a transport error's long text (the
    status, then gRPC's last detail: the same line for every failed attempt)."""
    parts = [p.strip() for p in text.split(": ") if p.strip()]
    if len(parts) >= 3 and parts[0] == "rpc":
        return f"{parts[1]}: {parts[-1]}"[:120]
    return text[:120]
