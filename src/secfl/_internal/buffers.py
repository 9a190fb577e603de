"""Immutable byte buffers without a second copy.

A model of hundreds of MiB is signed, sent, checkpointed and kept as the global
model; each of those used to take ``bytes(...)`` of it "to be sure it cannot
change", a full copy each time. ``bytes`` cannot change, and neither can a
read-only ``memoryview`` whose writable views are gone (what the aggregator makes
the next model in: ``FedAvgAccumulator.finish_into``), so :func:`frozen` keeps
those as they are and copies only what could still be written to.
"""

from __future__ import annotations

__all__ = ["Frozen", "frozen"]

#: What :func:`frozen` returns: bytes, or a read-only view nothing writes through.
Frozen = bytes | memoryview


def frozen(data: bytes | bytearray | memoryview) -> Frozen:
    """``data`` if it is ``bytes`` or a read-only ``memoryview``, else a ``bytes`` copy."""
    if type(data) is bytes or (isinstance(data, memoryview) and data.readonly):
        return data
    return bytes(data)
