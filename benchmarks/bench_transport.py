"""Update transfer throughput over mutual TLS on loopback, against plaintext gRPC, in one run.

Run: ``.venv/bin/python benchmarks/bench_transport.py [--sizes 16,64,256] [--repeat 3]``.

A fresh policy CA issues an aggregator and a collaborator certificate (as the SPM
does after attestation). A ``secfl.fl._transport.Server`` listens on 127.0.0.1 with
an upload method (``join`` the stream, answer its length) and a download method
(the payload streamed in ``CHUNK_SIZE`` pieces); a ``Client`` uploads and downloads
payloads of ``--sizes`` MiB, ``--repeat`` times each. For comparison, a plaintext
gRPC server and channel built the same way (generic handlers, the same message
limits, ``chunks`` and ``join`` on both ends, no TLS and no peer check) move the same
payloads in the same run, interleaved with the TLS transfers so that both see the
same machine load.

Server and client share one process (as in tests/fl/test_transport.py), so their
Python work shares the GIL; TLS records are encrypted and decrypted in gRPC's C
threads. One call of each kind before timing opens the channels (the TLS handshake
is not timed). MB/s counts payload bytes, 1 MB = 1e6 bytes. Printed per size and
direction: best and median MB/s for each transport and the TLS/plaintext ratio of
the best figures. It prints figures and asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from datetime import UTC, datetime

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secfl.fl._chunks import chunks
from secfl.fl._transport import (
    CHUNK_SIZE,
    MESSAGE_LIMIT,
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
OPTIONS = [
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
]
TIMEOUT = 600.0


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
    """The methods both servers run: Put (upload) and Get (download)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = memoryview(payload)

    def put(self, pieces: Iterator[bytes], _peer: object = None) -> bytes:
        return str(len(join(pieces, len(self.payload)))).encode()

    def get(self, request: bytes, _peer: object = None) -> Iterable[bytes]:
        size = int(request)
        return (
            bytes(self.payload[i : min(i + CHUNK_SIZE, size)]) for i in range(0, size, CHUNK_SIZE)
        )


def plain_server(handlers: Handlers) -> tuple[grpc.Server, int]:
    """A plaintext gRPC server with the transport's generic handlers and message limits."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    methods = {
        "Put": grpc.stream_unary_rpc_method_handler(lambda it, ctx: handlers.put(it)),
        "Get": grpc.unary_stream_rpc_method_handler(lambda req, ctx: handlers.get(req)),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


class PlainClient:
    """The plaintext counterpart of ``transport.Client.upload`` and ``download``."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target, options=OPTIONS)

    def upload(self, name: str, data: bytes | memoryview) -> bytes:
        method = self._channel.stream_unary(f"/{SERVICE}/{name}")
        return method(chunks(data), timeout=TIMEOUT)

    def download(self, name: str, request: bytes, limit: int) -> bytes:
        method = self._channel.unary_stream(f"/{SERVICE}/{name}")
        return join(method(request, timeout=TIMEOUT), limit)

    def close(self) -> None:
        self._channel.close()


def transfers(client: Client | PlainClient, payload: bytes) -> dict[str, Callable[[int], None]]:
    """An upload and a download of ``size`` bytes, each checking the size that arrived."""
    view = memoryview(payload)

    def upload(size: int) -> None:
        got = int(client.upload("Put", view[:size]))
        if got != size:
            raise RuntimeError(f"upload: the server received {got} bytes, not {size}")

    def download(size: int) -> None:
        got = len(client.download("Get", str(size).encode(), limit=size))
        if got != size:
            raise RuntimeError(f"download: received {got} bytes, not {size}")

    return {"upload": upload, "download": download}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,64,256", help="payload sizes in MiB, commas")
    parser.add_argument("--repeat", type=int, default=3, help="transfers per size and direction")
    args = parser.parse_args()
    sizes = [int(s) * MIB for s in args.sizes.split(",")]
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"grpcio {grpc.__version__}"
    )
    print(
        f"payloads {args.sizes} MiB, {args.repeat} transfers each way, "
        f"chunks of {CHUNK_SIZE // 1024} KiB, loopback, one process"
    )

    authority = sv.generate(
        CaSecret(name="bench", kind="x509-ca", common_name="bench CA"), {}, datetime.now(UTC)
    )
    payload = make_payload(max(sizes))
    handlers = Handlers(payload)
    tls_server = Server(identity(authority, "aggregator"), PeerPolicy("bench", {"collab"}))
    tls_server.upload("Put", handlers.put)
    tls_server.download("Get", handlers.get)
    tls_port = tls_server.start()
    server, port = plain_server(handlers)
    tls_client = Client(
        f"127.0.0.1:{tls_port}",
        identity(authority, "collab"),
        server_name="aggregator",
        timeout=TIMEOUT,
    )
    plain_client = PlainClient(f"127.0.0.1:{port}")
    runs = {"mTLS": transfers(tls_client, payload), "plain": transfers(plain_client, payload)}
    rates: dict[tuple[str, str, int], list[float]] = {}
    start = time.perf_counter()
    try:
        for transport in runs.values():  # open the channels: handshakes are not timed
            for move in transport.values():
                move(MIB)
        for size in sizes:
            for _ in range(args.repeat):
                for name, transport in runs.items():
                    for direction, move in transport.items():
                        began = time.perf_counter()
                        move(size)
                        seconds = time.perf_counter() - began
                        rates.setdefault((name, direction, size), []).append(size / seconds / MB)
    finally:
        tls_client.close()
        plain_client.close()
        tls_server.stop()
        server.stop(1.0).wait()
    total = time.perf_counter() - start

    print(
        f"{'size':>8}  {'direction':<9} {'mTLS best':>10} {'median':>8}  "
        f"{'plain best':>10} {'median':>8}  {'ratio':>5}   (MB/s)"
    )
    for size in sizes:
        for direction in ("upload", "download"):
            tls = rates[("mTLS", direction, size)]
            plain = rates[("plain", direction, size)]
            print(
                f"{size // MIB:>4} MiB  {direction:<9} {max(tls):10.0f} "
                f"{statistics.median(tls):8.0f}  {max(plain):10.0f} "
                f"{statistics.median(plain):8.0f}  {max(tls) / max(plain):5.2f}"
            )
    print(f"all transfers: {total:.1f} s")
    largest = max(sizes)
    for direction in ("download", "upload"):
        tls = max(rates[("mTLS", direction, largest)])
        plain = max(rates[("plain", direction, largest)])
        print(
            f"mTLS {direction} {largest // MIB} MiB: {tls:.0f} MB/s "
            f"(plaintext {plain:.0f} MB/s, ratio {tls / plain:.2f})"
        )


if __name__ == "__main__":
    main()
