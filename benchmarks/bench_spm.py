"""SPM throughput: attestations with secret release per second, and counter
increments per second, against one `secfl spm serve` process on this machine.

Run: ``.venv/bin/python benchmarks/bench_spm.py [--seconds 5] [--procs 2] [--threads 8]
[--db URL]``.

Load comes from ``--procs`` client processes of ``--threads`` threads each, on the
same machine (they share its cores with the SPM). Every connection verifies the
SPM's TLS certificate pinned by its key digest. Attesting clients do the
whole workload side (HPKE and TLS key generation, CSR, simulated quote, opening the
sealed secrets); incrementing clients send bare keep-alive HTTPS requests.
Targets: >= 200 attestations/s and >= 1000 increments/s with SQLite on 2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.spm.harness import AGGREGATOR_MR, Board, SpmProcess, make_sim, policy_document

from secfl.spm.client import SpmClient
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _attester(
    url: str, pin: str, sim_dir: str, threads: int, seconds: float, out: mp.Queue
) -> None:
    platform = simulated.SimulatedPlatform(sim_dir)
    counts = [0] * threads
    go, stop = threading.Event(), threading.Event()

    def loop(i: int) -> None:
        with SpmClient(url, pin=pin) as client:
            enroll(client, platform, "bench", "aggregator", measurement=AGGREGATOR_MR)
            go.wait()
            while not stop.is_set():
                enroll(client, platform, "bench", "aggregator", measurement=AGGREGATOR_MR)
                counts[i] += 1

    _drive(loop, threads, seconds, counts, go, stop, out)


def _incrementer(
    url: str, pin: str, token: str, threads: int, seconds: float, out: mp.Queue
) -> None:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    with SpmClient(url, pin=pin) as client:  # fetch the certificate and check it against the pin
        client.counter("bench", "round")
        pem = ssl.get_server_certificate((host, int(port)))
        from cryptography import x509

        from secfl.spm._report_data import spki_sha256

        assert spki_sha256(x509.load_pem_x509_certificate(pem.encode()).public_key()) == pin
    context = ssl.create_default_context(cadata=pem)
    path = "/v1/policies/bench/counters/round/increment"
    headers = {"Authorization": f"Bearer {token}"}
    counts = [0] * threads
    go, stop = threading.Event(), threading.Event()

    def loop(i: int) -> None:
        conn = http.client.HTTPSConnection(host, int(port), context=context)
        go.wait()
        while not stop.is_set():
            conn.request("POST", path, headers=headers)
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"increment answered HTTP {reply.status}")
            counts[i] += 1

    _drive(loop, threads, seconds, counts, go, stop, out)


def _drive(loop, threads, seconds, counts, go, stop, out) -> None:  # type: ignore[no-untyped-def]
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    go.set()
    time.sleep(0.3)
    base, start = sum(counts), time.perf_counter()
    time.sleep(seconds)
    done, elapsed = sum(counts) - base, time.perf_counter() - start
    stop.set()
    for w in workers:
        w.join()
    out.put(done / elapsed)


def measure(target, args: tuple, procs: int, spm: SpmProcess) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(operations/s, SPM CPU ms per operation) over ``procs`` load processes."""
    queue: mp.Queue = mp.Queue()
    before = _cpu(spm.proc.pid)  # type: ignore[union-attr]
    start = time.perf_counter()
    jobs = [mp.Process(target=target, args=(*args, queue)) for _ in range(procs)]
    for j in jobs:
        j.start()
    rates = [queue.get() for _ in jobs]
    for j in jobs:
        j.join()
    total = sum(rates)
    used = _cpu(spm.proc.pid) - before  # type: ignore[union-attr]
    ops = total * (time.perf_counter() - start)
    return total, 1000 * used / max(ops, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--db", default=None, help="database URL (default: SQLite)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sim_dir = Path(tmp) / "sim"
        root = make_sim(sim_dir)
        spm = SpmProcess(Path(tmp) / "data", sim_dir, args.db).start()
        try:
            client, _ = SpmClient.verify(spm.url, expect_measurement=spm.measurement, sim_root=root)
            board = Board.create()
            document = policy_document("bench", board, root)
            client.submit_policy(document, board.sign(document, "alice", "bob"))
            platform = simulated.SimulatedPlatform(sim_dir)
            token = enroll(
                client, platform, "bench", "aggregator", measurement=AGGREGATOR_MR
            ).session_token
            start_value = client.counter("bench", "round")

            backend = "PostgreSQL" if args.db else "SQLite (WAL, synchronous=FULL)"
            print(
                f"secfl SPM benchmark — {os.cpu_count()} cores shared by the SPM and its load, "
                f"{backend}, {args.procs} load processes x {args.threads} threads, "
                f"{args.seconds:.0f} s per figure"
            )
            att, att_cpu = measure(
                _attester,
                (spm.url, spm.pin, str(sim_dir), args.threads, args.seconds),
                args.procs,
                spm,
            )
            print(f"attestations with secret release: {att:8.1f} /s", end="  ")
            print(f"(SPM CPU {att_cpu:.2f} ms each; target >= 200)")
            inc, inc_cpu = measure(
                _incrementer, (spm.url, spm.pin, token, args.threads, args.seconds), args.procs, spm
            )
            print(f"counter increments:               {inc:8.1f} /s", end="  ")
            print(f"(SPM CPU {inc_cpu:.2f} ms each; target >= 1000)")
            final = client.counter("bench", "round")
            print(f"counter went from {start_value} to {final}; each durable before its reply")
            client.close()
        finally:
            spm.stop()


if __name__ == "__main__":
    main()
