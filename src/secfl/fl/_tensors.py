"""Models and updates as safetensors bytes, never pickle.

Everything that crosses a trust boundary (a collaborator's update, a global model,
a checkpoint) is a `safetensors <https://github.com/huggingface/safetensors>`_
buffer: an 8-byte little-endian header length, a JSON header (tensor names,
dtypes, shapes, byte offsets and an optional ``__metadata__`` map of strings), then
the raw little-endian tensor data. The format holds no code, so loading an
attacker's buffer can at worst fail; :func:`from_bytes` makes sure it fails with a
:class:`~secfl.errors.FlError`, never another exception, and refuses oversized input
before reading it.

:func:`from_bytes` first validates the header itself (strictly: a JSON object
without duplicate keys, known dtypes, offsets that tile the data exactly), then
either lets ``safetensors.numpy.load`` copy the tensors out (``copy=True``, the
default: writable arrays, independent of the input) or returns read-only numpy
views into the input (``copy=False``: no second copy of a large update in memory,
which is what the aggregator wants for a 1 GB model).

:func:`~secfl.fl._arrays.check_like` (re-exported here) compares an update with the
model it claims to update; the arrays' side (torch conversion, checks) is
:mod:`secfl.fl._arrays`. Streaming these buffers in pieces is :mod:`secfl.fl._chunks`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from secfl._internal.canonical import unique_keys
from secfl._internal.values import quoted
from secfl.errors import FlError
from secfl.fl._arrays import (
    _DTYPES,
    all_finite,
    as_array,
    check_like,
    load_arrays,
    nbytes,
    state_dict_arrays,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_HEADER_BYTES",
    "Layout",
    "all_finite",
    "as_array",
    "check_like",
    "from_bytes",
    "header_allowance",
    "header_layout",
    "load_arrays",
    "nbytes",
    "parse_header_json",
    "state_dict_arrays",
    "to_bytes",
]

#: Default ceiling of a serialized model or update (16 GiB); callers pass a tighter one.
DEFAULT_MAX_BYTES = 16 << 30
#: Ceiling of a safetensors JSON header: ~100 bytes per tensor, so ~160k tensors.
MAX_HEADER_BYTES = 16 << 20
#: Room in an update's header beyond its tensors' entries (its metadata, spacing).
_HEADER_SLACK = 64 << 10
#: An entry's bytes besides its name and dimensions, offsets at their widest:
#: ``:{"dtype":"BF16","shape":[],"data_offsets":[N,N]},``
_ENTRY_BYTES = 90
#: Most dimensions a tensor may have, and the largest byte extent of its non-zero dims.
_MAX_DIMS = 32
_MAX_EXTENT = 1 << 62


# --- serialization -------------------------------------------------------------------------


def to_bytes(
    params: Mapping[str, np.ndarray | torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """``params`` as a safetensors buffer, with ``metadata`` (strings only) in its header."""
    import safetensors.numpy

    if not isinstance(params, Mapping):
        raise FlError(f"tensors: params must be a mapping, not {type(params).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise FlError(f"tensors: invalid tensor name {name!r}")
        arrays[name] = as_array(value, name)
    meta: dict[str, str] | None = None
    if metadata is not None:
        meta = {}
        for key, text in metadata.items():
            if not isinstance(key, str) or not isinstance(text, str):
                raise FlError(f"tensors: metadata must map strings to strings ({key!r})")
            meta[key] = text
    try:
        return safetensors.numpy.save(arrays, metadata=meta)
    except Exception as exc:  # the library's own refusal, e.g. an impossible layout
        raise FlError(f"tensors: cannot serialize: {exc}") from None


_no_duplicates = unique_keys(
    lambda key: FlError(f"tensors: malformed header: key {quoted(key)} appears twice")
)


def header_allowance(params: Mapping[str, np.ndarray]) -> int:
    """The most header bytes an update of tensors like ``params`` needs: each one's
    entry at its widest, twice over, and 64 KiB (never more than
    :data:`MAX_HEADER_BYTES`). A peer's header past it is refused before it is parsed:
    a 16 MiB header of many small tensors cost seconds of CPU before its names were
    found not to be the model's."""
    entries = sum(
        len(json.dumps(name)) + _ENTRY_BYTES + 21 * len(array.shape)
        for name, array in params.items()
    )
    return min(MAX_HEADER_BYTES, 2 * entries + _HEADER_SLACK)


