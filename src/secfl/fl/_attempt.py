"""One try at one round, as the aggregator's handlers and its round loop share it:
who was sampled, the model they get, what came back and when."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from secfl.fl._envelope import SignedModel
from secfl.fl.strategies._base import Accumulator, Params, Update

__all__ = ["Attempt", "Participant"]


@dataclass
class Participant:
    name: str
    serial: str
    samples: int | None
    last_seen: float


@dataclass
class Attempt:
    """One try at one round: the sample, the model sent, what came back."""

    round: int
    number: int
    sampled: list[str]
    model: SignedModel
    configs: dict[str, dict[str, Any]]
    deadline: float
    accumulator: Accumulator | None  # arrival order: folded as updates come
    global_params: Params
    #: The most samples each sampled participant's update may report: what it said when
    #: it joined (else the policy's max_samples). Their sum bounds an exact sum's weight,
    #: so one participant claiming more would crowd out everyone else's updates.
    caps: dict[str, int] = field(default_factory=dict)
    updates: dict[str, Update] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    fetched: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)
    open: bool = True
    #: When (monotonic) the attempt opened, each model was sent whole, and each update
    #: arrived: (first piece, last piece, accepted). The round's phases come from these.
    opened: float = 0.0
    sent: dict[str, float] = field(default_factory=dict)
    arrivals: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    #: Set once every sampled participant's model went out whole.
    dispatched: threading.Event = field(default_factory=threading.Event)

    def mark_sent(self, name: str) -> None:
        """``name``'s model went out whole (the stream's handler thread calls this)."""
        self.sent.setdefault(name, time.monotonic())
        if len(self.sent) >= len(self.sampled):
            self.dispatched.set()

    def settled(self, name: str) -> bool:
        return name in self.updates or name in self.refused or name in self.dropped
