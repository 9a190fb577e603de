"""safetensors serialization, model checks and torch conversion."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfl.errors import FlError
from secfl.fl import _arrays
from secfl.fl import _tensors as tensors
from secfl.fl._tensors import (
    check_like,
    from_bytes,
    load_arrays,
    state_dict_arrays,
    to_bytes,
)


def sample_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "w32": rng.standard_normal((3, 4)).astype(np.float32),
        "w64": rng.standard_normal(5),
        "steps": np.arange(6, dtype=np.int64).reshape(2, 3),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "flags": np.array([True, False]),
        "half": np.array([1.5, -2.0], dtype=np.float16),
    }


def raw_safetensors(header: dict[str, object], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


# --- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("copy", [True, False])
def test_round_trip_keeps_names_values_dtypes_and_metadata(copy: bool) -> None:
    params = sample_params()
    data = to_bytes(params, metadata={"round": "3", "sender": "site-a"})
    loaded, metadata = from_bytes(data, copy=copy)
    assert metadata == {"round": "3", "sender": "site-a"}
    assert set(loaded) == set(params)
    for name, value in params.items():
        assert loaded[name].dtype == value.dtype, name
        assert loaded[name].shape == value.shape, name
        np.testing.assert_array_equal(loaded[name], value)
    writable = {a.flags.writeable for a in loaded.values()}
    assert writable == {copy}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@given(data=st.data())
@settings(max_examples=25, deadline=None)
def test_round_trip_property(dtype: type, data: st.DataObject) -> None:
    shape = data.draw(st.lists(st.integers(0, 5), max_size=3), label="shape")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        array = rng.standard_normal(shape).astype(dtype)
    else:
        array = rng.integers(-(2**62), 2**62, size=shape, dtype=dtype)
    loaded, _ = from_bytes(to_bytes({"t": array}))
    assert loaded["t"].dtype == array.dtype and loaded["t"].shape == array.shape
    np.testing.assert_array_equal(loaded["t"], array)


def test_torch_tensors_serialize_like_numpy() -> None:
    tensor = torch.arange(6, dtype=torch.float32, requires_grad=True).reshape(2, 3)
    loaded, _ = from_bytes(to_bytes({"t": tensor}))
    np.testing.assert_array_equal(loaded["t"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_non_contiguous_arrays_are_serialized() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T
    loaded, _ = from_bytes(to_bytes({"t": array}))
    np.testing.assert_array_equal(loaded["t"], array)


def test_big_endian_arrays_are_stored_little_endian() -> None:
    array = np.arange(5, dtype=">f8")
    loaded, _ = from_bytes(to_bytes({"t": array}))
    assert loaded["t"].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(loaded["t"], array)


def test_to_bytes_refusals() -> None:
    with pytest.raises(FlError, match="bfloat16"):
        to_bytes({"t": torch.zeros(2, dtype=torch.bfloat16)})
    with pytest.raises(FlError, match="unsupported dtype"):
        to_bytes({"t": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(FlError, match="not an array"):
        to_bytes({"t": [1.0, 2.0]})  # type: ignore[dict-item]
    with pytest.raises(FlError, match="invalid tensor name"):
        to_bytes({"__metadata__": np.zeros(1)})
    with pytest.raises(FlError, match="metadata"):
        to_bytes({"t": np.zeros(1)}, metadata={"k": 1})  # type: ignore[dict-item]


# --- refusals of malformed input ----------------------------------------------------------


def test_from_bytes_refuses_oversized_input_before_reading_it() -> None:
    data = to_bytes({"t": np.zeros(1000, dtype=np.float32)})
    from_bytes(data, max_bytes=len(data))
    with pytest.raises(FlError, match="exceed the limit"):
        from_bytes(data, max_bytes=len(data) - 1)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "too short"),
        (struct.pack("<Q", 1 << 40), "header length"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not UTF-8 JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (
            raw_safetensors({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b""),
            "data offsets",
        ),
        (
            raw_safetensors(
                {"t": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4
            ),
            "unsupported dtype",
        ),
        (
            raw_safetensors(
                {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4
            ),
            "does not fill",
        ),
        (
            raw_safetensors(
                {
                    "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                },
                b"\0" * 8,
            ),
            "does not start at byte",
        ),
        (
            raw_safetensors(
                {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 5
            ),
            "after the last tensor",
        ),
        (
            raw_safetensors(
                {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, b"\0" * 4
            ),
            "entry of tensor",
        ),
        (
            raw_safetensors({"__metadata__": {"k": 1}}, b""),
            "__metadata__",
        ),
        (
            struct.pack("<Q", 9) + b'{"a":{},"a":{}}'[:9],
            "not UTF-8 JSON",
        ),
    ],
)
def test_from_bytes_refuses_malformed_headers(blob: bytes, message: str) -> None:
    for copy in (True, False):
        with pytest.raises(FlError, match=message):
            from_bytes(blob, copy=copy)


def test_duplicate_header_keys_are_refused() -> None:
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    text = ('{"a":' + entry + ',"a":' + entry + "}").encode()
    blob = struct.pack("<Q", len(text)) + text + b"\0" * 4
    with pytest.raises(FlError, match="appears twice"):
        from_bytes(blob)


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_fuzz_random_bytes_only_raise_flerror(blob: bytes) -> None:
    for copy in (True, False):
        with contextlib.suppress(FlError):
            from_bytes(blob, copy=copy)


_VALID = to_bytes(
    {"a": np.arange(3, dtype=np.float32), "b": np.ones((2, 2), dtype=np.int64)},
    metadata={"k": "v"},
)


@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=st.integers(0, len(_VALID)),
    tail=st.binary(max_size=8),
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_valid_buffers_only_raise_flerror(
    edits: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    blob = bytearray(_VALID)
    for at, value in edits:
        blob[at] = value
    mutated = bytes(blob[:cut]) + tail
    results = []
    for copy in (True, False):
        try:
            results.append(from_bytes(mutated, copy=copy))
        except FlError:
            results.append(None)
    # both readings agree: either both refuse or both read the same tensors
    first, second = results
    assert (first is None) == (second is None)
    if first is not None and second is not None:
        assert first[1] == second[1]
        assert set(first[0]) == set(second[0])
        for name in first[0]:
            np.testing.assert_array_equal(first[0][name], second[0][name])


def test_bytearray_and_memoryview_inputs() -> None:
    data = to_bytes({"t": np.arange(4, dtype=np.float64)})
    for buffer in (bytearray(data), memoryview(data)):
        for copy in (True, False):
            loaded, _ = from_bytes(buffer, copy=copy)
            np.testing.assert_array_equal(loaded["t"], np.arange(4, dtype=np.float64))
    with pytest.raises(FlError, match="expected bytes"):
        from_bytes("text")  # type: ignore[arg-type]


# --- check_like ---------------------------------------------------------------------------


def test_check_like_accepts_a_matching_update() -> None:
    params = sample_params()
    check_like({k: v.copy() for k, v in params.items()}, params, what="update from a")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda u: u.pop("w32"), r"update from a: tensor 'w32' is missing"),
        (lambda u: u.__setitem__("extra", np.zeros(1)), r"unexpected tensor 'extra'"),
        (
            lambda u: u.__setitem__("w32", np.zeros((4, 3), np.float32)),
            r"tensor 'w32' has shape \(4, 3\), the model has \(3, 4\)",
        ),
        (
            lambda u: u.__setitem__("w32", np.zeros((3, 4), np.float64)),
            r"tensor 'w32' has dtype float64, the model has float32",
        ),
        (
            lambda u: u.__setitem__("steps", np.zeros((2, 3), np.int32)),
            r"tensor 'steps' has dtype int32",
        ),
        (lambda u: u["w64"].__setitem__(2, np.nan), r"tensor 'w64' holds NaN or Inf"),
        (lambda u: u["w32"].__setitem__((1, 1), np.inf), r"tensor 'w32' holds NaN or Inf"),
        (lambda u: u["half"].__setitem__(0, -np.inf), r"tensor 'half' holds NaN or Inf"),
        (lambda u: u.__setitem__("w32", "nope"), r"tensor 'w32' is a str"),
    ],
)
def test_check_like_refusals_name_the_tensor(change, message: str) -> None:  # type: ignore[no-untyped-def]
    params = sample_params()
    update = {k: v.copy() for k, v in params.items()}
    change(update)
    with pytest.raises(FlError, match=message):
        check_like(update, params, what="update from a")


def test_check_like_finds_nan_beyond_the_first_scan_block() -> None:
    reference = {"big": np.zeros(_arrays._SCAN_BLOCK * 3 + 5, dtype=np.float32)}
    update = {"big": np.zeros_like(reference["big"])}
    update["big"][-1] = np.nan
    with pytest.raises(FlError, match="'big' holds NaN"):
        check_like(update, reference, what="u")
    check_like(update, reference, what="u", finite=False)


def test_check_like_against_a_torch_state_dict() -> None:
    model = torch.nn.Linear(3, 2)
    update = state_dict_arrays(model)
    check_like(update, model.state_dict(), what="u")
    update["bias"] = update["bias"].astype(np.float64)
    with pytest.raises(FlError, match="'bias' has dtype float64"):
        check_like(update, model.state_dict(), what="u")


# --- torch modules ------------------------------------------------------------------------


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU())


def test_state_dict_arrays_are_independent_copies() -> None:
    model = small_model()
    arrays = state_dict_arrays(model)
    assert "1.num_batches_tracked" in arrays and arrays["1.num_batches_tracked"].dtype == np.int64
    before = arrays["0.weight"].copy()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    np.testing.assert_array_equal(arrays["0.weight"], before)


def test_load_arrays_round_trip_through_bytes() -> None:
    source, target = small_model(), small_model()
    with torch.no_grad():
        for p in source.parameters():
            p.mul_(3.0)
    loaded, _ = from_bytes(to_bytes(source.state_dict()), copy=False)  # read-only views
    load_arrays(target, loaded)
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def test_load_arrays_refuses_a_mismatch_and_changes_nothing() -> None:
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    arrays = state_dict_arrays(model)
    arrays["0.weight"] = np.zeros((3, 5), dtype=np.float32)
    with pytest.raises(FlError, match=r"model: tensor '0.weight' has shape"):
        load_arrays(model, arrays)
    arrays = state_dict_arrays(model)
    arrays["0.bias"][0] = np.nan
    with pytest.raises(FlError, match="'0.bias' holds NaN"):
        load_arrays(model, arrays)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


_DTYPES = st.sampled_from([np.float32, np.float16, np.float64, np.int64, np.int8, np.uint8])


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=40).filter(lambda n: n != "__metadata__"),
        st.tuples(_DTYPES, st.lists(st.integers(0, 3), max_size=8)),
        min_size=1,
        max_size=30,
    )
)
def test_an_honest_header_always_fits_the_allowance(spec: dict[str, Any]) -> None:
    """What safetensors writes for a model's tensors (any names, dtypes, up to 8
    dimensions) is always within :func:`header_allowance`: honest updates are never
    refused by it."""
    try:
        params = {name: np.zeros(shape, dtype=dtype) for name, (dtype, shape) in spec.items()}
        data = tensors.to_bytes(params)
    except (FlError, UnicodeEncodeError):  # names safetensors or to_bytes cannot write
        return
    (length,) = struct.unpack_from("<Q", data)
    assert length <= tensors.header_allowance(params)
    assert tensors.from_bytes(data, max_header=tensors.header_allowance(params))[0].keys() == (
        params.keys()
    )


def test_a_header_past_the_allowance_is_refused_in_one_line() -> None:
    params = {"w": np.zeros((2, 3), dtype=np.float32)}
    data = tensors.to_bytes(params, metadata={"note": "x" * 100_000})
    with pytest.raises(FlError, match=r"^tensors: the header's \d+ bytes exceed the \d+ that"):
        tensors.from_bytes(data, max_header=tensors.header_allowance(params))
