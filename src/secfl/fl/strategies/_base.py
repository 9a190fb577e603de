"""The strategy interface: what the aggregator asks of an aggregation rule.

A :class:`Strategy` turns one round's :class:`Update` s (each with its sender) into
the next global model. The interface is shaped for what comes after plain
averaging:

- :meth:`Strategy.aggregate` sees *all* updates of the round together with their
  senders and sample counts, as robust rules (median, trimmed mean, Krum, Bulyan)
  and the clone-and-sample audit need;
- :meth:`Strategy.accumulator` lets a rule that can fold updates one by one
  (FedAvg, FedProx, FedAdam) do so as they arrive, with memory bounded by about one
  model, while every other rule gets a buffering accumulator that hands the whole
  round to :meth:`Strategy.aggregate`. The aggregator can therefore always feed an
  accumulator and never needs to know which kind it has;
- :meth:`Strategy.configure` gives the per-round client configuration (FedProx's
  ``proximal_mu``, and any fixed settings such as local epochs);
- :meth:`Strategy.state` / :meth:`Strategy.load_state` carry server-side state (FedAdam's
  moments) through a sealed checkpoint: a flat ``dict[str, numpy array | JSON value]``.

Preconditions (no update, a non-positive sample count, a duplicate sender, tensors
that do not match the global model) are :class:`~secfl.errors.FlError` s with a
one-line message.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from secfl._internal.registry import positive as _positive
from secfl.errors import FlError
from secfl.fl._tensors import check_like

__all__ = [
    "Accumulator",
    "BufferingAccumulator",
    "Params",
    "Strategy",
    "Update",
    "check_global",
    "check_round",
    "check_update",
    "positive",
]

Params = dict[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class Update:
    """One collaborator's result for a round.

    ``params`` is the collaborator's locally trained model (not a difference), with
    the global model's tensor names, shapes and dtypes; ``num_samples`` the number of
    training examples it used (FedAvg's weight); ``metrics`` what it reported
    (loss, accuracy...), JSON values. Equality is identity (arrays have no single
    truth value), so updates can be kept in sets and dicts.
    """

    sender: str
    params: Params
    num_samples: int
    metrics: dict[str, Any] = field(default_factory=dict)


def check_update(
    update: Update, global_params: Mapping[str, np.ndarray], *, finite: bool = True
) -> None:
    """The preconditions every strategy needs of one update: a named sender, a
    positive integer sample count, and tensors like the global model's (names, shapes,
    dtypes), finite unless ``finite=False`` (for a caller that checks its output)."""
    if not isinstance(update, Update):
        raise FlError(f"aggregate: expected an Update, got {type(update).__name__}")
    if not isinstance(update.sender, str) or not update.sender:
        raise FlError("aggregate: an update has no sender")
    samples = update.num_samples
    if type(samples) is not int and not isinstance(samples, np.integer):
        raise FlError(f"aggregate: the update from '{update.sender}' has a non-integer count")
    if samples <= 0:
        raise FlError(
            f"aggregate: the update from '{update.sender}' reports {samples} samples; "
            "at least 1 is needed"
        )
    check_like(
        update.params,
        global_params,
        what=f"aggregate: the update from '{update.sender}'",
        finite=finite,
    )


def check_round(updates: Sequence[Update]) -> None:
    """Round-level preconditions: at least one update and no sender twice."""
    if len(updates) == 0:
        raise FlError("aggregate: no updates to aggregate")
    seen: set[str] = set()
    for update in updates:
        sender = getattr(update, "sender", None)
        if sender in seen:
            raise FlError(f"aggregate: two updates from '{sender}' in one round")
        if isinstance(sender, str):
            seen.add(sender)


def check_global(global_params: Mapping[str, np.ndarray]) -> None:
    """The global model must be a non-empty mapping of numpy arrays."""
    if not isinstance(global_params, Mapping) or not global_params:
        raise FlError("aggregate: the global model has no tensors")
    for name, value in global_params.items():
        if not isinstance(value, np.ndarray):
            raise FlError(f"aggregate: global tensor '{name}' is not a numpy array")


class Accumulator(ABC):
    """Receives one round's updates one at a time; :meth:`finish` gives the new model."""

    #: Whether the model is bit-identical whatever order updates are added in.
    order_free: ClassVar[bool] = False

    def __init__(self) -> None:
        self.senders: list[str] = []
        self._finished = False

    def add(self, update: Update) -> None:
        """Check and take in one update; a refused update leaves the round unharmed."""
        if self._finished:
            raise FlError("aggregate: the round is already aggregated")
        if update.sender in self.senders:
            raise FlError(f"aggregate: two updates from '{update.sender}' in one round")
        self._add(update)
        if self._finished:  # aggregated while it was checked: it counts nowhere
            raise FlError("aggregate: the round was aggregated while this update was checked")
        self.senders.append(update.sender)

    def finish(self) -> Params:
        """The aggregated model; callable once, and only after at least one update."""
        if self._finished:
            raise FlError("aggregate: the round is already aggregated")
        if not self.senders:
            raise FlError("aggregate: no updates to aggregate")
        self._finished = True
        return self._finish()

    @property
    def count(self) -> int:
        return len(self.senders)

    @abstractmethod
    def _add(self, update: Update) -> None: ...

    @abstractmethod
    def _finish(self) -> Params: ...


