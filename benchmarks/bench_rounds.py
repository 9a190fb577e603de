"""Round time of a secure federation against the same workload in --insecure mode, as a
ratio in one run (target: secure / insecure <= 1.05).

Run: ``.venv/bin/python benchmarks/bench_rounds.py [--task digits] [--clients 4]
[--rounds 8] [--epochs 20] [--samples N] [--repeat 2] [--keep]``.

Method. ``secfl.demo.federation.Federation`` sets up a whole federation in a temporary
folder: a simulated TEE root, an SPM (``secfl spm serve``), the task's data split
into ``--clients`` shards, code and data shielded, a policy signed by two of three
board members. Then two runs of the same workload, one after the other:

* secure: the aggregator and the collaborators each started by ``secfl run`` in the
  simulated TEE (attestation to the SPM, SPM-issued certificates, shielded volumes),
  mutual TLS, signed global models, a sealed checkpoint and an SPM counter increment
  every round, the revocation list fetched from the SPM before every round;
* insecure: ``Federation.start_insecure`` - the same task, the same plaintext shards
  and the same ``federation`` settings from the same policy file, with ``secfl
  aggregator --insecure`` and ``secfl collaborator --insecure`` (plaintext gRPC, no
  SPM, no TEE, no checkpoints, unsigned models).

The figure compared is the aggregator's ``duration_s`` of each round (from the first
global model sent to the round committed: the collaborators' training, the uploads,
aggregation, evaluation on the validation and test shards, the commit). Round 1 is
left out: it includes start-up effects (each collaborator's first training warms up
torch, lazy imports and cold caches: several seconds, against tenths later), so the
median and the mean are over rounds 2..R. ``--epochs`` (default 20) makes a round do
real work (0.3 to 0.5 s of training on digits on 2 cores), as a federation's rounds
do; with tiny rounds the ratio measures only fixed per-round costs. As a cross-check
the bench also times each round from the outside, from one round's metrics line to
the next (polled every 10 ms: "commit to commit"), which also counts what the
aggregator does between rounds, outside ``duration_s`` (in secure mode: fetching the
revocation list from the SPM, checking whether its certificate is due for renewal).
In secure mode the commit (sealed checkpoint, SPM counter) overlaps the next round's
start (:mod:`secfl.fl._commit`), so ``duration_s`` there ends when the round is
handed to the commit and the commit's time shows only in commit to commit: the
figure to compare for tiny rounds (``--epochs 2``: rounds of tens of milliseconds,
where only the fixed per-round costs count).

Each round's phases (``phases_ms`` in the metrics, :mod:`secfl.fl._aggregator`) are
printed as medians over rounds 2..R, per pair and pooled: ``start`` (signing the
model, refreshing, sampling), ``dispatch`` (until the last model was sent), the
slowest collaborator's ``train`` (model sent to its update's first piece), ``upload``,
``fold``, ``collect`` (round open to closed), ``aggregate``, ``evaluate``, and the
commit's ``checkpoint`` (sealed and fsynced), ``counter`` (the SPM's counter read and
incremented), ``commit`` (both) and ``commit_wait`` (how long the round loop waited
for it; overlapped, the collaborators are training meanwhile).

Also printed, separately because it is paid once: each run's whole wall time from
starting the aggregator to its exit 0 (process start, imports, attestation and
certificate issuance for every workload, joining, every round, writing the final
model), and that time minus the sum of its rounds (the part outside the rounds). The
set-up (SPM start, data split and shielding, policy submission) is timed on its own
and is not part of either run. For context, the median latency of two read-only
calls to the SPM's API (what the per-round counter increment and revocation fetch
cost at least).

A collaborator that is still running 5 s after its aggregator exited is reported by
name and killed, so that it cannot load the next run.

``--repeat`` (default 2) runs the pair that many times, each time with a fresh
federation (a finished secure federation cannot train again: its counter moved on)
and the order alternated (secure first, then insecure first, ...) so that neither
mode always runs on a warmer or quieter machine; the figures are pooled over the
pairs. Both modes run the same processes on the same cores, one mode at a time; on
a shared 2-core machine other load makes single pairs swing by tens of percent, so
read the pooled ratio, the per-pair ratios and the ratio of the fastest rounds (the
least disturbed) together. With the defaults it runs for a little over a minute. It
prints figures and asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secfl.demo._policy import POLICY
from secfl.demo._processes import Workload
from secfl.demo.federation import DemoSettings, Federation
from secfl.demo.report import read_metrics
from secfl.spm.client import SpmClient

TIMEOUT = 900.0


@dataclass
class Run:
    """One mode's run: its rounds' ``duration_s``, when each round's metrics line
    appeared, and its wall time."""

    mode: str
    durations: list[float]
    committed: list[float]
    wall: float
    #: Collaborators still running ``reap``'s grace after the aggregator exited.
    stragglers: list[str]
    #: Each round's ``phases_ms`` (empty for an aggregator that records none).
    phases: list[dict[str, float]]

    @property
    def steady(self) -> list[float]:
        """Rounds 2..R (round 1 includes start-up effects)."""
        return self.durations[1:] or self.durations

    @property
    def periods(self) -> list[float]:
        """Rounds 2..R measured from one round's metrics line to the next: the round
        plus whatever the aggregator does between rounds (outside ``duration_s``)."""
        return [b - a for a, b in zip(self.committed, self.committed[1:], strict=False)]

    @property
    def one_off(self) -> float:
        return self.wall - sum(self.durations)


def wait_exit(fed: Federation, agg: Workload, metrics: Path, what: str) -> list[float]:
    """Wait until ``agg`` exits 0 (any genuine workload failing, or a timeout, raises);
    returns when (perf_counter) each line of ``metrics`` appeared, polled every 10 ms."""
    deadline = time.monotonic() + TIMEOUT
    seen: list[float] = []
    while agg.proc.poll() is None:
        failed = fed.failed()
        if failed is not None:
            raise RuntimeError(f"{what}: {failed.name} failed:\n{failed.tail(20)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not finished after {TIMEOUT:.0f} s:\n{agg.tail(20)}")
        lines = metrics.read_bytes().count(b"\n") if metrics.exists() else 0
        seen += [time.perf_counter()] * (lines - len(seen))
        time.sleep(0.01)
    if agg.proc.returncode != 0:
        raise RuntimeError(f"{what}: the aggregator exited {agg.proc.returncode}:\n{agg.tail(20)}")
    return seen


def reap(fed: Federation, names: list[str], grace: float = 5.0) -> list[str]:
    """Give the collaborators ``names`` ``grace`` seconds to exit after their aggregator
    did, then kill those still running (so they cannot load the next run); returns
    the names killed."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(fed.workloads[n].proc.poll() is None for n in names):
        time.sleep(0.05)
    left = [n for n in names if fed.workloads[n].proc.poll() is None]
    for name in left:
        fed.kill(name)
    return left


