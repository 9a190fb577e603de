"""A federation in one process: the quick loop without TEEs (``secfl simulate``).

A scientist iterates on a task here, in seconds, before any board signs anything.
What decides the model is the federation's own code: the settings
(:meth:`FederationConfig.parse`, so a bad one fails as it would in a policy), who
is sampled each round, the seed each site trains with, the strategy with its
accumulator, the checks the aggregator makes of every update, and the round's
scores (:mod:`secfl.fl._scoring`: the weighted train loss, every metric of the
global model on the validation and test data, the objective and the best round).
With the same data, site names and settings it trains exactly the model a
federation trains (but for the clone audit, DnC, FLAME and SignGuard, whose draws in
a federation mix a secret the aggregator draws at start: here the seed alone decides
them), and its rounds
carry the keys of the aggregator's metrics file. Left out: the transport, the TEE,
the SPM, signatures, checkpoints and deadlines; the sites train in turn, here, on
data read in plain text.

What the task's own code does wrong is one :class:`TaskError` line naming the
function (as the collaborator and aggregator word it) and where it happened
(``train: the task raised ValueError: ... (site-2, round 3)``); the task's
exception is the error's ``__cause__``, for a caller that shows tracebacks. This
runs on the task owner's machine, so the task's messages are shown, unlike under
``secfl run`` (:func:`secfl.tasks._contract.task_errors_shown`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secfl.errors import FlError, TaskError
from secfl.fl._config import FederationConfig
from secfl.fl._model_slot import ModelSlot
from secfl.fl._phases import round_seconds
from secfl.fl._scoring import Scoreboard, train_means
from secfl.fl._strategy_wiring import wire_strategy
from secfl.fl._tensors import load_arrays, state_dict_arrays
from secfl.fl.strategies._base import Params, Update, check_update
from secfl.tasks._contract import (
    Task,
    call_task,
    check_metrics,
    sample_count,
    task_errors_shown,
)

__all__ = ["LocalRun", "Site", "check_sites", "load_site", "run_local"]

log = logging.getLogger("secfl.fl._local")


@contextmanager
def where(place: str) -> Iterator[None]:
    """Add ``(place)`` to a TaskError raised inside, keeping its cause: which site
    and round the task failed in."""
    try:
        yield
    except TaskError as exc:
        raise TaskError(f"{exc} ({place})") from exc.__cause__


@dataclass(frozen=True)
class Site:
    """One site of the simulation: its name (a collaborator's service name), its
    loaded data and its sample count (what FedAvg weighs its update by)."""

    name: str
    data: Any
    samples: int


def load_site(task: Task, name: str, path: Path, *, max_samples: int = 10**9) -> Site:
    """Load one site's (or the validation or test) data as a collaborator would."""
    with task_errors_shown(), where(f"{name}: {path}"):
        data = call_task("load_data", task.load_data, path)
        samples = sample_count(data, "load_data")
    if samples > max_samples:
        raise FlError(
            f"federation: {name} has {samples} samples, more than max_samples "
            f"({max_samples}) lets a site report; raise federation.max_samples"
        )
    return Site(name, data, samples)


@dataclass
class LocalRun:
    """What :func:`run_local` trained: the final model, one entry per round, and the
    objective's scoreboard (the best round)."""

    config: FederationConfig
    params: Params
    scores: Scoreboard
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        """The best round's entry by the objective (``None`` before any round scored)."""
        return next((e for e in self.history if e["round"] == self.scores.best_round), None)


def check_sites(names: Sequence[str], config: FederationConfig) -> None:
    """Refuse sites a federation with ``config`` would never start with: fewer than
    ``min_clients`` (it would wait for more), or two of one name."""
    if len(set(names)) != len(names):
        raise FlError(f"federation: two sites share a name ({', '.join(sorted(names))})")
    if len(names) < config.min_clients:
        raise FlError(
            f"federation: min_clients is {config.min_clients} but {len(names)} "
            f"site{'s are' if len(names) != 1 else ' is'} given: a federation would wait "
            "for more; give more sites or lower federation.min_clients"
        )


@task_errors_shown()
def run_local(
    task: Task,
    sites: Sequence[Site],
    config: FederationConfig,
    *,
    validation: Any = None,
    test: Any = None,
    on_round: Callable[[dict[str, Any]], None] = lambda entry: None,
) -> LocalRun:
    """Train ``config.rounds`` rounds over ``sites``; returns the final model and the
    history. Each round's entry has the aggregator's keys: ``round``,
    ``participants``, ``updates``, ``train_loss``, ``val_<metric>`` and
    ``test_<metric>`` for every metric ``evaluate`` returns, the objective and the
    best round so far, ``duration_s``."""
    names = [s.name for s in sites]
    check_sites(names, config)
    by_name = {s.name: s for s in sites}
    strategy = config.strategy_object()
    wire_strategy(strategy, task, validation, dict(config.train), config.seed)
    run = LocalRun(config, _initial(task, config.seed), Scoreboard(config.objective))
    splits = [(n, d) for n, d in (("val", validation), ("test", test)) if d is not None]
    # one model to train in and one to evaluate, reloaded every time (as a collaborator
    # and the aggregator keep theirs: :mod:`secfl.fl._model_slot`)
    trainer, scorer = ModelSlot(task), ModelSlot(task, config.seed)
    for round in range(1, config.rounds + 1):
        began = time.monotonic()
        sampled = config.sample(names, round, 1)
        base = strategy.configure(round)
        bound = sum(by_name[n].samples for n in sampled)  # as the aggregator's join counts
        acc = strategy.accumulator(round, run.params, weight_bound=bound)
        updates = []
        for name in sampled:  # sorted: the aggregator's canonical order
            update = _train(task, trainer, by_name[name], run.params, base, config, round)
            acc.add(update)
            updates.append(Update(name, {}, update.num_samples, update.metrics))
        run.params = acc.finish()
        entry: dict[str, Any] = {"round": round, "participants": sampled, "updates": len(sampled)}
        metrics = ["loss", config.objective.metric]
        entry.update(train_means(updates, metrics, robust=strategy.robust))
        if splits:
            entry.update(run.scores.evaluate(task, scorer.load(run.params), splits))
        run.scores.observe(round, entry)
        entry["duration_s"] = round_seconds(began)
        run.history.append(entry)
        log.info("round %d done: train_loss %.4f", round, entry.get("train_loss", float("nan")))
        on_round(entry)
    return run


def _initial(task: Task, seed: int) -> Params:
    """The initial global model: ``build_model(seed)``, as the aggregator makes it. A
    collaborator's ``build_model()`` must build the same tensors."""
    params = _arrays(call_task("build_model", task.build_model, seed), "build_model(seed)")
    try:
        load_arrays(call_task("build_model", task.build_model), params)
    except FlError as exc:
        raise TaskError(
            f"build_model: build_model() and build_model(seed) build different models "
            f"({exc}); the seed may only change the initial weights"
        ) from None
    return params


def _arrays(model: Any, what: str) -> Params:
    try:
        return state_dict_arrays(model)
    except (FlError, AttributeError, TypeError) as exc:
        raise TaskError(f"{what}: did not give a torch module with tensors ({exc})") from None


def _train(
    task: Task,
    slot: ModelSlot,
    site: Site,
    params: Params,
    base: dict[str, Any],
    cfg: FederationConfig,
    round: int,
) -> Update:
    """One site's round, as a collaborator runs it: the model loaded with the global
    weights, the round's settings and its own seed, then ``train``; the update
    checked as the aggregator checks it."""
    with where(f"{site.name}, round {round}"):
        model = slot.load(params)
        config = {**base, "seed": cfg.seed_for(round, site.name)}
        if config.get("proximal_mu"):
            config["global_params"] = params
        result = call_task("train", task.train, model, site.data, config)
        metrics = check_metrics(result, "train", required="loss")
        update = Update(site.name, _arrays(model, "train"), site.samples, metrics)
        try:
            check_update(update, params)
        except FlError as exc:
            raise TaskError(f"train: left a model the aggregator refuses: {exc}") from None
    return update
