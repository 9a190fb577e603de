"""The robustness grid behind ``secfl eval robustness``: every attack against every defence.

A :class:`Grid` of :class:`~secfl.eval.simulation.Scenario` s (task x partition x
malicious fraction x attack x defence x seed) runs through the simulation engine
(:class:`Evaluation`), starting from a preset changed by a command line's options
(:mod:`secfl.eval.options`). Each run's row holds the final test
accuracy, the gap to clean FedAvg, the backdoor success rate, the audit's true- and
false-positive rates and the aggregator's time per round; :mod:`secfl.eval.report`
writes them as CSV, JSON, a Markdown report and PNG plots. Defences that need more
than the setting offers (Bulyan needs n >= 4f + 3) are reported as not applicable,
not silently skipped.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from secfl.errors import FlError
from secfl.eval.simulation import DataCache, Outcome, Scenario, simulate

__all__ = [
    "ATTACKS",
    "DEFENCES",
    "FULL",
    "QUICK",
    "Evaluation",
    "Grid",
    "Run",
    "attack_settings",
    "defence_names",
    "defence_settings",
    "key",
    "partition_name",
    "run_record",
]

log = logging.getLogger("secfl.eval.grid")

ATTACKS = ["label-flip", "sign-flip", "scaling", "gaussian", "alie", "ipm", "min-max",
           "min-sum", "backdoor", "adaptive", "fang-krum", "fang-trimmed-mean",
           "mimic"]  # fmt: skip
DEFENCES = ["fedavg", "median", "trimmed-mean", "multi-krum", "bulyan", "centered-clipping",
            "fltrust", "dnc", "signguard", "flame", "clone-audit",
            "clone-audit+trimmed-mean"]  # fmt: skip


@dataclass(frozen=True)
class Grid:
    tasks: list[str]
    clients: int
    partitions: list[float | None]
    malicious: list[float]
    attacks: list[str]
    defences: list[str]
    seeds: list[int]
    rounds: int
    epochs: int = 5
    samples: int | None = None
    clones: int = 30

    def cells(self) -> int:
        """How many runs :meth:`scenarios` yields, counted without making them."""
        per_frac = sum(1 if frac == 0 else len(self.attacks) for frac in self.malicious)
        return (len(self.seeds) * len(self.tasks) * len(self.partitions) * per_frac
                * len(self.defences))  # fmt: skip

    def scenarios(self) -> Iterable[tuple[str, Scenario]]:
        """(defence label, scenario) for every cell of the grid, seed by seed: a grid
        stopped part-way has whole cells of the first seeds, not one corner."""
        for seed in self.seeds:
            for task in self.tasks:
                for part in self.partitions:
                    for frac in self.malicious:
                        attacks = [None] if frac == 0 else self.attacks
                        for attack in attacks:
                            for defence in self.defences:
                                yield (
                                    defence,
                                    self.scenario(task, part, seed, frac, attack, defence),
                                )

    def scenario(self, task: str, part: float | None, seed: int, frac: float,
                 attack: str | None, defence: str) -> Scenario:  # fmt: skip
        m = round(frac * self.clients)
        name, settings = defence_settings(defence, self.clients, m, self.clones)
        return Scenario(
            task=task, clients=self.clients, rounds=self.rounds, dirichlet=part,
            malicious=frac, attack=attack, attack_settings=attack_settings(attack, self.clients, m),
            defence=name, defence_settings=settings, seed=seed, epochs=self.epochs,
            samples=self.samples,
        )  # fmt: skip


QUICK = Grid(tasks=["digits"], clients=20, partitions=[None, 0.5], malicious=[0.0, 0.2],
             attacks=["label-flip", "sign-flip", "alie", "min-max", "backdoor"],
             defences=["fedavg", "median", "trimmed-mean", "multi-krum", "clone-audit"],
             seeds=[0], rounds=8, epochs=3)  # fmt: skip
FULL = Grid(tasks=["fashion-mnist", "digits"], clients=20, partitions=[None, 0.5, 0.1],
            malicious=[0.0, 0.1, 0.2, 0.3, 0.4], attacks=ATTACKS, defences=DEFENCES,
            seeds=[0, 1, 2], rounds=10, epochs=1, samples=None)  # fmt: skip


def defence_names() -> list[str]:
    """The defences a grid may name (:func:`defence_settings` knows each)."""
    return list(_defence_table(2, 1, 1))


def defence_settings(defence: str, n: int, m: int, clones: int) -> tuple[str, dict[str, Any]]:
    """The rule and its settings for ``n`` participants of which ``m`` are malicious
    (the defender is told an upper bound ``f = max(m, 1)``, as the papers assume)."""
    table = _defence_table(n, m, clones)
    if defence not in table:
        raise FlError(f"eval: unknown defence '{defence}' (known: {', '.join(table)})")
    return table[defence]


def _defence_table(n: int, m: int, clones: int) -> dict[str, tuple[str, dict[str, Any]]]:
    f = max(m, 1)
    beta = min(0.45, max(f / n, 0.1))
    return {
        "fedavg": ("fedavg", {}),
        "median": ("median", {}),
        "trimmed-mean": ("trimmed-mean", {"beta": beta}),
        "krum": ("krum", {"f": f}),
        "multi-krum": ("multi-krum", {"f": f, "m": max(1, n - f)}),
        "bulyan": ("bulyan", {"f": f}),
        "centered-clipping": ("centered-clipping", {"tau": 1.0}),
        "fltrust": ("fltrust", {}),
        "dnc": ("dnc", {"f": f}),
        "signguard": ("signguard", {}),
        "flame": ("flame", {}),
        "clone-audit": ("clone-audit", {"clones": clones}),
        # the audit as it was before its update-space signals: what they add
        "clone-audit-utility": ("clone-audit", {"clones": clones, "signals": []}),
        "clone-audit+trimmed-mean": (
            "clone-audit",
            {"clones": clones, "base": "trimmed-mean", "base_settings": {"beta": beta}},
        ),
    }


def attack_settings(attack: str | None, n: int, m: int) -> dict[str, Any]:
    if attack == "alie":
        return {"n": n, "m": max(m, 1)}
    if attack == "scaling":
        return {"factor": float(n)}
    if attack == "fang-krum":  # Krum's f: the attackers assume the server's is m
        return {"f": max(m, 1)}
    return {}


def partition_name(alpha: float | None) -> str:
    """How a run's record names its partition: ``iid``, or ``dirichlet-ALPHA`` (``:g``,
    six digits: 0.5 and 0.5000001 are one name)."""
    return "iid" if alpha is None else f"dirichlet-{alpha:g}"


def key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """What names a run within a grid (its cell, defence and seed)."""
    return (row["task"], row["partition"], float(row["malicious"]), row["attack"],
            row["defence"], int(row["seed"]))  # fmt: skip


@dataclass
class Run:
    scenario: Scenario
    label: str
    defence_label: str
    outcome: Outcome | None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        s = self.scenario
        row: dict[str, Any] = {
            "task": s.task,
            "partition": partition_name(s.dirichlet),
            "malicious": s.malicious,
            "attack": s.attack or "none",
            "defence": self.defence_label,
            "seed": s.seed,
            "error": self.error or "",
        }
        if self.outcome is not None:
            rounds = self.outcome.rounds
            final = rounds[-1]
            if "test_accuracy" in final:  # a regression has none
                row["accuracy"] = final["test_accuracy"]
            row["backdoor_success"] = final.get("backdoor_success", "")
            row["tpr"] = final.get("true_positive_rate", "")
            row["fpr_mean"] = _mean([r.get("false_positive_rate") for r in rounds])
            row["aggregate_s"] = _mean([r.get("aggregate_seconds") for r in rounds])
            row["audit_ratio"] = _mean([r.get("audit_ratio") for r in rounds])
            row["audit_round_ratio"] = _mean([r.get("audit_round_ratio") for r in rounds])
            row["diverged_round"] = next((r["round"] for r in rounds if r.get("diverged")), "")
            row["seconds"] = round(self.outcome.seconds, 2)
        return row

    def record(self) -> dict[str, Any]:
        """The row and every round: one line of ``runs*.jsonl``."""
        return {**self.row(), "rounds": self.outcome.rounds if self.outcome else []}


def run_record(label: str, s: Scenario, data: DataCache) -> dict[str, Any]:
    """One run of a grid, as its record: every engine (this process, ``--workers``,
    ``--ray``) runs a scenario through this, so their records agree. A precondition
    the setting cannot meet (:class:`FlError`) is the run's result, not a failure."""
    try:
        outcome, error = simulate(s, data), None
    except FlError as exc:
        outcome, error = None, str(exc)
    return Run(s, s.label(), label, outcome, error).record()


