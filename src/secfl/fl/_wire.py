"""What both ends of the federation's transport agree on: the service name, the
chunk and message sizes, the insecure mode's name and warning, the TLS identity each
side presents, and reassembling a streamed payload within a bound."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from secfl.errors import FlError, TransportError
from secfl.fl._chunks import DEFAULT_CHUNK_SIZE, Reassembler

__all__ = [
    "CHUNK_SIZE",
    "INSECURE_NAME",
    "INSECURE_WARNING",
    "MESSAGE_LIMIT",
    "SERVICE",
    "WHO",
    "WHOLE",
    "Credentials",
    "join",
]

SERVICE = "secfl.fl.Federation"
#: The size large payloads stream in (``_chunks.DEFAULT_CHUNK_SIZE``, 1 MiB). Measured
#: on loopback (benchmarks/bench_transport.py), 2 MiB moves no faster and 4 MiB or
#: more slows a 16 MiB transfer: a bigger message waits longer before the next stage
#: of the pipeline (encrypt, send, decrypt, copy out) can start on it.
CHUNK_SIZE = DEFAULT_CHUNK_SIZE
#: gRPC's per-message limit, kept just above one chunk: large data must stream.
MESSAGE_LIMIT = CHUNK_SIZE + (64 << 10)
#: The name suffix of an exchange whose request is one message (see :meth:`Client.exchange`).
WHOLE = "Whole"
#: The method a secure server answers with the serial (hex) of the certificate it
#: presents: a caller pins it (:mod:`secfl.fl._pin`).
WHO = "Who"
#: Metadata key naming the caller in --insecure mode (unauthenticated).
INSECURE_NAME = "secfl-insecure-peer"
INSECURE_WARNING = (
    "INSECURE MODE: plaintext gRPC, no TEE, no SPM, no attestation - for measuring "
    "overhead only, never for real data"
)


def join(pieces: Iterable[bytes], limit: int) -> bytearray:
    """Reassemble streamed pieces, refusing more than ``limit`` bytes in total (one
    buffer, no second copy: a large update costs its size once)."""
    whole = Reassembler(limit)
    try:
        whole.extend(pieces)
        return whole.finish()
    except FlError as exc:
        raise TransportError(f"message: {exc}") from None


@dataclass(frozen=True)
class Credentials:
    """This side's TLS identity from the SPM, and the policy's CA."""

    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
