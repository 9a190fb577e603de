"""A round's timings and summary, for its metrics line: phases in milliseconds from
the timestamps the round's :class:`~secfl.fl._rounds.Attempt` keeps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from secfl.fl._rounds import Attempt

__all__ = ["Summary", "attempt_phases", "ms", "round_seconds"]


@dataclass(frozen=True)
class Summary:
    """What the round's entry needs of a closed attempt (not its updates or model)."""

    number: int
    dropped: list[str]
    refused: list[str]

    @classmethod
    def of(cls, attempt: Attempt) -> Summary:
        return cls(attempt.number, sorted(attempt.dropped), sorted(attempt.refused))


def round_seconds(began: float) -> float:
    return round(time.monotonic() - began, 3)


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def attempt_phases(a: Attempt, top: float) -> dict[str, float]:
    """Milliseconds of the round's phases up to its last update: ``start`` (signing
    the model, refreshing, sampling: up to the round opening), ``dispatch`` (until the
    last model was sent), then the slowest collaborator's ``train`` (from its model
    sent to its update's first piece: checking and loading the model, training,
    serializing), ``upload`` and ``fold`` (checked and folded), and ``collect`` (the
    round open until it closed)."""
    closed = time.monotonic()
    out = {"start": ms(a.opened - top), "collect": ms(closed - a.opened), "_closed": closed}
    if a.sent:
        out["dispatch"] = ms(max(a.sent.values()) - a.opened)
    marks = [(a.sent[n], *a.arrivals[n]) for n in a.arrivals if n in a.sent]
    if marks:
        out["train"] = ms(max(first - sent for sent, first, _, _ in marks))
        out["upload"] = ms(max(last - first for _, first, last, _ in marks))
        out["fold"] = ms(max(done - last for _, _, last, done in marks))
    return out
