"""``secfl bench rounds``: a real federation on loopback, timed round by round.

The machinery of ``benchmarks/bench_rounds.py``, with a model of a chosen size:
:class:`secfl.demo.federation.Federation` sets up a simulated TEE root, an SPM, the
digits data split into one shard per collaborator, code and data shielded, and a
policy signed by two of three board members. The task is digits with an MLP ``64 ->
H -> 10`` whose hidden width ``H`` gives about ``model_params`` float32 parameters
(``75 H + 10``), so a round moves a model of that size and trains on real data, a
little (``epochs`` over a shard of ``samples / clients`` rows).

- secure: the aggregator and the collaborators each under ``secfl run`` (attested,
  SPM-issued certificates, shielded volumes), mutual TLS, signed global models, a
  sealed checkpoint and an SPM counter increment every round;
- insecure: the same task, shards and settings with ``--insecure`` (plaintext gRPC,
  no SPM, no TEE, no checkpoints, unsigned models).

Inside a VM-based TEE (TDX, SEV-SNP) every process runs in the guest, so the run
pays the TEE's costs (memory encryption, exits) wherever they fall; the launcher
attests with the simulated platform, once, before the first round, outside the
figures. Two figures per mode: the median of the aggregator's ``duration_s`` over
rounds 2..R (a round's own time), and the time per round from round 1's metrics line
to round R's, polled every 2 ms (``cycle_s``: the whole cycle, work the aggregator
overlaps with the next round included; the coefficients' ``T``).
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from secfl import __version__
from secfl._internal import files
from secfl.errors import DemoError
from secfl.eval.bench import BenchResult, Host, ModeResult, Workload, detect_tee, phase_medians

__all__ = ["BenchSettings", "hidden_width", "reap", "run_bench", "task_source", "wait_metrics"]

TIMEOUT = 1800.0

TASK_SOURCE = '''"""secfl bench: the digits data, an MLP 64 -> {hidden} -> 10 ({params} params)."""

from torch import nn

from secfl.tasks._digits import DigitsTask


class BenchTask(DigitsTask):
    def _network(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, {hidden}), nn.ReLU(), nn.Linear({hidden}, 10))


TASK = BenchTask()
name = TASK.name
build_model = TASK.build_model
load_data = TASK.load_data
train = TASK.train
evaluate = TASK.evaluate
'''


def hidden_width(params: int) -> int:
    """The hidden width whose MLP ``64 -> H -> 10`` is closest to ``params`` (>= 1)."""
    return max(1, round((params - 10) / 75))


def task_source(params: int) -> tuple[str, int]:
    """The bench task's ``task.py`` and its exact parameter count."""
    hidden = hidden_width(params)
    exact = 75 * hidden + 10
    return TASK_SOURCE.format(hidden=hidden, params=exact), exact


@dataclass(frozen=True)
class BenchSettings:
    model_params: int
    clients: int
    rounds: int = 5
    epochs: int = 1
    samples: int | None = None
    modes: tuple[str, ...] = ("secure", "insecure")

    @property
    def total_samples(self) -> int:
        """Rows of digits split among the collaborators (and validation and test)."""
        return self.samples or max(200, 60 * self.clients)


def wait_metrics(fed: Any, agg: Any, metrics: Path, what: str) -> list[float]:
    """Wait for ``agg`` to exit 0; when (``perf_counter``) each metrics line appeared,
    polled every 2 ms."""
    deadline = time.monotonic() + TIMEOUT
    seen: list[float] = []
    while agg.proc.poll() is None:
        failed = fed.failed()
        if failed is not None:
            raise DemoError(f"bench: {what}: {failed.name} failed: {failed.tail()}")
        if time.monotonic() > deadline:
            raise DemoError(f"bench: {what}: not finished after {TIMEOUT:.0f} s")
        try:
            lines = metrics.read_bytes().count(b"\n")
        except FileNotFoundError:
            lines = 0
        seen += [time.perf_counter()] * (lines - len(seen))
        time.sleep(0.002)
    if agg.proc.returncode != 0:
        raise DemoError(f"bench: {what}: the aggregator exited {agg.proc.returncode}: {agg.tail()}")
    return seen


