"""A model's tensors as numpy arrays: torch conversion, and the checks every update passes.

Every tensor secfl handles is a C-contiguous, little-endian numpy array of a dtype
that numpy and safetensors share (:data:`_DTYPES`); torch tensors are converted at
the edge (:func:`as_array`, :func:`state_dict_arrays`, :func:`load_arrays`), and torch
is never imported here unless the caller already has.

:func:`check_like` compares an update with the model it claims to update (names,
shapes, dtypes) and refuses NaN/Inf and values beyond :data:`MAX_FLOAT` /
:data:`MAX_INT`; the aggregator runs it on every update it receives, so a bad update
is dropped without harming the round. Kept apart from the byte format
(:mod:`secfl.fl._tensors`) because the aggregation rules check arrays they never
serialize.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from secfl._internal.values import quoted
from secfl.errors import FlError

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_FLOAT",
    "MAX_INT",
    "all_finite",
    "as_array",
    "check_like",
    "load_arrays",
    "nbytes",
    "state_dict_arrays",
    "within_bounds",
]

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
