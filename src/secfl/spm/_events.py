"""What an aggregator may write to the audit log (``POST /v1/policies/{name}/events``).

Only an attested session of an aggregator service of the policy may post (checked
by :meth:`Spm.report <secfl.spm._service.Spm.report>`); here the event itself is
bounded: its detail is a JSON object of limited size and depth, and the events
that ``secfl status`` reads have a fixed shape. ``round`` (written as ``fl.round``)
is the aggregator's progress: which round it committed, at which counter value,
with how many participants, and the round's objective value.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from secfl._internal.canonical import canonical_json
from secfl.errors import Refused

__all__ = ["MAX_DEPTH", "MAX_DETAIL_BYTES", "RoundEvent", "check_event"]

#: The largest detail an event may carry (canonical JSON): a clone audit's finding
#: for hundreds of participants fits; the log does not fill with megabyte entries.
MAX_DETAIL_BYTES = 256 << 10
#: The deepest nesting of lists and objects in a detail.
MAX_DEPTH = 8
#: Participants in one round: far above any federation (the aggregator's own bound).
MAX_PARTICIPANTS = 1_000_000


class RoundObjective(BaseModel):
    """The round's value of the policy's objective metric (``federation.objective``)."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    mode: Literal["min", "max"]
    value: float

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class RoundEvent(BaseModel):
    """``fl.round``: a round the aggregator committed (after its counter moved)."""

    model_config = ConfigDict(extra="forbid")

    round: StrictInt = Field(ge=0, le=2**31)
    counter: StrictInt = Field(ge=0, le=2**62)
    attempt: StrictInt = Field(default=1, ge=1, le=1_000_000)
    participants: StrictInt = Field(ge=0, le=MAX_PARTICIPANTS)
    dropped: StrictInt = Field(default=0, ge=0, le=MAX_PARTICIPANTS)
    excluded: StrictInt = Field(default=0, ge=0, le=MAX_PARTICIPANTS)
    run: StrictInt | None = Field(default=None, ge=1, le=2**31)
    policy_version: StrictInt | None = Field(default=None, ge=1, le=2**31)
    objective: RoundObjective | None = None
    duration_s: float | None = Field(default=None, ge=0, le=1e9)


def check_event(event: str, detail: dict[str, Any]) -> dict[str, Any]:
    """The detail to log for ``event``, or :class:`Refused` (400) naming what is wrong."""
    if "service" in detail:
        raise Refused("event: 'service' is set by the SPM (the reporting service)", 400)
    depth = _depth(detail)
    if depth > MAX_DEPTH:
        raise Refused(f"event: the detail nests {depth} levels, at most {MAX_DEPTH}", 400)
    try:
        size = len(canonical_json(detail))
    except (TypeError, ValueError):
        raise Refused("event: the detail is not JSON (numbers must be finite)", 400) from None
    if size > MAX_DETAIL_BYTES:
        raise Refused(f"event: the detail is {size} bytes, at most {MAX_DETAIL_BYTES}", 400)
    if event == "round":
        try:
            return RoundEvent.model_validate(detail).model_dump(exclude_none=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "detail"
            raise Refused(f"event: round: {where}: {first['msg']}", 400) from None
    return detail


def _depth(value: Any) -> int:
    """How deep lists and objects nest in ``value`` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest
