"""secfl against Flower 1.41 on an identical workload: round time, secure and insecure,
against Flower plain and with TLS (targets: secfl secure / Flower TLS <= 1.0, secfl
insecure / Flower <= 0.9).

Run: ``.venv/bin/python benchmarks/bench_vs_flower.py [--clients 4] [--rounds 10]
[--repeat 3] [--params 10000000] [--only digits|large] [--quick] [--keep DIR]``
(Flower from ``.venv-flwr``: ``bash scripts/flwr-venv.sh``).

Workloads. (a) ``digits``: the demo's workload, scikit-learn's digits and the
built-in MLP 64 -> 64 -> 10 (4,810 parameters), 2 local epochs, all 1,797 rows;
(b) ``large``: the same data (``--large-samples`` rows, 400 by default) and an MLP
64 -> H -> 10 of about ``--params`` parameters (10M: H = 133,333), 1 local epoch:
the task ``secfl bench rounds`` uses (``secfl.eval.bench_run.task_source``).

Four configurations per workload, interleaved (their order rotated each repeat,
``--repeat`` times, default 3), each a fresh set of processes on loopback:

- secfl secure: ``secfl.demo.federation.Federation`` (simulated TEE root, SPM,
  shielded volumes, 2-of-3 policy), aggregator and collaborators each under ``secfl
  run``: attestation, mutual TLS with SPM-issued certificates, signed models, a
  sealed checkpoint and an SPM counter increment every round; a fresh federation
  per repeat (a finished secure run cannot train again);
- secfl insecure: the same federation's ``start_insecure`` (plaintext gRPC);
- Flower TLS and Flower plain: Flower 1.41's gRPC server and clients
  (``flwr.server.start_server`` and ``flwr.client.start_client``, one process each;
  the long-running SuperLink/SuperNode deployment polls every few seconds, see
  ``bench_flower.py``, and would measure its polling, not its rounds), TLS with a
  server certificate from a local CA (Flower's TLS authenticates the server only;
  secfl's is mutual).

How the workload is kept identical. The task code is written once into a folder
(``task.py``); secfl shields that folder as the task volume (``DemoSettings.code``)
and the Flower processes import the very same file, so both run the same model
class, ``build_model``, ``train`` (the task's deterministic SGD, its batch size and
learning rate defaults, the same ``epochs`` from the same config key) and
``evaluate``. The data is the federation's own split (seed 0): every collaborator's
shard, the validation and the test shard are read with ``task.load_data`` in this
process and handed to the Flower processes as ``.npz`` of exactly those tensors
(client i of Flower trains on secfl's site-i shard). The global model starts from
``build_model(seed)`` in both; each client trains with the seed secfl would give
that site in that round (``FederationConfig.seed_for``: the same batches); FedAvg
weighs by sample count in both; every round,
every client trains (fraction 1) and the server evaluates the new global model on the
validation and the test shards (secfl's aggregator always does; Flower's through the
strategy's ``evaluate_fn``), with no client-side evaluation. Same clients, same
rounds. As a check, it prints each configuration's validation loss after the last
round: the same to float rounding (secfl averages in float64, Flower in float32).

What is compared: the whole cycle of a round, on both sides. Flower: the time
between two calls of ``evaluate_fn`` (the end of one round to the end of the next:
sending the model, training, uploading, aggregating, evaluating). secfl: the time
between two rounds' metrics lines, polled every 2 ms ("commit to commit": it also
counts building and signing the next model, and the commit the aggregator overlaps
with the next round). secfl's ``duration_s`` (from the first global model sent to the
round's commit handed over) is printed beside it, and its ratio too. Round 1 is left
out everywhere (start-up effects); per-round medians pooled over the repeats. It
prints figures and asserts nothing. On a shared 2-core machine single runs swing by
tens of percent: read the medians of the interleaved repeats. Each ratio is also
printed per repeat (that repeat's four runs were back to back, so the machine's speed
drifted least between them): how far those spread is how much one ratio can be trusted.

Where the time goes. For each secfl configuration it prints the aggregator's
per-phase medians (``phases_ms`` of the metrics: ``start`` signing and sampling,
``dispatch`` until the last model was sent, the slowest collaborator's ``train``
(model received, checked, loaded, trained, serialized), ``upload``, ``fold``,
``collect`` (round open to closed), ``aggregate``, ``evaluate``, and the overlapped
commit's ``checkpoint``, ``counter``, ``fsync``, ``commit`` and ``commit_wait``),
per repeat and pooled over the repeats; and for every configuration the CPU time
per round of all its processes, and the same split by process: the aggregator (or
Flower's server), the sites (collaborators or clients), the SPM and the `secfl run`
launchers (``/proc`` of this process's descendants, sampled every 25 ms, between the
end of round 1 and the end of round R, so within about 10 ms a process per window).
``--quick`` (one repeat, 4 rounds, 1M parameters for (b)) takes about 4 minutes on 2
cores, most of it starting processes; the defaults roughly 15 to 20.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from secfl.demo._processes import free_port
from secfl.demo._volumes import TASK_MODULE
from secfl.demo.federation import DemoSettings, Federation
from secfl.demo.report import read_metrics
from secfl.errors import DemoError
from secfl.eval.bench import phase_medians
from secfl.eval.bench_run import reap, task_source, wait_metrics
from secfl.flower._local import flower_python, tls_files

TIMEOUT = 1800.0
SEED = 0

#: Runs in .venv-flwr: ``python driver.py server|client ...`` (Flower's gRPC API).
DRIVER = r"""
import hashlib, importlib.util, json, sys, time
from pathlib import Path