def _mean(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float)]
    return statistics.fmean(numbers) if numbers else ""


@dataclass
class Evaluation:
    """A grid's runs, as records (:meth:`Run.record`): those of this process and
    any loaded from earlier or parallel runs of the same grid."""

    grid: Grid
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def pending(self, shard: tuple[int, int] = (0, 1)) -> list[tuple[str, Scenario]]:
        """The grid's runs in shard ``k`` of ``n`` that have no record yet."""
        k, n = shard
        done = {key(r) for r in self.records}
        todo = []
        for i, (label, s) in enumerate(self.grid.scenarios()):
            if i % n == k and key(Run(s, s.label(), label, None).row()) not in done:
                todo.append((label, s))
        return todo

    def run(
        self,
        progress: Callable[[int, int, str], None] = lambda i, n, label: None,
        sink: Callable[[dict[str, Any]], None] = lambda record: None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        """Every pending scenario of ``shard`` in turn; ``sink`` gets each finished
        run's record (a grid that is stopped early loses nothing but the run under way)."""
        data = DataCache()
        scenarios = self.pending(shard)
        began = time.perf_counter()
        for i, (label, s) in enumerate(scenarios):
            progress(i, len(scenarios), f"{s.label()} ({label})")
            self.records.append(run_record(label, s, data))
            sink(self.records[-1])
        self.seconds += time.perf_counter() - began

    def rows(self) -> list[dict[str, Any]]:
        """One row per run of the grid (the newest record of each), with the gap to
        clean FedAvg of the same task, partition and seed, and for the audit the
        number of rounds its guard committed the best clone (``fallbacks``)."""
        wanted = {key(Run(s, s.label(), d, None).row()) for d, s in self.grid.scenarios()}
        newest = {key(r): r for r in self.records if key(r) in wanted}
        rows = []
        for record in newest.values():
            row = {k: v for k, v in record.items() if k != "rounds"}
            rounds = record.get("rounds", [])
            if any("fell_back" in x for x in rounds):
                row["fallbacks"] = sum(1 for x in rounds if x.get("fell_back"))
            rows.append(row)
        clean = {
            (r["task"], r["partition"], r["seed"]): r["accuracy"]
            for r in rows
            if r["defence"] == "fedavg" and r["attack"] == "none" and "accuracy" in r
        }
        for r in rows:
            base = clean.get((r["task"], r["partition"], r["seed"]))
            if "accuracy" in r and base is not None:
                r["gap_to_clean_fedavg"] = r["accuracy"] - base
        return rows
