"""What an aggregator may write to the audit log (``POST /v1/policies/{name}/events``).

Only an attested session of an aggregator service of the policy may post (checked
by :meth:`Spm.report <secfl.spm._service.Spm.report>`); here the event itself is
bounded: its detail is a JSON object of limited size and depth, and the events
that ``secfl status`` and a model owner read have a fixed shape:

- ``fl.round``, the aggregator's progress (which round it committed, at which counter
  value, with how many participants, the round's objective value), is logged only with
  the increment of its counter, in the same transaction (:func:`check_round`,
  :mod:`secfl.spm._increment`): posted as an event its counter would be whatever the
  poster wrote, so ``round`` is refused here;
- ``model`` (``fl.model``): the sealed final model's tag, run, rounds and counter;
- ``audit.excluded`` and ``audit.revocation-requested``: the clone audit's findings,
  whose round, excluded services and certificate serials become the board's revocation
  commands (its scores are free-form numbers, bounded like any detail).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from secfl._internal.canonical import canonical_json
from secfl.errors import Refused
from secfl.policy._fields import Name

__all__ = [
    "MAX_DEPTH",
    "MAX_DETAIL_BYTES",
    "FindingEvent",
    "ModelEvent",
    "RoundEvent",
    "check_event",
    "check_round",
]

#: The largest detail an event may carry (canonical JSON): a clone audit's finding
#: for hundreds of participants fits; the log does not fill with megabyte entries.
MAX_DETAIL_BYTES = 256 << 10
#: The deepest nesting of lists and objects in a detail.
MAX_DEPTH = 8
#: Participants in one round: far above any federation (the aggregator's own bound).
MAX_PARTICIPANTS = 1_000_000
#: A certificate serial as a finding names it (hex; X.509 allows at most 20 octets).
Serial = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{1,64}$")]


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


class ModelEvent(BaseModel):
    """``fl.model``: the final model the aggregator sealed, as a model owner checks it."""

    model_config = ConfigDict(extra="forbid")

    tag: str = Field(pattern=r"^[0-9a-f]{64}$")
    run: StrictInt = Field(ge=1, le=2**31)
    rounds: StrictInt = Field(ge=0, le=2**31)
    counter: StrictInt = Field(ge=0, le=2**62)
    policy_version: StrictInt | None = Field(default=None, ge=1, le=2**31)


class FindingEvent(BaseModel):
    """``fl.audit.excluded`` / ``fl.audit.revocation-requested``: what the board acts on.

    The audit's scores and timings (``suspicion``, ``scores``, ...) are kept as sent:
    they are read, not acted on."""

    model_config = ConfigDict(extra="allow")

    round: StrictInt = Field(ge=0, le=2**31)
    excluded: list[Name] = Field(max_length=MAX_PARTICIPANTS)
    serials: dict[Name, Serial] = Field(default_factory=dict, max_length=MAX_PARTICIPANTS)

    @model_validator(mode="after")
    def _serials_of_the_excluded(self) -> FindingEvent:
        strays = sorted(set(self.serials) - set(self.excluded))
        if strays:
            raise ValueError(f"serials of services the finding does not exclude: {strays[:3]}")
        return self


_SHAPES: dict[str, type[BaseModel]] = {
    "model": ModelEvent,
    "audit.excluded": FindingEvent,
    "audit.revocation-requested": FindingEvent,
}


def check_event(event: str, detail: dict[str, Any]) -> dict[str, Any]:
    """The detail to log for ``event`` (posted by an aggregator), or :class:`Refused`
    (400) naming what is wrong."""
    if event == "round":
        raise Refused(
            "event: round: a round is logged with its counter's increment "
            "(POST /v1/policies/{name}/counters/{counter}/increment with 'round'), "
            "not posted as an event",
            400,
        )
    return _checked(event, detail)


def check_round(detail: dict[str, Any]) -> dict[str, Any]:
    """An increment's ``round`` detail (``fl.round``), or :class:`Refused` (400)."""
    return _checked("round", detail)


def _checked(event: str, detail: dict[str, Any]) -> dict[str, Any]:
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
    shape = RoundEvent if event == "round" else _SHAPES.get(event)
    if shape is None:
        return detail
    try:
        checked = shape.model_validate(detail)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "detail"
        raise Refused(f"event: {event}: {where}: {first['msg']}", 400) from None
    # a round is logged in its one form; any other event as it was sent
    return checked.model_dump(exclude_none=True) if shape is RoundEvent else detail


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