import numpy as np
import torch

role, spec = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
module = importlib.util.spec_from_file_location("benchtask", spec["task"])
task = importlib.util.module_from_spec(module)
module.loader.exec_module(task)
from secfl.tasks._base import Dataset  # noqa: E402

import flwr as fl  # noqa: E402


def dataset(path):
    with np.load(path, allow_pickle=False) as z:
        return Dataset(torch.from_numpy(z["x"]), torch.from_numpy(z["y"]), {"task": task.name})


def arrays(model):
    return [v.detach().cpu().numpy() for v in model.state_dict().values()]


def load(model, params):
    keys = list(model.state_dict().keys())
    model.load_state_dict({k: torch.from_numpy(np.asarray(p)) for k, p in zip(keys, params)})


address = f"127.0.0.1:{spec['port']}"
tls = spec.get("tls")
if role == "server":
    model = task.build_model(spec["seed"])
    splits = [dataset(p) for p in spec["eval"]]
    stamps, losses = [], []

    def evaluate(server_round, params, config):
        load(model, params)
        metrics = {}
        for i, data in enumerate(splits):
            metrics.update({f"{i}_{k}": v for k, v in task.evaluate(model, data).items()})
        stamps.append(time.perf_counter())
        losses.append(float(metrics.get("0_loss", 0.0)))
        return losses[-1], metrics

    strategy = fl.server.strategy.FedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=spec["clients"],
        min_evaluate_clients=0, min_available_clients=spec["clients"],
        evaluate_fn=evaluate, on_fit_config_fn=lambda r: {"epochs": spec["epochs"], "round": r},
        initial_parameters=fl.common.ndarrays_to_parameters(arrays(model)),
    )
    certificates = None
    if tls:
        certificates = tuple(Path(tls[k]).read_bytes() for k in ("ca", "crt", "key"))
    fl.server.start_server(server_address=address, strategy=strategy,
                           config=fl.server.ServerConfig(num_rounds=spec["rounds"]),
                           certificates=certificates)
    Path(spec["out"]).write_text(json.dumps({"stamps": stamps, "losses": losses}))
