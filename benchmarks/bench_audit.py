"""The clone-and-sample audit's cost against the plain round, and how its settings
trade detection for cost.

Run: ``.venv/bin/python benchmarks/bench_audit.py [--tasks digits,fashion-mnist]
[--samples 12000] [--epochs 2] [--rounds 6] [--seeds 2] [--quick] [--no-sweep]``.

Method. Everything runs through ``secfl.eval.simulation.simulate``: the production
tasks, training, aggregation rules and audit, 20 sites, one process, one torch
thread. The plain round is what a real round costs the federation without the
audit: the slowest site's local training (sites train side by side) plus the base
rule's aggregation; the audit's extra time is ``CloneAudit``'s own (``clones``
aggregations of a ``fraction`` of the updates, each scored on the aggregator's
validation data). Figures are medians over rounds and seeds.

1. Cost: per task, at the evaluation's target budget (digits MLP 5 local epochs;
   Fashion-MNIST CNN ``--epochs`` 2 local epochs on a ``--samples`` 12000 subset;
   Dirichlet 0.5 label skew, no attacker): plain round seconds, audit seconds, and
   **audit / plain round**, the ratio the audit's cost target (<= 1.5x) is about;
   once with the audit's defaults (a validation subsample settled by the stopping
   rule, at most ``validation_cap`` 384 rows; digits' 179 validation examples are
   under twice the first sample and are scored whole; the update-space detection
   signals included) and once scoring every clone on the whole validation set
   (``validation_sample: null``, the audit's first way; both build clones by one
   matrix product), in the same process so that both see the same load.
2. Sweep (digits, Dirichlet 0.5, 20% attackers, sign flip and scaling): clones x
   fraction, each with true-positive rate in the last round, mean false-positive
   rate over rounds, and the audit's extra seconds per round.

The machine has two cores and other work may run; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

import torch

from secfl.eval.grid import Grid
from secfl.eval.simulation import DataCache, Scenario, simulate


def _grid(task: str, rounds: int, samples: int | None, epochs: int = 1) -> Grid:
    return Grid(tasks=[task], clients=20, partitions=[0.5], malicious=[0.0], attacks=[],
                defences=[], seeds=[0], rounds=rounds, epochs=5 if task == "digits" else epochs,
                samples=None if task == "digits" else samples)  # fmt: skip


def cost(task: str, rounds: int, seeds: int, samples: int | None, epochs: int,
         data: DataCache) -> None:  # fmt: skip
    grid = _grid(task, rounds, samples, epochs)
    for label, sample in (("default", "default"), ("whole set", None)):
        plain, audit, ratio = [], [], []
        for seed in range(seeds):
            s = grid.scenario(task, 0.5, seed, 0.0, None, "clone-audit")
            if sample is None:
                s = replace(s, defence_settings={**s.defence_settings, "validation_sample": None})
            for r in simulate(s, data).rounds[1:]:  # round 1 pays for imports and warm-up
                plain.append(r["train_seconds_max"] + r["aggregate_seconds"] - r["audit_seconds"])
                audit.append(r["audit_seconds"])
                ratio.append(r["audit_round_ratio"])
        p, a, q = (statistics.median(x) for x in (plain, audit, ratio))
        print(f"{task:14s} {label:9s}  plain round {p:6.3f} s  audit {a:6.3f} s  "
              f"audit / plain round {q:5.2f}x (median of {len(ratio)} rounds)",
              flush=True)  # fmt: skip


def sweep(rounds: int, seeds: int, data: DataCache, clones: list[int],
          fractions: list[float]) -> None:  # fmt: skip
    grid = _grid("digits", rounds, None)
    print(f"{'attack':10s} {'clones':>6s} {'fraction':>8s} {'TPR last':>8s} "
          f"{'FPR mean':>8s} {'audit s/round':>13s}")  # fmt: skip
    for attack in ("sign-flip", "scaling"):
        for k in clones:
            for p in fractions:
                tpr, fpr, secs = [], [], []
                for seed in range(seeds):
                    s: Scenario = grid.scenario("digits", 0.5, seed, 0.2, attack, "clone-audit")
                    s = replace(s, defence_settings={"clones": k, "fraction": p})
                    out = simulate(s, data)
                    tpr.append(out.final["true_positive_rate"])
                    fpr += [r["false_positive_rate"] for r in out.rounds]
                    secs += [r["audit_seconds"] for r in out.rounds]
                print(f"{attack:10s} {k:6d} {p:8.2f} {statistics.fmean(tpr):8.2f} "
                      f"{statistics.fmean(fpr):8.3f} {statistics.median(secs):13.3f}",
                      flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="digits,fashion-mnist")
    ap.add_argument("--samples", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=2, help="Fashion-MNIST local epochs")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="digits only, 3 rounds, 1 seed")
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tasks = ["digits"] if args.quick else args.tasks.split(",")
    rounds, seeds = (3, 1) if args.quick else (args.rounds, args.seeds)
    data = DataCache()
    print("1. audit cost (20 sites, Dirichlet 0.5, 30 clones, fraction 0.25; target <= 1.5x)")
    for task in tasks:
        cost(task, rounds, seeds, args.samples, args.epochs, data)
    if not args.no_sweep:
        print("\n2. settings sweep (digits, Dirichlet 0.5, 20% attackers)")
        if args.quick:
            sweep(rounds, seeds, data, [10, 30], [0.25])
        else:
            sweep(10, seeds, data, [10, 30, 60], [0.15, 0.25, 0.5])


if __name__ == "__main__":
    main()