def _parse_header(
    data: bytes | bytearray | memoryview, max_bytes: int, max_header: int = MAX_HEADER_BYTES
) -> tuple[int, Layout, dict[str, str]]:
    """Validate a safetensors buffer without touching its tensor data.

    Returns (data start, {name: (dtype, shape, begin, end)}, metadata). The offsets
    must tile the data section exactly (no gap, overlap or trailing byte), so there
    is one and only one way to read the buffer.
    """
    size = len(data)
    if size > max_bytes:
        raise FlError(f"tensors: {size} bytes exceed the limit of {max_bytes}")
    if size < 8:
        raise FlError(f"tensors: malformed: {size} bytes is too short for a safetensors header")
    (header_len,) = struct.unpack_from("<Q", data, 0)
    if header_len > min(size - 8, MAX_HEADER_BYTES):
        raise FlError(f"tensors: malformed: header length {header_len} does not fit")
    if header_len > max_header:
        raise FlError(
            f"tensors: the header's {header_len} bytes exceed the {max_header} that the "
            "model's tensors need"
        )
    start = 8 + header_len
    entries, metadata = parse_header_json(data[8:start], size - start)
    return start, entries, metadata


Layout = dict[str, tuple[np.dtype[Any], tuple[int, ...], int, int]]


def header_layout(data: bytes | bytearray | memoryview) -> tuple[int, Layout]:
    """Where a (trusted, already checked) safetensors buffer's values start, and its
    tensors' ``{name: (dtype, shape, begin, end)}`` relative to that start."""
    start, entries, _ = _parse_header(data, len(data))
    return start, entries


def parse_header_json(
    raw: bytes | bytearray | memoryview, data_len: int | None
) -> tuple[Layout, dict[str, str]]:
    """The tensors a safetensors header describes, ``{name: (dtype, shape, begin,
    end)}`` with offsets into a data section of ``data_len`` bytes that they must tile
    exactly, and its metadata. ``data_len=None`` (a streamed update, read from its
    header before its data has arrived: :mod:`secfl.fl._incoming`): the offsets must
    tile a section from 0 to their largest end."""
    try:
        text = bytes(raw).decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FlError("tensors: malformed: the header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise FlError("tensors: malformed: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FlError("tensors: malformed: __metadata__ must map strings to strings")
    entries: dict[str, tuple[np.dtype[Any], tuple[int, ...], int, int]] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FlError(f"tensors: malformed: entry of tensor {quoted(name)}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in _DTYPES:
            raise FlError(f"tensors: tensor {quoted(name)} has unsupported dtype {quoted(code)}")
        dtype = _DTYPES[code]
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(type(d) is int and d >= 0 for d in shape)
            # numpy refuses shapes whose non-zero extents overflow, even with a zero extent
            or math.prod(d for d in shape if d) * dtype.itemsize > _MAX_EXTENT
        ):
            raise FlError(f"tensors: malformed: shape of tensor {quoted(name)}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= (_MAX_EXTENT if data_len is None else data_len)
        ):
            raise FlError(f"tensors: malformed: data offsets of tensor {quoted(name)}")
        if math.prod(shape) * dtype.itemsize != offsets[1] - offsets[0]:
            raise FlError(
                f"tensors: malformed: tensor {quoted(name)} of shape {tuple(shape)} and dtype "
                f"{code} does not fill its {offsets[1] - offsets[0]} bytes"
            )
        entries[name] = (dtype, tuple(shape), offsets[0], offsets[1])
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if begin != position:
            raise FlError(
                f"tensors: malformed: tensor {quoted(name)} does not start at byte {position}"
            )
        position = end
    if data_len is not None and position != data_len:
        raise FlError(f"tensors: malformed: {data_len - position} bytes after the last tensor")
    return entries, metadata


def from_bytes(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_header: int = MAX_HEADER_BYTES,
    copy: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata of a safetensors buffer.

    Refuses (:class:`FlError`, and never another exception) a buffer larger than
    ``max_bytes``, a header longer than ``max_header`` (:func:`header_allowance`), a
    malformed one and one with a dtype numpy cannot hold. With
    ``copy=False`` the arrays are read-only views into ``data`` (which must then stay
    alive and unchanged); with ``copy=True`` they are writable copies.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FlError(f"tensors: expected bytes, got {type(data).__name__}")
    if isinstance(data, memoryview):
        data = data.cast("B") if data.ndim == 1 and data.contiguous else bytes(data)
    start, entries, metadata = _parse_header(data, max_bytes, max_header)
    if not copy:
        base = np.frombuffer(data, dtype=np.uint8)
        base.flags.writeable = False
        arrays = {
            name: base[start + begin : start + end].view(dtype).reshape(shape)
            for name, (dtype, shape, begin, end) in entries.items()
        }
        return arrays, dict(metadata)
    import safetensors.numpy

    try:
        loaded = safetensors.numpy.load(data if isinstance(data, bytes) else bytes(data))
    except BaseException as exc:  # includes pyo3's PanicException, a BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit | MemoryError):
            raise
        raise FlError(f"tensors: malformed: {type(exc).__name__}") from None
    if set(loaded) != set(entries):  # cannot happen after _parse_header; fail closed
        raise FlError("tensors: malformed: the library read other tensors than the header names")
    return loaded, dict(metadata)