else:
    data = dataset(spec["data"])
    model = task.build_model()

    class Client(fl.client.NumPyClient):
        def fit(self, parameters, config):
            load(model, parameters)
            # secfl's training seed of this site in this round (FederationConfig.seed_for)
            material = f"{spec['seed']}/{int(config['round'])}/{spec['name']}".encode()
            seed = int.from_bytes(hashlib.sha256(material).digest()[:7], "big")
            cfg = {"epochs": int(config["epochs"]), "seed": seed}
            metrics = task.train(model, data, cfg)
            return arrays(model), len(data), {"loss": float(metrics["loss"])}

    root = Path(tls["ca"]).read_bytes() if tls else None
    fl.client.start_client(server_address=address, client=Client().to_client(),
                           root_certificates=root, insecure=not tls)
"""


# --- the shared task and data ---------------------------------------------------------------


def task_folder(root: Path, workload: str, params: int) -> Path:
    """The task's code, shielded by secfl and imported by Flower: one file for both."""
    folder = root / f"task-{workload}"
    folder.mkdir(parents=True, exist_ok=True)
    text = TASK_MODULE.format(task="digits") if workload == "digits" else task_source(params)[0]
    (folder / "task.py").write_text(text)
    return folder


def export_shards(fed: Federation, code: Path, out: Path) -> dict[str, Path]:
    """Every shard of the federation's split as ``.npz`` of the tensors ``load_data``
    gives (what secfl trains and evaluates on), for the Flower processes."""
    import importlib.util

    from secfl.demo._volumes import shard_in

    spec = importlib.util.spec_from_file_location("benchtask_main", code / "task.py")
    assert spec is not None and spec.loader is not None
    task: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in [*fed.sites, "validation", "test"]:
        data = task.load_data(shard_in(fed.work / "plain" / name))
        paths[name] = out / f"{name}.npz"
        np.savez(paths[name], x=data.x.numpy(), y=data.y.numpy())
    return paths


# --- CPU time of this process's descendants ------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """(perf_counter, CPU seconds of every live descendant) every 25 ms, in a thread; the
    descendants are found again every 0.25 s (a scan of /proc)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        #: Cumulative CPU seconds per role (:func:`role`) at each sample.
        self.roles: list[dict[str, float]] = []
        self._role: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _stat(pid: str) -> tuple[int, float] | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK  # ppid, utime+stime

    def _descendants(self) -> list[str]:
        parent = {p: st[0] for p in os.listdir("/proc") if p.isdigit() and (st := self._stat(p))}
        mine, grew = {os.getpid()}, True
        while grew:
            new = {int(p) for p, pp in parent.items() if pp in mine} - mine
            mine |= new
            grew = bool(new)
        return [str(p) for p in mine - {os.getpid()}]

    def _run(self) -> None:
        pids: list[str] = []
        rescan = 0.0
        while not self._stop.wait(0.025):
            if time.perf_counter() >= rescan:
                pids, rescan = self._descendants(), time.perf_counter() + 0.25
            now, by = time.perf_counter(), dict.fromkeys(ROLES, 0.0)
            for p in pids:
                if st := self._stat(p):
                    if p not in self._role:
                        self._role[p] = role(p)
                    by[self._role[p]] += st[1]
            self.samples.append((now, sum(by.values())))
            self.roles.append(by)

    def between(self, start: float, end: float) -> float:
        """CPU seconds spent from ``start`` to ``end`` (perf_counter), interpolated."""
        at, cpu = [t for t, _ in self.samples], [c for _, c in self.samples]
        return float(np.interp(end, at, cpu) - np.interp(start, at, cpu))

    def by_role(self, start: float, end: float) -> dict[str, float]:
        """:meth:`between` per role (a process's CPU counts while it lives: one that
        ended inside the window loses its part, a few ms at most)."""
        at = [t for t, _ in self.samples]
        out = {}
        for name in ROLES:
            cpu = [r[name] for r in self.roles]
            out[name] = float(np.interp(end, at, cpu) - np.interp(start, at, cpu))
        return out


#: Whose CPU the breakdown names: the aggregator (or Flower's server), the sites, the
#: SPM, the `secfl run` launchers that start and watch the workloads, anything else.
ROLES = ("aggregator", "sites", "SPM", "launchers", "other")


