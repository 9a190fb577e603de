"""Models and updates as safetensors bytes, never pickle, and their checks.

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

:func:`check_like` compares an update with the model it claims to update (names,
shapes, dtypes) and refuses NaN/Inf; the aggregator runs it on every update it
receives, so a bad update is dropped without harming the round.

Streaming these buffers in pieces is :mod:`secfl.fl._chunks`.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from secfl._internal.canonical import unique_keys
from secfl._internal.values import quoted
from secfl.errors import FlError

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
#: Elements per block when scanning a tensor for NaN/Inf (bounded scratch memory).
_SCAN_BLOCK = 1 << 18

#: safetensors dtype code -> little-endian numpy dtype. BF16 and the FP8 types have
#: no numpy equivalent and are refused.
_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_SUPPORTED = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}


# --- numpy <-> torch -----------------------------------------------------------------------


def _torch_module() -> Any:
    """torch if it is already imported (no value can be a torch tensor otherwise)."""
    return sys.modules.get("torch")


def as_array(value: Any, name: str) -> np.ndarray:
    """``value`` (numpy array or torch tensor) as a C-contiguous numpy array of a
    dtype safetensors and numpy share; :class:`FlError` naming ``name`` otherwise."""
    torch = _torch_module()
    if torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        try:
            value = tensor.numpy()
        except TypeError:
            raise FlError(
                f"tensors: tensor '{name}' has dtype {tensor.dtype}, which numpy cannot hold "
                "(convert it, e.g. bfloat16 to float32)"
            ) from None
    if not isinstance(value, np.ndarray):
        raise FlError(f"tensors: '{name}' is a {type(value).__name__}, not an array or tensor")
    if value.dtype.newbyteorder("=") not in _SUPPORTED:
        raise FlError(f"tensors: tensor '{name}' has unsupported dtype {value.dtype}")
    if value.dtype.byteorder == ">":  # safetensors is little-endian
        value = value.astype(value.dtype.newbyteorder("<"))
    return value if value.flags.c_contiguous else value.copy(order="C")  # keeps 0-d shapes


def _np_dtype(value: Any) -> np.dtype[Any]:
    """The numpy dtype of an array or a torch tensor (without converting its data)."""
    torch = _torch_module()
    if torch is not None and isinstance(value, torch.Tensor):
        try:
            return np.dtype(torch.empty((), dtype=value.dtype).numpy().dtype)
        except TypeError:
            raise FlError(f"tensors: dtype {value.dtype} has no numpy equivalent") from None
    return np.dtype(value.dtype)


def state_dict_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's ``state_dict`` (parameters and buffers) as independent numpy copies,
    so that later training does not change the snapshot."""
    out: dict[str, np.ndarray] = {}
    for name, tensor in model.state_dict().items():
        out[name] = np.array(as_array(tensor, name), copy=True)
    return out


def load_arrays(model: torch.nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into the model's parameters and buffers, in place.

    ``arrays`` must name exactly the model's ``state_dict`` entries with the same
    shapes and dtypes, all finite (:func:`check_like`); nothing is changed otherwise.
    """
    import torch

    current = model.state_dict()
    check_like(arrays, current, what="model")
    with torch.no_grad():
        for name, target in current.items():
            source = arrays[name]
            if not source.flags.writeable:  # torch warns about read-only numpy memory
                source = np.array(source, copy=True)
            target.copy_(torch.from_numpy(source))


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


# --- checks -------------------------------------------------------------------------------


def all_finite(array: np.ndarray) -> bool:
    """Whether ``array`` holds no NaN or ±Inf, scanning in blocks (bounded scratch)."""
    if array.dtype.kind not in "fc":
        return True
    flat = array.reshape(-1)
    if flat.size <= _SCAN_BLOCK:
        return bool(np.isfinite(flat).all())
    scratch = np.empty(_SCAN_BLOCK, dtype=bool)
    for begin in range(0, flat.size, _SCAN_BLOCK):
        block = flat[begin : begin + _SCAN_BLOCK]
        out = scratch[: block.size]
        np.isfinite(block, out=out)
        if not out.all():
            return False
    return True


#: The largest magnitude a floating-point value may have in an update or a model
#: (2**100, about 1.3e30: far beyond any weight). Beyond it, a rule's distances and
#: norms overflow float64: one finite 1e155 stopped Krum, Bulyan, FLTrust and the
#: clone audit, round after round.
MAX_FLOAT = 2.0**100
#: The largest magnitude of an integer value (counters such as BatchNorm's
#: ``num_batches_tracked``): 2**52, what float64 holds exactly, as the robust rules
#: and the exact sums compute with it (INT64_MAX came out of Multi-Krum as INT64_MIN).
MAX_INT = 2**52


def within_bounds(array: np.ndarray) -> bool:
    """Whether ``array`` holds only finite values within :data:`MAX_FLOAT` (floating
    point) or :data:`MAX_INT` (integers), scanning in blocks (no scratch)."""
    kind = array.dtype.kind
    if kind == "f":
        low, high = -MAX_FLOAT, MAX_FLOAT
    elif kind in "iu" and array.dtype.itemsize >= 8:
        low, high = -MAX_INT, MAX_INT
    elif kind == "c":
        return all_finite(array)
    else:
        return True
    flat = array.reshape(-1)
    for begin in range(0, flat.size, _SCAN_BLOCK):
        block = flat[begin : begin + _SCAN_BLOCK]
        # compared as Python numbers: 2**100 as a float16 would be Inf, and Inf <= Inf
        if not (low <= block.min().item() and block.max().item() <= high):  # NaN fails
            return False
    return True


def check_like(
    update: Mapping[str, Any], reference: Mapping[str, Any], *, what: str, finite: bool = True
) -> None:
    """Refuse ``update`` unless it has exactly ``reference``'s tensor names, shapes and
    dtypes and (with ``finite``, the default) holds no NaN/Inf and nothing beyond
    :func:`within_bounds`'s limits. ``reference`` values
    may be numpy arrays or torch tensors (only their shape and dtype are read). The
    error names ``what`` and the first offending tensor."""
    if not isinstance(update, Mapping):
        raise FlError(f"{what}: expected a mapping of tensors, got {type(update).__name__}")
    missing = [name for name in reference if name not in update]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FlError(f"{what}: tensor '{missing[0]}' is missing{more}")
    extra = [name for name in update if name not in reference]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise FlError(f"{what}: unexpected tensor {quoted(extra[0])}{more}")
    for name, ref in reference.items():
        value = update[name]
        if not isinstance(value, np.ndarray):
            raise FlError(f"{what}: tensor '{name}' is a {type(value).__name__}, not an array")
        want_shape = tuple(ref.shape)
        if value.shape != want_shape:
            raise FlError(
                f"{what}: tensor '{name}' has shape {value.shape}, the model has {want_shape}"
            )
        want_dtype = _np_dtype(ref)
        if value.dtype != want_dtype:
            raise FlError(
                f"{what}: tensor '{name}' has dtype {value.dtype}, the model has {want_dtype}"
            )
        if finite and not within_bounds(value):
            if not all_finite(value):
                raise FlError(f"{what}: tensor '{name}' holds NaN or Inf")
            limit = "±2^52 (an integer tensor)" if value.dtype.kind in "iu" else "±2^100"
            raise FlError(f"{what}: tensor '{name}' holds a value beyond {limit}")


def nbytes(params: Mapping[str, np.ndarray]) -> int:
    """Total size of the tensors' data in bytes (the "model size" of memory targets)."""
    return sum(int(a.nbytes) for a in params.values())
