"""Update transfer throughput over mutual TLS on loopback, against plaintext gRPC, in one run,
with a breakdown of where the time goes.

Run: ``.venv/bin/python benchmarks/bench_transport.py [--sizes 1,4,16,64,256] [--repeat 5]``.

A fresh policy CA issues an aggregator and a collaborator certificate (as the SPM
does after attestation). A ``secfl.fl._transport.Server`` listens on 127.0.0.1 with
an upload method (``join`` the stream, answer its length) and a download method
(the payload streamed by ``chunks``, ``CHUNK_SIZE`` pieces); a ``Client`` uploads
and downloads payloads of ``--sizes`` MiB, ``--repeat`` times each. For comparison,
a plaintext gRPC server and channel built the same way (generic handlers, the
transport's server and channel options, ``chunks`` and ``join`` on both ends, no TLS
and no peer check) move
the same payloads in the same run. TLS and plaintext transfers alternate one by one,
and which of the two goes first alternates from one repeat to the next, so that both
see the same machine load.

By default the servers run in a process of their own, as an aggregator and a
collaborator do (``--serve``, started by the benchmark; server timestamps come back
by a ``Marks`` call after each transfer, outside the timed window: both processes
read the same monotonic clock). ``--one-process`` puts client and servers in one
process (as in tests/fl/test_transport.py), where their Python work shares one GIL,
which slows the side of each transfer that gRPC's C threads do not carry. One call of
each kind before timing opens the channels (the TLS handshake is not timed). MB/s
counts payload bytes, 1 MB = 1e6 bytes. Printed:

- per size and direction, best and median MB/s for each transport, the TLS/plaintext
  ratio of the best figures and the median of the ratios of adjacent pairs;
- the phases of a transfer (medians, ms), from timestamps the handlers take:
  upload: *first* = call until the server holds the first chunk (call set-up, peer
  check, one chunk), *stream* = first to last chunk at the server, *tail* = last
  chunk until the client has the answer; download: *first* = call until the server's
  handler starts, *stream* = until the server has handed gRPC its last chunk,
  *tail* = until the client holds the whole payload;
- the CPU time per MiB moved (``time.process_time``, plus the server process's with
  two processes), and on Linux the client process's split between Python threads and
  gRPC's C threads (``/proc/self/task/*/schedstat``, read outside the timed window);
- the cost of one peer check (``PeerPolicy.check``), with the certificate parsed
  afresh and from the cache.

It prints figures and asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secfl.fl._chunks import chunks
from secfl.fl._transport import (
    CHUNK_SIZE,
    CLIENT_OPTIONS,
    MESSAGE_LIMIT,
    RECONNECT_OPTIONS,
    SERVER_OPTIONS,
    SERVICE,
    Client,
    Credentials,
    PeerPolicy,
    Server,
    join,
)
from secfl.policy._secrets import CaSecret
from secfl.spm import _sealing as sv
from secfl.spm.enroll import make_csr

MB = 1e6
MIB = 1 << 20
#: The plaintext channel's options: the transport client's, less TLS.
CLIENT_CHANNEL = [
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    *RECONNECT_OPTIONS,
    *CLIENT_OPTIONS,
]
TIMEOUT = 600.0
PHASES = ("first", "stream", "tail")


def identity(authority: sv.Value, service: str) -> Credentials:
    """A key and a certificate for ``service`` of policy "bench", issued by ``authority``."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr(make_csr(key, service))
    cert = sv.issue_service_certificate(
        authority, csr, policy="bench", service=service, ttl_seconds=3600, now=datetime.now(UTC)
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


def make_payload(size: int) -> bytes:
    """``size`` bytes of distinct blocks without paying for os.urandom on every MiB."""
    block = os.urandom(MIB)
    return b"".join(
        i.to_bytes(8, "little") + block[8 : min(MIB, size - i)] for i in range(0, size, MIB)
    )


class Handlers:
    """The methods both servers run: Put (upload) and Get (download), taking timestamps."""

    def __init__(self, payload: bytes) -> None:
        self.payload = memoryview(payload)
        self.marks: dict[str, float] = {}

    def put(self, pieces: Iterator[bytes], _peer: object = None) -> bytes:
        def timed() -> Iterator[bytes]:
            for i, piece in enumerate(pieces):
                if i == 0:
                    self.marks["first"] = time.perf_counter()
                yield piece
            self.marks["last"] = time.perf_counter()

        return str(len(join(timed(), len(self.payload)))).encode()

    def get(self, request: bytes, _peer: object = None) -> Iterable[bytes]:
        self.marks["first"] = time.perf_counter()
        yield from chunks(self.payload[: int(request)], CHUNK_SIZE)
        self.marks["last"] = time.perf_counter()

    def report(self, _request: bytes, _peer: object = None) -> bytes:
        """The last transfer's marks and this process's CPU seconds so far, as JSON."""
        return json.dumps({**self.marks, "cpu": time.process_time()}).encode()


def plain_server(handlers: Handlers) -> tuple[grpc.Server, int]:
    """A plaintext gRPC server with the transport's generic handlers and message limits."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=SERVER_OPTIONS)
    methods: dict[str, grpc.RpcMethodHandler] = {
        "Put": grpc.stream_unary_rpc_method_handler(lambda it, ctx: handlers.put(it)),
        "Get": grpc.unary_stream_rpc_method_handler(lambda req, ctx: handlers.get(req)),
        "Marks": grpc.unary_unary_rpc_method_handler(lambda req, ctx: handlers.report(req)),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


class PlainClient:
    """The plaintext counterpart of ``transport.Client.upload`` and ``download``."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target, options=CLIENT_CHANNEL)

    def upload(self, name: str, data: bytes | memoryview) -> bytes:
        method: grpc.StreamUnaryMultiCallable[bytes, bytes]
        method = self._channel.stream_unary(f"/{SERVICE}/{name}")
        return method(chunks(data), timeout=TIMEOUT)

    def download(self, name: str, request: bytes, limit: int) -> bytearray:
        method: grpc.UnaryStreamMultiCallable[bytes, bytes]
        method = self._channel.unary_stream(f"/{SERVICE}/{name}")
        return join(method(request, timeout=TIMEOUT), limit)

    def unary(self, name: str, request: bytes) -> bytes:
        method: grpc.UnaryUnaryMultiCallable[bytes, bytes]
        method = self._channel.unary_unary(f"/{SERVICE}/{name}")
        return method(request, timeout=TIMEOUT)

    def close(self) -> None:
        self._channel.close()


Move = Callable[[int], dict[str, float]]


def transfers(client: Client | PlainClient, payload: bytes) -> dict[str, Move]:
    """An upload and a download of ``size`` bytes, each checking the size that arrived and
    answering its phases (seconds, see the module docstring) and the server's CPU
    seconds (``server_cpu``), both asked of the server after the transfer."""
    view = memoryview(payload)

    def report() -> dict[str, float]:
        return {k: float(v) for k, v in json.loads(client.unary("Marks", b"")).items()}

    def upload(size: int) -> dict[str, float]:
        before = report()["cpu"]
        began = time.perf_counter()
        got = int(client.upload("Put", view[:size]))
        ended = time.perf_counter()
        if got != size:
            raise RuntimeError(f"upload: the server received {got} bytes, not {size}")
        marks = report()
        return {**phases(began, marks["first"], marks["last"], ended),
                "server_cpu": marks["cpu"] - before}  # fmt: skip

    def download(size: int) -> dict[str, float]:
        before = report()["cpu"]
        began = time.perf_counter()
        got = len(client.download("Get", str(size).encode(), limit=size))
        ended = time.perf_counter()
        if got != size:
            raise RuntimeError(f"download: received {got} bytes, not {size}")
        marks = report()
        return {**phases(began, marks["first"], marks["last"], ended),
                "server_cpu": marks["cpu"] - before}  # fmt: skip

    return {"upload": upload, "download": download}


def phases(began: float, first: float, last: float, ended: float) -> dict[str, float]:
    return {"first": first - began, "stream": last - first, "tail": ended - last,
            "total": ended - began}  # fmt: skip


def thread_cpu() -> Counter[str]:
    """CPU nanoseconds so far of this process's Python threads and gRPC's C threads
    (Linux; empty elsewhere). gRPC names its threads; Python threads keep the
    process's name."""
    found: Counter[str] = Counter()
    proc = Path("/proc/self")
    try:
        own = (proc / "comm").read_text().strip()
        tasks = list((proc / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        found["python" if name == own else "gRPC C"] += ns
    return found


def peer_check_cost(creds: Credentials, calls: int = 2000) -> tuple[float, float]:
    """Microseconds per ``PeerPolicy.check``: parsing the certificate every time, and cached."""
    pem = creds.cert_pem
    fresh = PeerPolicy("bench", {"collab"})
    began = time.perf_counter()
    for _ in range(calls):
        fresh.parsed = type(fresh.parsed)()  # an empty cache: the certificate is parsed
        fresh.check(pem)
    parsed = (time.perf_counter() - began) / calls * 1e6
    began = time.perf_counter()
    for _ in range(calls):
        fresh.check(pem)
    return parsed, (time.perf_counter() - began) / calls * 1e6


def start_servers(creds: Credentials, size: int) -> tuple[Callable[[], None], int, int]:
    """The mTLS and the plaintext server, serving a payload of ``size`` bytes: a function
    that stops both, and their ports."""
    handlers = Handlers(make_payload(size))
    tls_server = Server(creds, PeerPolicy("bench", {"collab"}))
    tls_server.upload("Put", handlers.put)
    tls_server.download("Get", handlers.get)
    tls_server.unary("Marks", handlers.report)
    tls_port = tls_server.start()
    server, port = plain_server(handlers)

    def stop() -> None:
        tls_server.stop()
        server.stop(1.0).wait()

    return stop, tls_port, port


def serve(folder: Path, size: int) -> None:
    """``--serve``: the servers in this process, with the credentials the benchmark wrote
    to ``folder``; prints their ports as one JSON line, stops when stdin closes."""
    doc = json.loads((folder / "server.json").read_text())
    creds = Credentials(**{k: v.encode() for k, v in doc.items()})
    stop, tls_port, port = start_servers(creds, size)
    print(json.dumps({"mTLS": tls_port, "plain": port}), flush=True)
    sys.stdin.read()
    stop()


def server_process(creds: Credentials, size: int) -> tuple[Callable[[], None], int, int]:
    """:func:`start_servers` in a process of its own (``--serve``)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-transport-"))
    (folder / "server.json").write_text(json.dumps({
        "key_pem": creds.key_pem.decode(), "cert_pem": creds.cert_pem.decode(),
        "ca_pem": creds.ca_pem.decode(),
    }))  # fmt: skip
    os.chmod(folder / "server.json", 0o600)  # a key, if only a benchmark's
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(folder), "--serve-size", str(size)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    line = child.stdout.readline()
    (folder / "server.json").unlink()
    folder.rmdir()
    if not line:
        child.wait()
        raise SystemExit("the server process did not start")
    ports = json.loads(line)

    def stop() -> None:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()

    return stop, int(ports["mTLS"]), int(ports["plain"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4,16,64,256", help="payload sizes in MiB, commas")
    parser.add_argument("--repeat", type=int, default=5, help="transfers per size and direction")
    parser.add_argument(
        "--one-process", action="store_true", help="client and servers in one process"
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.serve_size)
        return
    sizes = [int(s) * MIB for s in args.sizes.split(",")]
    where = "one process" if args.one_process else "servers in a process of their own"
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"grpcio {grpc.__version__}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"payloads {args.sizes} MiB, {args.repeat} transfers each way, "
        f"chunks of {CHUNK_SIZE // 1024} KiB, loopback, {where}"
    )

    authority = sv.generate(
        CaSecret(name="bench", kind="x509-ca", common_name="bench CA"), {}, datetime.now(UTC)
    )
    payload = make_payload(max(sizes))
    start = start_servers if args.one_process else server_process
    stop_servers, tls_port, port = start(identity(authority, "aggregator"), max(sizes))
    collab = identity(authority, "collab")
    tls_client = Client(f"127.0.0.1:{tls_port}", collab, server_name="aggregator", timeout=TIMEOUT)
    plain_client = PlainClient(f"127.0.0.1:{port}")
    runs = {"mTLS": transfers(tls_client, payload), "plain": transfers(plain_client, payload)}
    seen: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    cpu: dict[tuple[str, str, int], list[float]] = {}
    threads: dict[tuple[str, str], Counter[str]] = {}
    moved: Counter[tuple[str, str]] = Counter()
    start = time.perf_counter()
    try:
        for transport in runs.values():  # open the channels: handshakes are not timed
            for move in transport.values():
                move(MIB)
        for size in sizes:
            for repeat in range(args.repeat):
                for direction in ("upload", "download"):
                    order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
                    for name in order:
                        before, began = thread_cpu(), time.process_time()
                        figures = runs[name][direction](size)
                        used, after = time.process_time() - began, thread_cpu()
                        if not args.one_process:  # (in one process, counted already)
                            used += figures["server_cpu"]
                        seen.setdefault((name, direction, size), []).append(figures)
                        cpu.setdefault((name, direction, size), []).append(used / (size / MIB))
                        if size >= 16 * MIB:
                            after.subtract(before)
                            threads.setdefault((name, direction), Counter()).update(after)
                            moved[(name, direction)] += size // MIB
    finally:
        tls_client.close()
        plain_client.close()
        stop_servers()
    total = time.perf_counter() - start

    def rates(name: str, direction: str, size: int) -> list[float]:
        return [size / f["total"] / MB for f in seen[(name, direction, size)]]

    print(
        f"{'size':>8}  {'direction':<9} {'mTLS best':>10} {'median':>8}  "
        f"{'plain best':>10} {'median':>8}  {'ratio':>5} {'paired':>6}   (MB/s)"
    )
    for size in sizes:
        for direction in ("upload", "download"):
            tls, plain = rates("mTLS", direction, size), rates("plain", direction, size)
            paired = statistics.median(t / p for t, p in zip(tls, plain, strict=True))
            print(
                f"{size // MIB:>4} MiB  {direction:<9} {max(tls):10.0f} "
                f"{statistics.median(tls):8.0f}  {max(plain):10.0f} "
                f"{statistics.median(plain):8.0f}  {max(tls) / max(plain):5.2f} {paired:6.2f}"
            )
    print(f"all transfers: {total:.1f} s")

    print("\nphases (median ms; see the module docstring) and process CPU per MiB moved")
    print(f"{'size':>8}  {'direction':<9} {'transport':<9} " + " ".join(f"{p:>7}" for p in PHASES)
          + f" {'total':>7} {'CPU ms/MiB':>11}")  # fmt: skip
    for size in sizes:
        for direction in ("upload", "download"):
            for name in runs:
                each = seen[(name, direction, size)]
                cells = " ".join(
                    f"{statistics.median(f[p] for f in each) * 1e3:7.1f}"
                    for p in (*PHASES, "total")
                )
                per_mib = statistics.median(cpu[(name, direction, size)]) * 1e3
                print(f"{size // MIB:>4} MiB  {direction:<9} {name:<9} {cells} {per_mib:11.2f}")
    if threads:
        print("\nCPU ms per MiB by thread of this (the client's) process, transfers of 16 MiB "
              "and more")  # fmt: skip
        for (name, direction), ns in sorted(threads.items()):
            per = {k: v / 1e6 / moved[(name, direction)] for k, v in ns.items()}
            split = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()))
            print(f"  {name:<6} {direction:<9} {split}")

    parsed, cached = peer_check_cost(collab)
    print(f"\npeer check: {parsed:.1f} us parsing the certificate, {cached:.1f} us cached")
    largest = max(sizes)
    for direction in ("download", "upload"):
        best = max(rates("mTLS", direction, largest))
        plain_best = max(rates("plain", direction, largest))
        print(
            f"mTLS {direction} {largest // MIB} MiB: {best:.0f} MB/s "
            f"(plaintext {plain_best:.0f} MB/s, ratio {best / plain_best:.2f})"
        )


if __name__ == "__main__":
    main()