class BufferingAccumulator(Accumulator):
    """Keeps every update of the round and calls the strategy's ``aggregate`` at the
    end: the accumulator of rules that need the whole round at once."""

    def __init__(self, strategy: Strategy, round: int, global_params: Params) -> None:
        super().__init__()
        self._strategy = strategy
        self._round = round
        self._global = global_params
        self._updates: list[Update] = []

    def _add(self, update: Update) -> None:
        check_update(update, self._global)
        self._updates.append(update)

    def _finish(self) -> Params:
        updates, self._updates = self._updates, []
        return self._strategy.aggregate(self._round, self._global, updates)


def _json_value(value: Any, what: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise FlError(f"{what} is not a JSON value") from None
    return value


class Strategy(ABC):
    """An aggregation rule (see the module docstring).

    Subclasses set :attr:`name` (the registry name) and implement :meth:`aggregate`;
    settings are keyword arguments of ``__init__``, checked there.
    ``client_config`` holds fixed JSON settings sent to collaborators every round
    (e.g. ``{"local_epochs": 1, "lr": 0.05}``); :meth:`configure` adds the
    strategy's own.
    """

    name: ClassVar[str] = ""
    #: Whether :meth:`accumulator` folds updates as they come (memory ≈ one model)
    #: rather than keeping them all, with a result that does not depend on their
    #: order (so even ``canonical`` aggregation needs no buffered round).
    streaming: ClassVar[bool] = False
    #: Whether one update can move the result only so far: every rule but the
    #: averages (FedAvg, FedProx, FedAdam). The round's reported training metrics
    #: follow suit: the median of the kept updates' values, not their weighted mean.
    robust: ClassVar[bool] = True

    def __init__(self, *, client_config: Mapping[str, Any] | None = None) -> None:
        config = dict(client_config or {})
        _json_value(config, f"{self.name}: client_config")
        self.client_config = config

    def configure(self, round: int) -> dict[str, Any]:
        """The configuration sent to collaborators for ``round`` (JSON values)."""
        return dict(self.client_config)

    @abstractmethod
    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        """The new global model from all of ``round``'s updates (with their senders)."""

    def accumulator(
        self, round: int, global_params: Params, *, weight_bound: int | None = None
    ) -> Accumulator:
        """An accumulator for ``round``: by default it buffers and calls :meth:`aggregate`.

        ``weight_bound``: the most samples the round's updates may report in all (the
        aggregator passes what the sampled collaborators reported when they joined);
        rules that fold exactly use it to size their fixed-point grid."""
        check_global(global_params)
        return BufferingAccumulator(self, round, global_params)

    def fewest_updates(self) -> int:
        """The fewest updates a round needs for :meth:`aggregate` (Krum: ``2f + 3``),
        so that a policy whose rounds may close with fewer is refused before it runs."""
        return 1

    def selected(self) -> list[str] | None:
        """The senders the last :meth:`aggregate` kept, for rules that select updates
        (Krum, Multi-Krum, Bulyan); ``None`` for rules that use every update."""
        return None

    def kept(self, senders: Sequence[str]) -> list[str]:
        """Of ``senders`` (the last :meth:`aggregate`'s), those whose updates it used (in
        the order the rule chose them, if it chooses)."""
        selected = self.selected()
        if selected is None:
            return list(senders)
        given = set(senders)
        return [s for s in selected if s in given]

    def state(self) -> dict[str, Any]:
        """Server-side state for a checkpoint: numpy arrays and JSON values, flat."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`'s output (after a restart); stateless rules accept ``{}``."""
        if state:
            raise FlError(f"{self.name}: has no state, got keys {sorted(state)[:3]}")

    def trial(self) -> Strategy:
        """A rule that aggregates as this one would now but whose steps leave this one's
        state as it is: the clone audit's clones (about 31 a round) each take one.
        A rule without state is itself (its hooks, a lock in them, are not copied);
        one with state is a deep copy, unless it overrides this with something
        cheaper (FedAdam reads its moments without copying them)."""
        return copy.deepcopy(self) if self.state() else self

    def settings(self) -> dict[str, Any]:
        """The settings this strategy was built with (for logs and the report)."""
        return {"client_config": dict(self.client_config)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


def positive(value: Any, what: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), else :class:`FlError`."""
    return _positive(value, what, FlError, allow_zero=allow_zero)
