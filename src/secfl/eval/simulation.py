"""Federated training in one process, with attackers: the robustness evaluation's engine.

The aggregation rules, the clone-and-sample audit, the tasks and their training are
the production ones; only the transport is left out (every collaborator trains in
turn, here), so a grid of hundreds of runs fits on one machine. Attackers train
honestly on their (possibly poisoned) shard and then poison their delta; colluding
attacks see the honest deltas of every attacker that round, omniscient ones (mimic)
those of every honest participant too. Attacks exist only here: no policy can turn
one on in a real federation.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl._strategy_wiring import wire_strategy
from secfl.fl._tensors import load_arrays, state_dict_arrays
from secfl.fl.strategies import Update, get_strategy
from secfl.fl.strategies._base import Params
from secfl.tasks._base import ClassificationTask, DivergedError

__all__ = ["DataCache", "Outcome", "Scenario", "simulate"]

log = logging.getLogger("secfl.eval.simulation")


@dataclass(frozen=True)
class Scenario:
    """One run: task, data split, attackers, defence, seed."""

    task: str = "digits"
    clients: int = 20
    rounds: int = 10
    #: ``None``: IID; otherwise the Dirichlet alpha of the label skew.
    dirichlet: float | None = None
    malicious: float = 0.0
    attack: str | None = None
    attack_settings: Mapping[str, Any] = field(default_factory=dict)
    defence: str = "fedavg"
    defence_settings: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    epochs: int = 1
    lr: float | None = None
    samples: int | None = None

    def label(self) -> str:
        split = "iid" if self.dirichlet is None else f"dir{self.dirichlet:g}"
        return (
            f"{self.task}/{split}/{round(self.malicious * 100)}%/"
            f"{self.attack or 'none'}/{self.defence}/s{self.seed}"
        )


@dataclass
class Outcome:
    """What a run measured, per round and at the end."""

    scenario: Scenario
    malicious: list[str]
    rounds: list[dict[str, Any]]
    seconds: float

    @property
    def final(self) -> dict[str, Any]:
        return self.rounds[-1] if self.rounds else {}

    def to_json(self) -> dict[str, Any]:
        s = asdict(self.scenario)
        return {"scenario": s, "label": self.scenario.label(), "malicious": self.malicious,
                "rounds": self.rounds, "seconds": round(self.seconds, 3)}  # fmt: skip


class DataCache:
    """Splits cached per (task, clients, partition, seed, samples) for a grid, in memory.

    With ``cache=None`` each split is written to a temporary folder that is removed as
    soon as its shards are loaded: a process that ends without running its finalizers (a
    Ray worker stopped at shutdown, a SIGKILL) leaves no folder behind. With a ``cache``
    folder the split files stay there."""

    def __init__(self, cache: Path | None = None) -> None:
        self.root = cache
        self._loaded: dict[tuple[Any, ...], tuple[list[Any], Any, Any]] = {}

    def get(self, s: Scenario, task: Any) -> tuple[list[Any], Any, Any]:
        key = (s.task, s.clients, s.dirichlet, s.seed, s.samples)
        if key not in self._loaded:
            name = f"{s.task}-{s.clients}-{s.dirichlet}-{s.seed}-{s.samples}"
            if self.root is not None:
                self._loaded[key] = _split_and_load(s, task, self.root / name)
            else:
                with tempfile.TemporaryDirectory(prefix="secfl-sim-") as folder:
                    self._loaded[key] = _split_and_load(s, task, Path(folder) / name)
        return self._loaded[key]


def _split_and_load(s: Scenario, task: Any, out: Path) -> tuple[list[Any], Any, Any]:
    """Split ``s``'s data into ``out`` and load the shards (copied into memory)."""
    from secfl.tasks._split import split

    report = split(
        s.task, s.clients, iid=s.dirichlet is None, dirichlet_alpha=s.dirichlet,
        seed=s.seed, out=out, samples=s.samples, overwrite=True,
    )  # fmt: skip
    clients = [task.load_data(report.path(sh)) for sh in report.client_shards]
    return (
        clients,
        task.load_data(report.path("validation.safetensors")),
        task.load_data(report.path("test.safetensors")),
    )


def _delta(params: Params, base: Params) -> Params:
    return {k: params[k].astype(np.float64) - base[k] for k in base}


