"""Aggregator round time for 10, 50 and 200 collaborators, and the aggregator's peak
memory for a 100M-parameter model (target: <= 3x the model size with FedAvg), in one run.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--clients 10,50,200] [--params 1000000]
[--rounds 3] [--workers 16] [--memory-params 100000000] [--memory-clients 4]
[--memory-rounds 3] [--canonical-rounds 2] [--orders arrival,canonical] [--no-scale]
[--no-memory] [--quick]``.

Method. The aggregator runs in a child process of its own, built as ``secfl
aggregator`` builds it minus the SPM: ``secfl.fl._aggregator.Aggregator`` with a
mutual-TLS ``transport.Server`` (certificates from a fresh policy CA, as the SPM
issues them), a ``Signer`` with an Ed25519 key, ``Commit(MemoryLedger(),
directory=None)`` (no checkpoints, no SPM counter) and ``FederationConfig`` with
``min_clients=N``, ``fraction=1`` and generous heartbeat and timeouts. Its task is
synthetic: a model of ``--params`` float32 parameters in tensors of at most 16M
elements, filled from a seeded generator; no validation or test data, so nothing is
evaluated.

The collaborators are N threads of this (parent) process, each with its own
certificate and ``transport.Client`` (its own mTLS channel), speaking the real
protocol: ``Join``, then ``Next`` (long poll; the signed global model is downloaded
whole) and ``Submit`` of an update streamed with ``messages.stream``. They do not
train: every update is the same precomputed one (the global model plus small noise,
float32, serialized once and shared), so the figures are the aggregator's and the
transport's, not training's. Clients and aggregator are separate processes, so the
aggregator's memory figures are its own; they do share the machine's cores.

Figures, all from the aggregator process:

* round time: ``duration_s`` of ``Aggregator.history`` (from the first global model
  sent to the new one committed: N model downloads, N uploads, each update checked
  and folded, the new model serialized), the median over the rounds, and the
  aggregator's CPU seconds per round (``time.process_time`` from one round's start
  to the next). The clients' CPU (this process) is printed per run for context: on
  a small machine it competes with the aggregator, and the round time is that of
  the whole system on loopback.
* memory: ``VmHWM`` (peak RSS) from ``/proc/self/status``, restarted through
  ``/proc/self/clear_refs`` once the aggregator has started (global model built,
  initial model committed, server listening: its *resting* state) so that start-up
  transients are not counted, and again at the start of every round (a ``Signer``
  subclass marks the moment a round's model is sealed). Printed: the peak RSS above
  the resting RSS relative to the model size (the target's figure), and per round
  the RSS at its start and its peak, both above resting.

Scenarios. (a) N = ``--clients`` with a ``--params`` model (1M: 4 MB), aggregation
order "arrival", ``--rounds`` rounds, with the transport's default pool of server
threads (``Server(workers=16)``) and, where N exceeds it, also with ``pool_size(N)``
(what ``secfl aggregator`` has: each peer's share of calls, and spares): a
long-polled ``Next`` holds a worker for up to ``rounds.POLL_SECONDS`` (5 s), so a
pool smaller than N queues calls behind polls. (b) a ``--memory-params`` model (100M:
400 MB) with ``--memory-clients`` collaborators, in a fresh aggregator process per order:
"arrival" for ``--memory-rounds`` rounds (3: from round 3 on, what the aggregator
holds between rounds no longer grows) and "canonical" for ``--canonical-rounds``
rounds. FedAvg's sum is exact and order-free (``secfl.fl.strategies._exact``), so
both orders fold each update while it streams in (``secfl.fl._incoming``) through a
small window (3 stretches of 4 MiB), each stretch's take-back copy spilled, sealed, to
an unlinked file (``secfl.fl._spill``; here in the system's temporary folder: the
aggregator has no checkpoint folder; page cache, not the process's memory). Expected
above resting: the int64 sum (2 models) plus the window while updates come in; while
the new model is made, the sum and a few blocks (each tensor's sum is given back page
by page as its mean is written to fresh memory). What is above 2x is gRPC's and the
allocator's (chunks of the streams coming in and waiting for the window, heap the
transport's threads keep after they are freed).
Then the wire's limit is measured in the same run (``wire_limit``: N downloads and N
uploads of the model over one mutual-TLS stream, at the best rate of
``bench_transport``'s client and server) and the median round time of each order is
printed against it (target <= 1.2x).

With the defaults it runs for a little over 3 minutes on 2 cores; ``--quick`` (well under
a minute): 10 and 50 collaborators, 2 rounds, a 25M-parameter model for (b). It prints
figures and asserts nothing about timing or memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secfl.fl import _messages as msg
from secfl.fl._tensors import to_bytes
from secfl.fl._transport import Client, Credentials, pool_size
from secfl.policy._secrets import CaSecret
from secfl.spm import _sealing as sv
from secfl.spm.enroll import make_csr

MIB = 1 << 20
POLICY = "bench"
DIGEST = "b" * 64
AGGREGATOR = "aggregator"
#: Largest tensor of the synthetic model (elements).
TENSOR = 1 << 24
TIMEOUT = 900.0


# --- certificates (as the SPM issues them after attestation) ---------------------------------


def ca(name: str) -> sv.Value:
    return sv.generate(
        CaSecret(name=name, kind="x509-ca", common_name=f"{name} CA"), {}, datetime.now(UTC)
    )


def identity(authority: sv.Value, service: str) -> Credentials:
    """A key and a certificate for ``service`` of policy "bench", issued by ``authority``."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr(make_csr(key, service))
    cert = sv.issue_service_certificate(
        authority, csr, policy=POLICY, service=service, ttl_seconds=3600, now=datetime.now(UTC)
    )
    return Credentials(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        ca_pem=authority["crt"].encode(),
    )


