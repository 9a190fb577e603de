"""The federation's messages: a small JSON header, optionally followed by a payload.

Every call between a collaborator and the aggregator carries one framed message::

    hlen     4 bytes  big-endian length of the header (at most 64 KiB)
    header   hlen     JSON object (UTF-8)
    payload  rest     a signed model (aggregator -> collaborator) or an update as
                      safetensors bytes (collaborator -> aggregator); may be empty

The header says what the message is (``kind``) and carries small values (round,
config, sample count, metrics). Payloads are never JSON and never pickle.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import Any

from secfl._internal.canonical import canonical_json
from secfl._internal.values import describe
from secfl.errors import FlError
from secfl.fl._chunks import chunks
from secfl.fl._untrusted import parse_json

__all__ = [
    "DONE",
    "JOIN",
    "MAX_HEADER",
    "MAX_METRICS",
    "MAX_METRIC_NAME",
    "NEXT",
    "SUBMIT",
    "SUBMIT_NEXT",
    "TRAIN",
    "WAIT",
    "decode",
    "encode",
    "field",
    "header_bytes",
    "metric_values",
    "sample_count",
    "stream",
]

MAX_HEADER = 64 << 10
#: Most metrics one update may report, and the longest name of one.
MAX_METRICS = 64
MAX_METRIC_NAME = 64

# Method names on the transport (secfl.fl.Federation/<name>).
JOIN = "Join"
NEXT = "Next"
SUBMIT = "Submit"
#: ``Submit`` then ``Next`` on one call: the update up, its answer and the next
#: instruction down (a round's two calls in one; each call costs both sides a few
#: threads' hops).
SUBMIT_NEXT = "SubmitNext"

# What the aggregator answers a collaborator asking for work.
TRAIN = "train"
WAIT = "wait"
DONE = "done"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise FlError("message: a number in the header is NaN or infinite")
    if isinstance(value, dict):
        for v in value.values():
            _finite(v)
    if isinstance(value, list):
        for v in value:
            _finite(v)
    return value


def header_bytes(header: dict[str, Any]) -> bytes:
    """The length-prefixed JSON header (refuses NaN/Inf, which JSON cannot carry)."""
    raw = canonical_json(_finite(header))
    if len(raw) > MAX_HEADER:
        raise FlError(f"message: header of {len(raw)} bytes is larger than {MAX_HEADER}")
    return struct.pack(">I", len(raw)) + raw


def encode(header: dict[str, Any], payload: bytes | bytearray | memoryview = b"") -> bytes:
    """One message as bytes (small payloads; stream large ones with :func:`stream`)."""
    return header_bytes(header) + bytes(payload)


def stream(header: dict[str, Any], *payload: bytes | bytearray | memoryview) -> Iterator[bytes]:
    """The message as transport-sized pieces, never concatenating the payload parts."""
    yield header_bytes(header)
    for part in payload:
        yield from chunks(part)


def decode(
    message: bytes | bytearray | memoryview, kind: str | None = None
) -> tuple[dict[str, Any], memoryview]:
    """The header and payload of ``message``; with ``kind``, the header must say so."""
    view = memoryview(message)
    if len(view) < 4:
        raise FlError("message: shorter than its length prefix")
    (hlen,) = struct.unpack(">I", view[:4])
    if hlen > MAX_HEADER or 4 + hlen > len(view):
        raise FlError(f"message: header length {hlen} is out of range")
    header = parse_json(bytes(view[4 : 4 + hlen]), "message: the header")
    if not isinstance(header, dict):
        raise FlError("message: the header is not a JSON object")
    if kind is not None and header.get("kind") != kind:
        raise FlError(f"message: expected a '{kind}' message, got {header.get('kind')!r:.60}")
    return header, view[4 + hlen :]


def field(header: dict[str, Any], name: str, typ: type | tuple[type, ...]) -> Any:
    """``header[name]`` if it has type ``typ`` (bool is never an int here)."""
    value = header.get(name)
    if isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        value = None
    if not isinstance(value, typ):
        raise FlError(f"message: field '{name}' is missing or has the wrong type")
    return value


def sample_count(header: dict[str, Any], limit: int, *, name: str = "samples") -> int:
    """``header[name]``: a real integer (not a bool, not a float) from 1 to ``limit``
    (the policy's ``max_samples``): it weighs a peer's update against everyone else's."""
    value = header.get(name)
    if type(value) is not int or not 1 <= value <= limit:
        raise FlError(
            f"samples: {describe(value)} is not an integer from 1 to {limit} "
            "(the policy's max_samples)"
        )
    return value


def metric_values(header: dict[str, Any]) -> dict[str, float]:
    """``header["metrics"]`` (absent: none) as finite floats under short names, at most
    MAX_METRICS of them."""
    metrics = header.get("metrics", {})
    if not isinstance(metrics, dict):
        raise FlError(f"metrics: {describe(metrics)} is not a mapping of names to numbers")
    if len(metrics) > MAX_METRICS:
        raise FlError(f"metrics: {len(metrics)} metrics, at most {MAX_METRICS}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if len(key) > MAX_METRIC_NAME:
            raise FlError(
                f"metrics: a metric name of {len(key)} characters, at most {MAX_METRIC_NAME}"
            )
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = None
        if number is None or not math.isfinite(number):
            raise FlError(f"metrics: {key!r} is not a finite number ({describe(value)})")
        out[key] = number
    return out