def role(pid: str) -> str:
    """The role of process ``pid`` from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    words = [a.decode(errors="replace") for a in argv]
    joined = " ".join(words)
    if "spm" in words and "serve" in words:
        return "SPM"
    if "run" in words and "secfl" in joined:
        return "launchers"
    if "aggregator" in words or ("flower_driver.py" in joined and "server" in words):
        return "aggregator"
    if "collaborator" in words or ("flower_driver.py" in joined and "client" in words):
        return "sites"
    return "other"


# --- secfl ----------------------------------------------------------------------------------


def watch(fed: Federation, agg: Any, metrics: Path, what: str) -> list[float]:
    """``secfl.eval.bench_run.wait_metrics``, its refusal as the benchmark's exit."""
    try:
        return wait_metrics(fed, agg, metrics, what)
    except DemoError as exc:
        raise SystemExit(str(exc)) from None


def secfl_run(
    fed: Federation, mode: str, rounds: int
) -> tuple[list[float], list[float], list[dict[str, Any]], float, tuple[float, float]]:
    """(duration_s of rounds 2..R, commit-to-commit periods of rounds 2..R, the metrics
    entries (their per-phase timings), the final validation loss, and when (perf_counter)
    round 1's and round R's metrics lines appeared)."""
    if mode == "secure":
        fed.start_aggregator()
        fed.start_collaborators()
        agg, metrics, names = fed.workloads["aggregator"], fed.metrics, list(fed.sites)
    else:
        out = fed.work / "insecure"
        shutil.rmtree(out, ignore_errors=True)
        agg = fed.start_insecure(out)
        metrics, names = out / "metrics.jsonl", [f"insecure-{s}" for s in fed.sites]
    seen = watch(fed, agg, metrics, f"secfl {mode}")
    reap(fed, names)
    entries = read_metrics(metrics)
    if len(entries) != rounds or len(seen) != rounds:
        raise SystemExit(f"secfl {mode}: {len(entries)} rounds in the metrics, not {rounds}")
    durations = [float(e["duration_s"]) for e in entries]
    cycle = [b - a for a, b in itertools.pairwise(seen)]
    window = (seen[0], seen[-1])
    return durations[1:], cycle, entries, float(entries[-1]["val_loss"]), window


# --- Flower ---------------------------------------------------------------------------------