# --- the synthetic model -------------------------------------------------------------------


def model_shapes(params: int) -> dict[str, int]:
    """Tensor name -> element count: ``params`` in tensors of at most ``TENSOR``."""
    sizes = [TENSOR] * (params // TENSOR) + ([params % TENSOR] if params % TENSOR else [])
    return {f"blocks.{i}": size for i, size in enumerate(sizes)}


def initial_params(params: int, seed: int) -> dict[str, np.ndarray]:
    """The global model's initial values (what ``build_model(seed)`` holds)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, size in model_shapes(params).items():
        array = rng.standard_normal(size, dtype=np.float32)
        array *= np.float32(0.02)
        out[name] = array
    return out


class SyntheticTask:
    """A task whose model has ``params`` float32 parameters (only ``build_model`` is used:
    the collaborators do not train and there is no validation data)."""

    name = "synthetic"

    def __init__(self, params: int) -> None:
        self.params = params

    def build_model(self, seed: int = 0) -> Any:
        import torch
        from torch import nn

        class Synthetic(nn.Module):
            def __init__(self, arrays: dict[str, np.ndarray]) -> None:
                super().__init__()
                self.blocks = nn.ParameterList(
                    nn.Parameter(torch.from_numpy(a), requires_grad=False) for a in arrays.values()
                )

        return Synthetic(initial_params(self.params, seed))

    def load_data(self, source: Any) -> Any:
        raise NotImplementedError

    def train(self, model: Any, data: Any, config: Any) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, model: Any, data: Any) -> dict[str, float]:
        raise NotImplementedError


# --- the aggregator (child process) -----------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def aggregator_child(spec_path: str) -> None:
    """Build and run one aggregator from the spec; print READY <port>, then the figures as
    one JSON line; stop the server once the parent closes stdin (every client done)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from secfl.fl._aggregator import Aggregator, Signer
    from secfl.fl._commit import Commit, MemoryLedger
    from secfl.fl._config import FederationConfig
    from secfl.fl._envelope import SignedModel
    from secfl.fl._transport import PeerPolicy, Server

    spec = json.loads(Path(spec_path).read_text())
    creds = Credentials(**{k: v.encode() for k, v in spec["creds"].items()})
    marks: list[dict[str, float]] = []

    def mark() -> None:
        """Between rounds: the RSS now, the peak since the last mark, CPU seconds."""
        marks.append(
            {
                "rss": _status_kib("VmRSS") * 1024,
                "peak": _status_kib("VmHWM") * 1024,
                "cpu": time.process_time(),
                "time": time.perf_counter(),
            }
        )
        _reset_peak()

    class MarkingSigner(Signer):
        def seal(self, params_bytes: bytes, round: int, counter: int) -> SignedModel:
            mark()  # a round begins: its global model is built and serialized
            return super().seal(params_bytes, round, counter)

    agg = Aggregator(
        SyntheticTask(spec["params"]),  # type: ignore[arg-type]
        FederationConfig.parse(spec["settings"]),
        Server(creds, PeerPolicy(POLICY, set(spec["services"])), workers=spec["workers"]),
        MarkingSigner(DIGEST, ed25519.Ed25519PrivateKey.generate()),
        Commit(MemoryLedger(), directory=None, key=None, policy_digest=DIGEST),
    )
    port = agg.start("127.0.0.1:0")
    model_bytes = 4 * sum(model_shapes(spec["params"]).values())
    resting = _status_kib("VmRSS") * 1024
    resting_anon = _status_kib("RssAnon") * 1024
    anon = {"peak": resting_anon}
    sampling = threading.Event()

    def sample_anon() -> None:
        """RssAnon (the process's data, without code pages mapped from files), its
        peak sampled every 2 ms: the kernel keeps no high-water mark of it."""
        while not sampling.wait(0.002):
            anon["peak"] = max(anon["peak"], _status_kib("RssAnon") * 1024)

    threading.Thread(target=sample_anon, daemon=True).start()
    _reset_peak()
    print(f"READY {port}", flush=True)
    began = time.perf_counter()
    agg.run()
    wall = time.perf_counter() - began
    sampling.set()
    mark()
    # marks[k] is taken when round k+1 starts; marks[k + 1]["peak"] covers round k+1
    rounds = [
        {
            "duration_s": entry["duration_s"],
            "updates": entry["updates"],
            "rss_start": marks[i]["rss"],
            "peak": marks[i + 1]["peak"],
            "cpu": marks[i + 1]["cpu"] - marks[i]["cpu"],
        }
        for i, entry in enumerate(agg.history)
    ]
    result = {
        "model_bytes": model_bytes,
        "resting": resting,
        "before_round_1": marks[0]["peak"],
        "resting_anon": resting_anon,
        "peak_anon": anon["peak"],
        "rounds": rounds,
        "wall": wall,
    }
    print(json.dumps(result), flush=True)
    sys.stdin.read()  # the parent closes stdin once every collaborator heard 'done'
    agg.server.stop(grace=1.0)


# --- the collaborators (threads of this process) ----------------------------------------------


class Site(threading.Thread):
    """One collaborator: joins, polls for work and submits the shared update."""

    def __init__(
        self, name: str, creds: Credentials, port: int, update: bytes, limit: int, samples: int
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.creds, self.port, self.update = creds, port, memoryview(update)
        self.limit, self.samples = limit, samples
        self.error: BaseException | None = None
        self.submitted = 0
        self.polls = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the parent
            self.error = exc

    def _run(self) -> None:
        target = f"127.0.0.1:{self.port}"
        with Client(target, self.creds, server_name=AGGREGATOR, timeout=TIMEOUT) as client:
            client.unary(msg.JOIN, msg.encode({"kind": "join", "samples": self.samples}))
            done: list[Any] = []
            while True:
                ask = msg.encode({"kind": "next", "done": done})
                reply = client.download(msg.NEXT, ask, self.limit)
                self.polls += 1
                header, _ = msg.decode(reply)
                if header["kind"] == msg.DONE:
                    return
                if header["kind"] != msg.TRAIN:
                    continue
                done = [header["epoch"], header["round"], header["attempt"]]
                head = {
                    "kind": "update",
                    "round": header["round"],
                    "attempt": header["attempt"],
                    "epoch": header["epoch"],
                    "samples": self.samples,
                    "metrics": {"loss": 1.0},
                }
                del reply, header
                answer = client.upload(msg.SUBMIT, msg.stream(head, self.update))
                if msg.decode(answer)[0].get("kind") != "accepted":
                    raise RuntimeError(f"{self.name}: update not accepted: {answer[:200]!r}")
                self.submitted += 1


def make_update(params: int, seed: int) -> bytes:
    """The global model plus small noise, serialized once (shared by every site)."""
    arrays = initial_params(params, seed)
    rng = np.random.default_rng(seed + 1)
    for array in arrays.values():
        noise = rng.standard_normal(array.size, dtype=np.float32)
        noise *= np.float32(1e-3)
        array += noise
        del noise
    return to_bytes(arrays)


def run_federation(
    *,
    clients: int,
    params: int,
    rounds: int,
    order: str,
    workers: int,
    authority: sv.Value,
    identities: list[Credentials],
    update: bytes,
    work: Path,
) -> dict[str, Any]:
    """One aggregator child and ``clients`` site threads; the child's figures."""
    began, cpu = time.perf_counter(), time.process_time()
    names = [f"site-{i + 1}" for i in range(clients)]
    settings = {
        "rounds": rounds,
        "min_clients": clients,
        "fraction": 1.0,
        "heartbeat": 60.0,
        "dead_after": 600.0,
        "round_timeout": TIMEOUT,
        "join_timeout": TIMEOUT,
        "aggregation_order": order,
        "seed": 0,
    }
    creds = identity(authority, AGGREGATOR)
    spec = {
        "params": params,
        "settings": settings,
        "services": names,
        "workers": workers,
        "creds": {k: getattr(creds, k).decode() for k in ("key_pem", "cert_pem", "ca_pem")},
    }
    spec_path = work / f"spec-{clients}-{order}-{workers}.json"
    spec_path.write_text(json.dumps(spec))
    spec_path.chmod(0o600)
    child = subprocess.Popen(
        [sys.executable, __file__, "--aggregator-child", str(spec_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert child.stdout is not None and child.stdin is not None

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    sites: list[Site] = []
    try:
        port = int(_next_line(lines, child, sites, "READY").split()[1])
        limit = params * 4 + (4 << 20)
        sites = [
            Site(name, identities[i], port, update, limit, 100 + i) for i, name in enumerate(names)
        ]
        for site in sites:
            site.start()
        result = json.loads(_next_line(lines, child, sites, "{"))
        for site in sites:
            site.join(60)
        child.stdin.close()
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    failed = [s for s in sites if s.error is not None or s.is_alive()]
    if failed:
        raise RuntimeError(f"{failed[0].name} failed: {failed[0].error!r}")
    result["polls"] = sum(s.polls for s in sites)
    result["total"] = time.perf_counter() - began
    result["clients_cpu"] = time.process_time() - cpu
    return result


def _next_line(
    lines: queue.Queue[str], child: subprocess.Popen[str], sites: list[Site], prefix: str
) -> str:
    """The child's next output line starting with ``prefix``; fails fast if the child
    or a site failed."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            broken = next((s for s in sites if s.error is not None), None)
            if broken is not None:
                raise RuntimeError(f"{broken.name} failed: {broken.error!r}") from None
            continue
        if not line:
            raise RuntimeError(f"the aggregator exited {child.wait()} before '{prefix}'")
        if line.startswith(prefix):
            return line
        print(f"  aggregator: {line.rstrip()}")
    raise RuntimeError(f"no '{prefix}' from the aggregator in {TIMEOUT:.0f} s")


# --- reporting ------------------------------------------------------------------------------


def round_line(result: dict[str, Any]) -> str:
    durations = [r["duration_s"] for r in result["rounds"]]
    cpu = [r["cpu"] for r in result["rounds"]]
    return (
        f"round time median {statistics.median(durations):6.2f} s "
        f"(rounds: {' '.join(f'{d:.2f}' for d in durations)}), "
        f"aggregator CPU {statistics.median(cpu):5.2f} s/round"
    )


def peak_rss(result: dict[str, Any]) -> int:
    return max([result["before_round_1"], *(r["peak"] for r in result["rounds"])])


def memory_lines(result: dict[str, Any]) -> list[str]:
    model = result["model_bytes"]
    resting = result["resting"]
    peak = peak_rss(result)
    rows = [
        f"    peak RSS above the resting aggregator: {(peak - resting) / model:.2f}x the model "
        f"({(peak - resting) / MIB:.0f} MiB; resting {resting / MIB:.0f} MiB, whole process "
        f"peak {peak / MIB:.0f} MiB = {peak / model:.2f}x)"
    ]
    rows.append(
        f"    anonymous memory (data, no code pages) peak above resting, sampled every 2 ms: "
        f"{(result['peak_anon'] - result['resting_anon']) / model:.2f}x the model"
    )
    for i, r in enumerate(result["rounds"], start=1):
        rows.append(
            f"    round {i}: starts at {(r['rss_start'] - resting) / model:+.2f}x, peaks at "
            f"{(r['peak'] - resting) / model:+.2f}x the model above resting "
            f"({r['duration_s']:.1f} s, aggregator CPU {r['cpu']:.1f} s)"
        )
    return rows


def wire_limit(model: int, clients: int, repeat: int = 2) -> dict[str, float]:
    """The wire's limit for one round of a ``model``-byte model and ``clients``
    collaborators: ``clients`` downloads and ``clients`` uploads of the model, one after
    the other, at the best rate one mutual-TLS stream reaches on this loopback
    (``bench_transport``'s server and client: the transport's own, certificates from a
    fresh CA), measured here, in the same run as the federation it is compared with."""
    from bench_transport import identity as bench_identity
    from bench_transport import make_payload, start_servers, transfers

    authority = sv.generate(
        CaSecret(name="bench", kind="x509-ca", common_name="bench CA"), {}, datetime.now(UTC)
    )
    payload = make_payload(model)
    stop, port, _ = start_servers(bench_identity(authority, "aggregator"), model)
    client = Client(
        f"127.0.0.1:{port}", bench_identity(authority, "collab"), server_name="aggregator",
        timeout=TIMEOUT,
    )  # fmt: skip
    rates: dict[str, float] = {}
    try:
        moves = transfers(client, payload)
        for move in moves.values():
            move(MIB)  # the handshake is not timed
        for direction, move in moves.items():
            best = min(move(model)["total"] for _ in range(repeat))
            rates[direction] = model / best
    finally:
        client.close()
        stop()
    seconds = clients * model / rates["download"] + clients * model / rates["upload"]
    return {"seconds": seconds, **{f"{d}_MBps": r / 1e6 for d, r in rates.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="10,50,200", help="collaborator counts, commas")
    parser.add_argument("--params", type=int, default=1_000_000, help="model of (a)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (a)")
    parser.add_argument("--workers", type=int, default=16, help="the transport's default pool")
    parser.add_argument("--memory-params", type=int, default=100_000_000, help="model of (b)")
    parser.add_argument("--memory-clients", type=int, default=4)
    parser.add_argument("--memory-rounds", type=int, default=3, help="rounds of (b), arrival")
    parser.add_argument("--canonical-rounds", type=int, default=2, help="rounds of (b), canonical")
    parser.add_argument("--orders", default="arrival,canonical", help="aggregation orders of (b)")
    parser.add_argument("--no-scale", action="store_true", help="skip (a)")
    parser.add_argument("--no-memory", action="store_true", help="skip (b)")
    parser.add_argument("--quick", action="store_true", help="10 and 50 clients, 2 rounds, 25M")
    parser.add_argument("--aggregator-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.aggregator_child is not None:
        aggregator_child(args.aggregator_child)
        return
    if args.quick:
        args.clients, args.rounds = "10,50", 2
        args.memory_params, args.memory_rounds, args.canonical_rounds = 25_000_000, 2, 2
    counts = [int(c) for c in args.clients.split(",")]

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    authority = ca(POLICY)
    most = max([*counts, args.memory_clients])
    began = time.perf_counter()
    identities = [identity(authority, f"site-{i + 1}") for i in range(most)]
    print(f"{most} collaborator certificates issued in {time.perf_counter() - began:.1f} s")
    work = Path(tempfile.mkdtemp(prefix="secfl-bench-scale-"))
    common: dict[str, Any] = {"authority": authority, "identities": identities, "work": work}
    try:
        if not args.no_scale:
            update = make_update(args.params, 0)
            print(
                f"\n(a) round time: {args.params / 1e6:g}M-parameter model "
                f"({args.params * 4 / MIB:.1f} MiB), {args.rounds} rounds, order 'arrival', "
                "mTLS on loopback, aggregator in its own process"
            )
            medians: dict[tuple[int, int], float] = {}
            for n in counts:
                # N clients hold at most N calls at once: a pool of N or more is enough
                pools = [args.workers] if args.workers >= n else [args.workers, pool_size(n)]
                for workers in pools:
                    result = run_federation(
                        clients=n,
                        params=args.params,
                        rounds=args.rounds,
                        order="arrival",
                        workers=workers,
                        update=update,
                        **common,
                    )
                    print(
                        f"  N={n:<4} workers={workers:<4} {round_line(result)}; "
                        f"{result['polls']} Next calls, run {result['total']:.1f} s, "
                        f"clients' CPU {result['clients_cpu']:.1f} s"
                    )
                    medians[(n, workers)] = statistics.median(
                        r["duration_s"] for r in result["rounds"]
                    )
            enough = [f"N={n} {t:.2f} s" for (n, w), t in medians.items() if w >= n]
            small = [f"N={n} {t:.2f} s" for (n, w), t in medians.items() if w < n]
            print(
                f"=> round time median, pool >= N: {', '.join(enough)}"
                + (f"; pool of {args.workers} < N: {', '.join(small)}" if small else "")
            )
            del update
        if not args.no_memory:
            update = make_update(args.memory_params, 0)
            model = args.memory_params * 4
            print(
                f"\n(b) peak memory: {args.memory_params / 1e6:g}M-parameter model "
                f"({model / MIB:.0f} MiB), {args.memory_clients} collaborators, "
                "one fresh aggregator process per order"
            )
            peaks: dict[str, float] = {}
            times: dict[str, float] = {}
            for order in args.orders.split(","):
                n = args.memory_clients
                result = run_federation(
                    clients=n,
                    params=args.memory_params,
                    rounds=args.memory_rounds if order == "arrival" else args.canonical_rounds,
                    order=order,
                    workers=pool_size(n),
                    update=update,
                    **common,
                )
                print(
                    f"  order '{order}', {len(result['rounds'])} rounds: {round_line(result)}, "
                    f"run {result['total']:.1f} s, "
                    f"clients' CPU {result['clients_cpu']:.1f} s"
                )
                for line in memory_lines(result):
                    print(line)
                peaks[order] = (peak_rss(result) - result["resting"]) / result["model_bytes"]
                times[order] = statistics.median(r["duration_s"] for r in result["rounds"])
            wire = wire_limit(model, args.memory_clients)
            print(
                f"  wire limit, measured now: {args.memory_clients} downloads and "
                f"{args.memory_clients} uploads of {model / MIB:.0f} MiB over one mTLS stream "
                f"at {wire['download_MBps']:.0f} / {wire['upload_MBps']:.0f} MB/s "
                f"= {wire['seconds']:.2f} s"
            )
            print(
                "=> round time / wire limit: "
                + ", ".join(f"{o} {t:.2f} s = {t / wire['seconds']:.2f}x" for o, t in times.items())
                + " (target <= 1.2x)"
            )
            print(
                "=> aggregator peak RSS above resting, FedAvg: "
                + ", ".join(f"{order} {x:.2f}x" for order, x in peaks.items())
                + " the model size (target <= 3x; expected: the int64 sum, 2x, plus the"
                " transport's and the allocator's share)"
            )
    finally:
        for path in work.glob("*"):
            path.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