def phases(entries: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [dict(e.get("phases_ms") or {}) for e in entries]


def phase_line(runs: list[Run]) -> str:
    """Median milliseconds of each phase over rounds 2..R of ``runs``."""
    rows = [p for run in runs for p in (run.phases[1:] or run.phases)]
    names = list(dict.fromkeys(k for row in rows for k in row))
    return (
        ", ".join(f"{k} {statistics.median(row[k] for row in rows if k in row):.1f}" for k in names)
        or "-"
    )


def durations(entries: list[dict[str, Any]], rounds: int, what: str) -> list[float]:
    got = [e["round"] for e in entries]
    if got != list(range(1, rounds + 1)):
        raise RuntimeError(f"{what}: rounds {got} in the metrics, expected 1..{rounds}")
    return [float(e["duration_s"]) for e in entries]


def run_secure(fed: Federation, rounds: int) -> Run:
    began = time.perf_counter()
    fed.start_aggregator()  # waits until it listens: attested, certificate issued
    fed.start_collaborators()
    seen = wait_exit(fed, fed.workloads["aggregator"], fed.metrics, "secure")
    wall = time.perf_counter() - began
    left = reap(fed, fed.sites)
    entries = fed.rounds()
    return Run("secure", durations(entries, rounds, "secure"), seen, wall, left, phases(entries))


def run_insecure(fed: Federation, rounds: int) -> Run:
    out = fed.work / "insecure"
    metrics = out / "metrics.jsonl"
    began = time.perf_counter()
    agg = fed.start_insecure(out)
    seen = wait_exit(fed, agg, metrics, "insecure")
    wall = time.perf_counter() - began
    left = reap(fed, [f"insecure-{site}" for site in fed.sites])
    entries = read_metrics(metrics)
    return Run(
        "insecure", durations(entries, rounds, "insecure"), seen, wall, left, phases(entries)
    )


def spm_latency(fed: Federation, calls: int = 20) -> dict[str, float]:
    """Median milliseconds of two read-only SPM calls over its TLS API (context for the
    per-round counter increment and revocation refresh of the secure mode)."""
    out: dict[str, float] = {}
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        client.counter(POLICY, "rounds")  # connection set up, not timed
        for name, call in (
            ("counter", lambda: client.counter(POLICY, "rounds")),
            ("revocations", lambda: client.revocations(POLICY)),
        ):
            times = []
            for _ in range(calls):
                began = time.perf_counter()
                call()
                times.append(time.perf_counter() - began)
            out[name] = statistics.median(times) * 1e3
    return out


@dataclass
class Pair:
    secure: Run
    insecure: Run
    setup: float
    spm_ms: dict[str, float]


def one_pair(work: Path, settings: DemoSettings, secure_first: bool) -> Pair:
    """Set up a federation in ``work`` and run both modes on it."""
    fed = Federation(work, settings)
    try:
        began = time.perf_counter()
        fed.start_spm()
        fed.prepare_data()
        fed.submit_policy()
        setup = time.perf_counter() - began
        if secure_first:
            secure = run_secure(fed, settings.rounds)
            insecure = run_insecure(fed, settings.rounds)
        else:
            insecure = run_insecure(fed, settings.rounds)
            secure = run_secure(fed, settings.rounds)
        return Pair(secure, insecure, setup, spm_latency(fed))
    finally:
        fed.stop()


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.3f} s, mean {statistics.mean(values):.3f} s"