def reap(fed: Any, names: list[str], grace: float = 5.0) -> None:
    """Collaborators still running ``grace`` s after their aggregator exited are killed
    (so they cannot load the next run)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(fed.workloads[n].proc.poll() is None for n in names):
        time.sleep(0.05)
    for name in names:
        if fed.workloads[name].proc.poll() is None:
            fed.kill(name)


def _mode(fed: Any, mode: str, rounds: int) -> ModeResult:
    from secfl.demo.report import read_metrics

    began = time.perf_counter()
    if mode == "secure":
        fed.start_aggregator()
        fed.start_collaborators()
        agg, metrics, names = fed.workloads["aggregator"], fed.metrics, list(fed.sites)
    else:
        out = fed.work / "insecure"
        agg = fed.start_insecure(out)
        metrics, names = out / "metrics.jsonl", [f"insecure-{s}" for s in fed.sites]
    seen = wait_metrics(fed, agg, metrics, mode)
    wall = time.perf_counter() - began
    reap(fed, names)
    entries = read_metrics(metrics)
    if [e.get("round") for e in entries] != list(range(1, rounds + 1)) or len(seen) != rounds:
        raise DemoError(f"bench: {mode}: the metrics hold rounds other than 1..{rounds}")
    durations = [float(e["duration_s"]) for e in entries]
    return ModeResult(
        rounds_s=durations,
        median_s=max(statistics.median(durations[1:]), 1e-6),
        cycle_s=max((seen[-1] - seen[0]) / (rounds - 1), 1e-6),
        phases_ms=phase_medians(entries),
        wall_s=wall,
    )


def run_bench(
    s: BenchSettings, work: Path | None = None, say: Callable[[str], None] = lambda _: None
) -> BenchResult:
    """Set up one federation and run each of ``s.modes`` on it, in that order."""
    from secfl.demo.federation import DemoSettings, Federation

    source, exact = task_source(s.model_params)
    # in RAM where there is /dev/shm: the federation stages its data in the clear
    with tempfile.TemporaryDirectory(prefix="secfl-bench-", dir=files.ram_base()) as tmp:
        root = Path(work) if work is not None else Path(tmp)
        code = root / "task-code"
        code.mkdir(parents=True, exist_ok=True)
        (code / "task.py").write_text(source)
        demo = DemoSettings(
            task="digits", clients=s.clients, rounds=s.rounds, samples=s.total_samples,
            epochs=s.epochs, tampered=False, code=code, round_timeout=TIMEOUT,
        )  # fmt: skip
        fed = Federation(root / "federation", demo)
        runs: dict[str, ModeResult] = {}
        try:
            began = time.perf_counter()
            say("setting up: simulated TEE root, SPM, data shards, shielded volumes, policy")
            fed.start_spm()
            fed.prepare_data()
            fed.submit_policy()
            say(f"set up in {time.perf_counter() - began:.1f} s")
            for mode in s.modes:
                say(f"running {mode}: {s.clients} collaborators, {s.rounds} rounds")
                runs[mode] = _mode(fed, mode, s.rounds)
        finally:
            fed.stop()
    return BenchResult.model_validate(
        {
            "format": "secfl-bench-rounds/1",
            "secfl": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": Host(
                machine=platform.machine(),
                python=platform.python_version(),
                cpus=_cpus(),
                tee=detect_tee(),
            ),
            "workload": Workload(
                model_params=exact,
                clients=s.clients,
                rounds=s.rounds,
                epochs=s.epochs,
                samples=s.total_samples,
            ),
            "runs": runs,
        },
        strict=False,
    )


def _cpus() -> int:
    import os

    return max(1, os.cpu_count() or 1)
