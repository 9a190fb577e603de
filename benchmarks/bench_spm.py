"""SPM throughput: attestations with secret release per second, and counter
increments per second, against one `secfl spm serve` process on this machine.

Run: ``.venv/bin/python benchmarks/bench_spm.py [--seconds 5] [--clients 8] [--db URL]``.
Clients run in this process (threads, keep-alive HTTPS, pinned), so client work
(key generation, simulated quotes) shares the machine's cores with the SPM.
Targets (issue 3): >= 200 attestations/s and >= 1000 increments/s with SQLite on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.spm.harness import AGGREGATOR_MR, Board, SpmProcess, make_sim, policy_document

from secfl.spm.client import SpmClient
from secfl.spm.enroll import enroll
from secfl.tee import simulated


def run(
    clients: int, seconds: float, work: Callable[[SpmClient], object], spm: SpmProcess
) -> float:
    """Operations per second of ``work`` by ``clients`` threads over ``seconds``."""
    counts = [0] * clients
    stop = threading.Event()

    def loop(i: int) -> None:
        with SpmClient(spm.url, pin=spm.pin) as client:
            work(client)  # connect and warm up
            while not stop.is_set():
                work(client)
                counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    start, base = time.perf_counter(), sum(counts)
    time.sleep(seconds)
    done, elapsed = sum(counts) - base, time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--db", default=None, help="database URL (default: SQLite)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = make_sim(Path(tmp) / "sim")
        spm = SpmProcess(Path(tmp) / "data", Path(tmp) / "sim", args.db).start()
        try:
            client, _ = SpmClient.verify(spm.url, expect_measurement=spm.measurement, sim_root=root)
            board = Board.create()
            document = policy_document("bench", board, root)
            client.submit_policy(document, board.sign(document, "alice", "bob"))
            platform = simulated.SimulatedPlatform(Path(tmp) / "sim")
            token = enroll(
                client, platform, "bench", "aggregator", measurement=AGGREGATOR_MR
            ).session_token

            def attest(c: SpmClient) -> object:
                return enroll(c, platform, "bench", "aggregator", measurement=AGGREGATOR_MR)

            def increment(c: SpmClient) -> object:
                return c.increment("bench", "round", token)

            backend = "PostgreSQL" if args.db else "SQLite (WAL, synchronous=FULL)"
            print(
                f"secfl SPM benchmark — {os.cpu_count()} cores, {backend}, "
                f"{args.clients} client threads in one process, {args.seconds:.0f} s each"
            )
            att = run(args.clients, args.seconds, attest, spm)
            print(f"attestations with secret release: {att:8.1f} /s   (target >= 200)")
            inc = run(args.clients, args.seconds, increment, spm)
            print(f"counter increments:               {inc:8.1f} /s   (target >= 1000)")
            final = client.counter("bench", "round")
            print(
                f"counter value after the run: {final} (every increment durable before its reply)"
            )
            client.close()
        finally:
            spm.stop()


if __name__ == "__main__":
    main()