def ratios(secure: list[float], insecure: list[float]) -> str:
    if not secure or not insecure:
        return "-"
    med = statistics.median(secure) / statistics.median(insecure)
    mean = statistics.mean(secure) / statistics.mean(insecure)
    return f"median {med:.3f}, mean {mean:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20, help="local epochs per round")
    parser.add_argument("--samples", type=int, default=None, help="default: the whole dataset")
    parser.add_argument("--repeat", type=int, default=2, help="pairs of runs, order alternated")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 is left out)")
    settings = DemoSettings(
        task=args.task,
        clients=args.clients,
        rounds=args.rounds,
        epochs=args.epochs,
        samples=args.samples,
        tampered=False,
    )
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"task {args.task}, {args.clients} collaborators, {args.rounds} rounds, "
        f"{args.epochs} local epochs, samples {args.samples or 'all'}, {args.repeat} pair(s); "
        f"round figures over rounds 2..{args.rounds} (round 1 includes start-up)"
    )
    root = Path(tempfile.mkdtemp(prefix="secfl-bench-rounds-"))
    pairs: list[Pair] = []
    try:
        for i in range(args.repeat):
            secure_first = i % 2 == 0
            pair = one_pair(root / f"run-{i + 1}", settings, secure_first)
            pairs.append(pair)
            order = "secure first" if secure_first else "insecure first"
            print(f"\npair {i + 1} ({order}; set-up: SPM, data, policy {pair.setup:.1f} s)")
            for run in (pair.secure, pair.insecure):
                print(
                    f"  {run.mode:<8} duration_s per round: {fmt(run.durations)}\n"
                    f"  {'':<8} rounds 2..R: {summary(run.steady)}; commit to commit: "
                    f"{summary(run.periods)}\n"
                    f"  {'':<8} wall {run.wall:.1f} s, of which outside the rounds "
                    f"{run.one_off:.1f} s"
                )
                print(f"  {'':<8} phases (median ms): {phase_line([run])}")
                if run.stragglers:
                    print(
                        f"  {'':<8} still running 5 s after the aggregator exited (never told "
                        f"'done'; killed): {', '.join(run.stragglers)}"
                    )
            print(
                f"  ratio secure/insecure, duration_s: "
                f"{ratios(pair.secure.steady, pair.insecure.steady)}; commit to commit: "
                f"{ratios(pair.secure.periods, pair.insecure.periods)}"
            )
            print(
                "  SPM API latency (median of 20 read-only calls): "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in pair.spm_ms.items())
            )
    finally:
        if args.keep:
            print(f"\nwork folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    secure = [d for p in pairs for d in p.secure.steady]
    insecure = [d for p in pairs for d in p.insecure.steady]
    secure_period = [d for p in pairs for d in p.secure.periods]
    insecure_period = [d for p in pairs for d in p.insecure.periods]
    print(f"\nall {len(pairs)} pair(s), rounds 2..{args.rounds}:")
    for mode, values, periods in (
        ("secure", secure, secure_period),
        ("insecure", insecure, insecure_period),
    ):
        print(
            f"  {mode:<8} duration_s {summary(values)} (min {min(values):.3f} s, "
            f"max {max(values):.3f} s); commit to commit {summary(periods)}"
        )
    for mode in ("secure", "insecure"):
        runs = [getattr(p, mode) for p in pairs]
        print(f"  {mode:<8} phases (median ms over rounds 2..R): {phase_line(runs)}")
    wall_s = statistics.mean(p.secure.wall for p in pairs)
    wall_i = statistics.mean(p.insecure.wall for p in pairs)
    print(
        f"  whole run, from starting the aggregator to its exit (process start, attestation, "
        f"joining, all rounds, final model; one-off costs): secure {wall_s:.1f} s, "
        f"insecure {wall_i:.1f} s (+{wall_s - wall_i:.1f} s, ratio {wall_s / wall_i:.2f})"
    )
    print(f"  commit to commit secure/insecure: {ratios(secure_period, insecure_period)}")
    each = [
        statistics.median(p.secure.steady) / statistics.median(p.insecure.steady) for p in pairs
    ]
    print(f"  per pair, median duration_s secure/insecure: {fmt(each)}")
    print(
        f"  fastest round (least disturbed by other load) secure/insecure: "
        f"{min(secure) / min(insecure):.3f}"
    )
    print(f"   duration_s secure/insecure: {ratios(secure, insecure)}")
    print(
        f"=> round time (commit to commit) secure/insecure: "
        f"{ratios(secure_period, insecure_period)} (target <= 1.05)"
    )


if __name__ == "__main__":
    main()
