"""The federation's settings: the policy's ``federation`` section, typed and checked.

The board approves these settings with the policy, so the aggregator takes them
from the SPM's copy, never from its command line (``--insecure`` mode, which has
no SPM, reads them from a file). Unknown keys are refused: a typo must not
silently fall back to a default. Every number is bounded (integers are real
integers, not booleans; times are finite and at most days), and the free-form
``strategy_settings`` and ``train`` hold only JSON values of bounded size: they
reach the strategies and every collaborator.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from secfl.errors import FlError

# (not from secfl.tasks, which imports torch: the policy commands read settings too)
from secfl.fl._messages import MAX_METRIC_NAME
from secfl.fl._untrusted import check_tree
from secfl.policy._round_counter import ROUND_COUNTER

if TYPE_CHECKING:
    from secfl.fl.strategies._base import Strategy

__all__ = [
    "MAX_CLIENTS",
    "MAX_HEARTBEAT",
    "MAX_METRIC_NAME",
    "WEEK",
    "FederationConfig",
    "Objective",
]


#: Bounds on settings (a board could approve a typo; nothing may overflow).
MAX_CLIENTS = 100_000
WEEK = 7 * 24 * 3600.0
MAX_HEARTBEAT = 3600.0


class Objective(BaseModel):
    """Which metric of ``evaluate`` reports and selects the model, and its direction.

    ``mode: min`` means lower is better (a loss, an error); ``max`` higher (accuracy,
    R²). The default, ``{metric: loss, mode: min}``, fits every task whose
    ``evaluate`` returns ``loss``; ``evaluate`` must return the objective's metric.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(
        default="loss", min_length=1, max_length=MAX_METRIC_NAME, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    mode: Literal["min", "max"] = "min"

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (no best yet: it does; ties keep the earlier)."""
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best


class FederationConfig(BaseModel):
    """How rounds run. Times are seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    rounds: StrictInt = Field(default=10, ge=1, le=100_000)
    #: The policy counter the aggregator increments once per round (freshness).
    counter: str = ROUND_COUNTER
    #: The run's number. Every policy version is a run of its own (its checkpoints
    #: carry the version's digest); raising ``run`` is how a board starts a new run
    #: without changing anything else. ``start_from``: a new run's first model, the
    #: task's ``initial`` one or the ``previous`` run's newest committed model.
    run: StrictInt = Field(default=1, ge=1, le=2**31)
    start_from: Literal["initial", "previous"] = "initial"
    #: How long a collaborator waits for an aggregator that is not up (yet, or again).
    join_patience: float = Field(default=3600.0, gt=0, le=WEEK)
    #: Strategy name (secfl.fl.strategies registry) and its settings.
    strategy: str = "fedavg"
    strategy_settings: dict[str, JsonValue] = Field(default_factory=dict)
    #: Sampling: a fraction of the available collaborators, at least ``min_clients``.
    fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    min_clients: StrictInt = Field(default=2, ge=1, le=MAX_CLIENTS)
    #: Updates needed to accept a round (default: ``min_clients``).
    quorum: StrictInt | None = Field(default=None, ge=1, le=MAX_CLIENTS)
    #: A round attempt's deadline; attempts per round before the aggregator gives up.
    round_timeout: float = Field(default=300.0, gt=0, le=WEEK)
    max_attempts: StrictInt = Field(default=3, ge=1, le=1000)
    #: How long to wait for ``min_clients`` collaborators before an attempt.
    join_timeout: float = Field(default=600.0, gt=0, le=WEEK)
    #: Collaborators beat this often while training; silent for ``dead_after``: dropped.
    heartbeat: float = Field(default=2.0, gt=0, le=MAX_HEARTBEAT)
    dead_after: float = Field(default=10.0, gt=0, le=WEEK)
    #: Training settings sent to collaborators (secfl.tasks._training.TrainConfig keys).
    train: dict[str, JsonValue] = Field(default_factory=dict)
    seed: StrictInt = Field(default=0, ge=0, lt=2**63)
    #: ``canonical``: fold updates in sender order (reproducible, holds a round's
    #: updates); ``arrival``: fold each on arrival (memory bounded by one update).
    aggregation_order: Literal["canonical", "arrival"] = "canonical"
    checkpoint_keep: StrictInt = Field(default=2, ge=2, le=1000)
    #: With the clone audit: ask the board to revoke excluded participants' certificates
    #: (an audit-log entry naming them; revocation itself needs the board's signatures).
    request_revocation: bool = False
    #: Largest update accepted, as a multiple of the model's size (plus 1 MiB).
    max_update_factor: float = Field(default=1.5, ge=1.0, le=1000.0)
    #: Largest sample count a collaborator may report: FedAvg weighs updates by it, so
    #: an unbounded count would let one site outweigh every other (or overflow).
    max_samples: StrictInt = Field(default=10**9, ge=1, le=2**53)
    #: The metric of ``evaluate`` that reports and selects the model (see Objective).
    objective: Objective = Field(default_factory=Objective)

    @field_validator("strategy_settings", "train", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        try:
            check_tree(value, "the value", max_int=2**53, max_str=4096)
        except FlError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FederationConfig:
        if self.quorum is not None and self.quorum > self.min_clients:
            raise ValueError(f"quorum {self.quorum} exceeds min_clients {self.min_clients}")
        if self.dead_after <= self.heartbeat:
            raise ValueError("dead_after must be longer than heartbeat")
        for key in ("seed", "global_params", "threads"):
            if key in self.train:
                raise ValueError(f"train.{key} is set by the aggregator, not the policy")
        return self

    @property
    def needed(self) -> int:
        return self.quorum or self.min_clients

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> FederationConfig:
        """Settings from a policy; a bad one is one line naming the field."""
        try:
            return cls.model_validate(dict(settings))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = tuple(first["loc"])
            where = ".".join(str(p) for p in loc)[:80]
            text = first["msg"].removeprefix("Value error, ")
            if first["type"] == "extra_forbidden":
                # a misspelt setting: name the ones that exist (a typo must not pass)
                model: Any = cls
                for part in loc[:-1]:
                    field = model.model_fields.get(part) if isinstance(part, str) else None
                    model = field.annotation if field is not None else None
                    if not (isinstance(model, type) and issubclass(model, BaseModel)):
                        break
                plain = isinstance(model, type) and issubclass(model, BaseModel)
                known = list(model.model_fields) if plain else []
                close = difflib.get_close_matches(str(loc[-1]), known, n=1)
                text = f"unknown setting (did you mean '{close[0]}'?)" if close else (
                    f"unknown setting (known: {', '.join(known)})" if known else "unknown setting"
                )  # fmt: skip
            raise FlError(f"federation: {where + ': ' if where else ''}{text}") from None

    def sample(self, available: Sequence[str], round: int, attempt: int) -> list[str]:
        """Who trains in ``round`` (attempt ``attempt``): a seeded draw, sorted."""
        names = sorted(set(available))
        k = min(len(names), max(self.min_clients, math.ceil(self.fraction * len(names))))
        rng = np.random.default_rng([self.seed, round, attempt])
        return sorted(str(n) for n in rng.choice(names, size=k, replace=False))

    def strategy_object(self) -> Strategy:
        """The configured strategy, sending ``train`` to collaborators every round."""
        from secfl.fl.strategies import get_strategy

        return get_strategy(self.strategy, client_config=self.train, **self.strategy_settings)

    def seed_for(self, round: int, participant: str) -> int:
        """The training seed of one collaborator in one round (reproducible runs)."""
        material = f"{self.seed}/{round}/{participant}".encode()
        return int.from_bytes(hashlib.sha256(material).digest()[:7], "big")