def simulate(s: Scenario, data: DataCache | None = None) -> Outcome:
    """Run one scenario to the end."""
    from secfl.eval.attacks import attack_success_rate, get_attack
    from secfl.tasks._registry import get_task

    began = time.perf_counter()
    task = get_task(s.task)
    classifier = task if isinstance(task, ClassificationTask) else None
    if s.attack and classifier is None:
        raise FlError(f"simulation: the attacks need a classification task, not {s.task}")
    data = data or DataCache()
    shards, validation, test = data.get(s, task)
    names = [f"site-{i + 1:02d}" for i in range(s.clients)]
    rng = np.random.default_rng([s.seed, 7])
    count = round(s.malicious * s.clients)
    bad = sorted(names[i] for i in rng.permutation(s.clients)[:count])
    if count and not s.attack:
        raise FlError("simulation: malicious participants need an attack")
    attack = get_attack(s.attack, **dict(s.attack_settings)) if s.attack and count else None
    local = {n: shards[i] for i, n in enumerate(names)}
    if attack is not None and classifier is not None:
        for n in bad:
            local[n] = attack.poison_data(local[n], classifier, np.random.default_rng([s.seed, 11]))
    train: dict[str, Any] = {"epochs": s.epochs}
    if s.lr is not None:
        train["lr"] = s.lr
    strategy = get_strategy(s.defence, client_config=train, **dict(s.defence_settings))
    model = task.build_model(s.seed)
    wire_strategy(strategy, task, validation, train, s.seed)
    global_params = state_dict_arrays(model)
    rounds: list[dict[str, Any]] = []
    for r in range(1, s.rounds + 1):
        config = strategy.configure(r)
        deltas: dict[str, Params] = {}
        slowest = 0.0  # sites train side by side in a real round: the slowest sets its pace
        for i, n in enumerate(names):
            load_arrays(model, global_params)
            cfg = {**config, "seed": (s.seed * 1_000_003 + r * 1009 + i) % (2**62)}
            if cfg.get("proximal_mu"):
                cfg["global_params"] = global_params
            t0 = time.perf_counter()
            try:
                task.train(model, local[n], cfg)
            except DivergedError:  # like a real site, it sends nothing this round
                continue
            finally:
                slowest = max(slowest, time.perf_counter() - t0)
            deltas[n] = _delta(state_dict_arrays(model), global_params)
        if not deltas:  # the global model is broken: no site can train on it any more
            rounds.append(_diverged(r, task, model, global_params, test))
            break
        if attack is not None:
            benign = [deltas[n] for n in bad if n in deltas]
            arng = np.random.default_rng([s.seed, r, 13])
            seen: dict[str, Any] = {}  # an omniscient attack also sees the honest deltas
            if attack.omniscient:
                seen["honest"] = [deltas[n] for n in sorted(deltas) if n not in bad]
            for n in bad:
                if n in deltas:
                    deltas[n] = attack.poison_delta(deltas[n], benign=benign, rng=arng, **seen)
        updates = [
            Update(
                n,
                {k: (v + deltas[n][k]).astype(v.dtype) for k, v in global_params.items()},
                len(local[n]),
            )
            for n in names
            if n in deltas
        ]
        t0 = time.perf_counter()
        global_params = strategy.aggregate(r, global_params, updates)
        agg_seconds = time.perf_counter() - t0
        load_arrays(model, global_params)
        scores = task.evaluate(model, test)
        entry: dict[str, Any] = {
            "round": r,
            **{f"test_{k}": float(v) for k, v in scores.items() if k != "n"},
            "aggregate_seconds": round(agg_seconds, 5),
            "train_seconds_max": round(slowest, 5),
        }
        if s.attack == "backdoor" and classifier is not None:
            target = int(dict(s.attack_settings).get("target", 0))
            entry["backdoor_success"] = float(attack_success_rate(model, test, classifier, target))
        _audit_entry(strategy, entry, bad, names)
        rounds.append(entry)
    return Outcome(s, bad, rounds, time.perf_counter() - began)


def _diverged(r: int, task: Any, model: Any, global_params: Params, test: Any) -> dict[str, Any]:
    """The last round of a run whose global model no site can train on: the defence let
    it break. Its test accuracy is what the federation is left with."""
    load_arrays(model, global_params)
    scores = task.evaluate(model, test)
    finite = {f"test_{k}": float(v) for k, v in scores.items() if k != "n" and np.isfinite(v)}
    return {"round": r, "test_loss": None, **finite, "diverged": True}


def _audit_entry(strategy: Any, entry: dict[str, Any], bad: list[str], names: list[str]) -> None:
    history = getattr(strategy, "history", None)
    if not history:
        return
    last = history[-1]
    excluded = set(last.excluded)
    honest = [n for n in names if n not in bad]
    entry["excluded"] = sorted(excluded)
    entry["fell_back"] = last.fell_back
    entry["true_positive_rate"] = (len(excluded & set(bad)) / len(bad)) if bad else None
    entry["false_positive_rate"] = len(excluded - set(bad)) / len(honest) if honest else None
    entry["audit_seconds"] = round(last.seconds, 5)
    entry["audit_ratio"] = round(last.seconds / max(last.base_seconds, 1e-9), 2)
    # against the plain round: the slowest site's training plus the plain aggregation
    plain = entry["train_seconds_max"] + last.base_seconds
    entry["audit_round_ratio"] = round(last.seconds / max(plain, 1e-9), 3)