def flower_run(
    work: Path, driver: Path, code: Path, shards: dict[str, Path], settings: DemoSettings,
    tls: dict[str, Path] | None,
) -> tuple[list[float], float, tuple[float, float]]:  # fmt: skip
    """One Flower federation: round times of rounds 2..R (evaluate_fn to evaluate_fn),
    the final validation loss, and when (perf_counter) rounds 1 and R were evaluated."""
    import json

    python = flower_python()
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    common: dict[str, Any] = {
        "task": str(code / "task.py"), "port": port, "seed": SEED, "epochs": settings.epochs,
        "rounds": settings.rounds, "clients": settings.clients,
        "tls": {k: str(v) for k, v in tls.items()} if tls else None,
    }  # fmt: skip
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           "GRPC_VERBOSITY": "ERROR"}  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, role: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
        path = work / f"{name}.json"
        path.write_text(json.dumps({**common, **spec}))
        with open(work / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([str(python), str(driver), role, str(path)], stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=work)  # fmt: skip
        procs.append(proc)
        return proc

    out = work / "stamps.json"
    try:
        server = start("server", "server", {
            "eval": [str(shards["validation"]), str(shards["test"])], "out": str(out),
        })  # fmt: skip
        for i in range(settings.clients):
            site = f"site-{i + 1}"
            start(site, "client", {"data": str(shards[site]), "name": site})
        server.wait(TIMEOUT)
        if server.returncode != 0 or not out.exists():
            tail = (work / "server.log").read_text()[-2000:]
            raise SystemExit(f"Flower: the server exited {server.returncode}:\n{tail}")
        for proc in procs[1:]:
            proc.wait(60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    doc = json.loads(out.read_text())
    stamps = doc["stamps"]
    if len(stamps) != settings.rounds + 1:
        raise SystemExit(f"Flower: {len(stamps)} evaluations, not {settings.rounds + 1}")
    times = [b - a for a, b in itertools.pairwise(stamps)]
    return times[1:], float(doc["losses"][-1]), (stamps[1], stamps[-1])


# --- one workload ---------------------------------------------------------------------------

CONFIGS = ("secfl secure", "Flower TLS", "secfl insecure", "Flower plain")


def workload(root: Path, name: str, settings: DemoSettings, params: int, repeat: int) -> None:
    code = task_folder(root, name, params)
    driver = root / "flower_driver.py"
    driver.write_text(DRIVER)
    tls = tls_files(root / "tls", ["127.0.0.1", "localhost"])
    settings.code = code
    got: dict[str, list[float]] = {c: [] for c in CONFIGS}
    periods: dict[str, list[float]] = {c: [] for c in CONFIGS if c.startswith("secfl")}
    shards: dict[str, Path] = {}
    losses: dict[str, float] = {}
    pooled: dict[str, list[dict[str, Any]]] = {c: [{}] for c in periods}  # rounds 2..R
    cpu: dict[str, list[float]] = {c: [] for c in CONFIGS}  # CPU seconds per round
    roles: dict[str, list[dict[str, float]]] = {c: [] for c in CONFIGS}  # the same, by role
    #: Each repeat's median of the figure compared: its four runs were back to back.
    by_repeat: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for i in range(repeat):
        fed = Federation(root / f"{name}-{i}", settings)
        try:
            fed.start_spm()
            fed.prepare_data()
            fed.submit_policy()
            if not shards:
                shards = export_shards(fed, code, root / f"shards-{name}")
            order = CONFIGS[i % 4 :] + CONFIGS[: i % 4]
            for config in order:
                with CpuSampler() as sampler:
                    if config.startswith("secfl"):
                        mode = config.split()[1]
                        times, cycle, entries, losses[config], window = secfl_run(
                            fed, mode, settings.rounds
                        )
                        periods[config] += cycle
                        pooled[config] += entries[1:]
                        if phases := phase_medians(entries):
                            shown = ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
                            print(f"  repeat {i + 1} {config:<15} phases (ms, median): {shown}")
                    else:
                        use = tls if config == "Flower TLS" else None
                        work = root / f"{name}-{i}-{config.replace(' ', '-')}"
                        times, losses[config], window = flower_run(
                            work, driver, code, shards, settings, use
                        )
                cpu[config].append(sampler.between(*window) / (settings.rounds - 1))
                roles[config].append(
                    {k: v / (settings.rounds - 1) for k, v in sampler.by_role(*window).items()}
                )
                got[config] += times
                cycle_text = ""
                if config in periods:
                    last = statistics.median(periods[config][-len(times) :])
                    cycle_text = f", commit to commit {last:.4f} s"
                    by_repeat[config].append(last)
                else:
                    by_repeat[config].append(statistics.median(times))
                print(f"  repeat {i + 1} {config:<15} rounds 2..R median "
                      f"{statistics.median(times):.4f} s{cycle_text}, CPU "
                      f"{cpu[config][-1] * 1e3:.0f} ms a round", flush=True)  # fmt: skip
        finally:
            fed.stop()
    own = {c: statistics.median(v) for c, v in got.items()}
    # the figure compared: the whole cycle (Flower's evaluate to evaluate; secfl's commit
    # to commit); secfl's duration_s (a round's own time) printed beside it
    med = {c: statistics.median(periods[c]) if c in periods else own[c] for c in CONFIGS}
    print(f"\n  per-round medians over {repeat} repeat(s), rounds 2..{settings.rounds}:")
    for config in CONFIGS:
        extra = f" (duration_s {own[config]:.4f} s)" if config in periods else ""
        each = periods.get(config) or got[config]
        spread = f"{min(each):.4f}-{max(each):.4f}"
        print(f"    {config:<15} {med[config]:.4f} s{extra}, rounds {spread} s, CPU "
              f"{statistics.median(cpu[config]) * 1e3:.0f} ms a round (repeats: "
              + ", ".join(f"{c * 1e3:.0f}" for c in cpu[config]) + ")")  # fmt: skip
    print(f"\n  CPU a round by process (ms, median over {repeat} repeat(s)):")
    for config in CONFIGS:
        shown = ", ".join(
            f"{k} {statistics.median(r[k] for r in roles[config]) * 1e3:.1f}"
            for k in ROLES
            if any(r[k] for r in roles[config])
        )
        print(f"    {config:<15} {shown}")
    print(f"\n  per-phase medians (ms) over {repeat} repeat(s), rounds 2..{settings.rounds}:")
    for config, entries in pooled.items():
        shown = ", ".join(f"{k} {v:.1f}" for k, v in phase_medians(entries).items())
        print(f"    {config:<15} {shown}")

    def line(label: str, num: str, den: str, target: str) -> None:
        cross = f"; with duration_s {own[num] / med[den]:.3f}" if num in periods else ""
        pairs = zip(by_repeat[num], by_repeat[den], strict=True)
        paired = ", ".join(f"{a / b:.3f}" for a, b in pairs)
        print(f"  => {label:<30} {med[num] / med[den]:.3f}  (target {target}{cross}; "
              f"each repeat: {paired})")  # fmt: skip

    line("secfl secure / Flower TLS:", "secfl secure", "Flower TLS", "<= 1.0")
    line("secfl insecure / Flower plain:", "secfl insecure", "Flower plain", "<= 0.9")
    line("secfl insecure / Flower TLS:", "secfl insecure", "Flower TLS", "<= 0.9")
    print(
        f"     same workload, so the same model: validation loss after round {settings.rounds}: "
        + ", ".join(f"{c} {v:.5f}" for c, v in losses.items())
    )
    ours = med["secfl secure"] / med["secfl insecure"]
    theirs = med["Flower TLS"] / med["Flower plain"]
    print(
        f"     (for context: secfl secure / insecure {ours:.3f}, Flower TLS / plain {theirs:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--params", type=int, default=10_000_000, help="model of (b)")
    parser.add_argument("--large-samples", type=int, default=400, help="digits rows for (b)")
    parser.add_argument("--only", choices=("digits", "large"), default=None)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 4 rounds, 1M for (b)")
    parser.add_argument("--keep", default=None, help="keep the work folders here")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.rounds, args.params = 1, 4, 1_000_000
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (round 1 is left out)")
    flower_python()  # fails with the way to make .venv-flwr
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.clients} clients, {args.rounds} rounds, {args.repeat} repeat(s), "
          f"configurations interleaved")  # fmt: skip
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-vs-flower-"))
    root.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so the federations' processes (the SPM too) are stopped
    signal.signal(signal.SIGTERM, _terminated)
    try:
        if args.only in (None, "digits"):
            print("\n(a) digits: MLP 64-64-10 (4,810 parameters), 2 local epochs, all rows")
            settings = DemoSettings(task="digits", clients=args.clients, rounds=args.rounds,
                                    epochs=2, tampered=False, seed=SEED)  # fmt: skip
            workload(root, "digits", settings, 0, args.repeat)
        if args.only in (None, "large"):
            exact = task_source(args.params)[1]
            print(f"\n(b) large: MLP 64-H-10 of {exact:,} parameters ({exact * 4 / 2**20:.0f} "
                  f"MiB), 1 local epoch, {args.large_samples} rows")  # fmt: skip
            settings = DemoSettings(task="digits", clients=args.clients, rounds=args.rounds,
                                    epochs=1, samples=args.large_samples, tampered=False,
                                    seed=SEED, round_timeout=TIMEOUT)  # fmt: skip
            workload(root, "large", settings, args.params, args.repeat)
    finally:
        if args.keep:
            print(f"\nwork folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
