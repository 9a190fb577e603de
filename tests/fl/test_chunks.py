"""Chunked streaming: pieces of a bounded size, reassembled under a hard limit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl.errors import FlError
from secfl.fl._chunks import Reassembler, chunks
from secfl.fl._tensors import from_bytes, to_bytes


@given(data=st.binary(max_size=3000), size=st.integers(1, 700))
@settings(max_examples=100, deadline=None)
def test_chunks_reassemble(data: bytes, size: int) -> None:
    pieces = list(chunks(data, size))
    assert all(len(p) <= size for p in pieces) and pieces
    assert all(len(p) == size for p in pieces[:-1])
    for expected in (None, len(data)):
        r = Reassembler(max_bytes=len(data), expected_size=expected)
        r.extend(pieces)
        assert bytes(r.finish()) == data


def test_reassembler_limits() -> None:
    r = Reassembler(max_bytes=10)
    r.add(b"x" * 6)
    with pytest.raises(FlError, match="passes its limit of 10 bytes"):
        r.add(b"y" * 5)
    assert r.size == 6
    with pytest.raises(FlError, match="exceed the limit"):
        Reassembler(max_bytes=10, expected_size=11)
    r = Reassembler(max_bytes=100, expected_size=8)
    r.add(b"1234")
    with pytest.raises(FlError, match="announced size of 8"):
        r.add(b"56789")
    with pytest.raises(FlError, match="ended after 4 of 8 bytes"):
        r.finish()
    r = Reassembler(max_bytes=4)
    r.add(b"ab")
    assert r.finish() == bytearray(b"ab")
    with pytest.raises(FlError, match="after the end"):
        r.add(b"c")
    with pytest.raises(FlError, match="chunk size"):
        list(chunks(b"abc", 0))


def test_large_update_streams_through_reassembler_and_loads_without_copy() -> None:
    params = {"w": np.arange(3_000_000, dtype=np.float32)}
    data = to_bytes(params)
    r = Reassembler(max_bytes=len(data), expected_size=len(data))
    for piece in chunks(data):
        r.add(piece)
    buffer = r.finish()
    loaded, _ = from_bytes(buffer, copy=False)
    assert np.shares_memory(loaded["w"], np.frombuffer(buffer, dtype=np.uint8))
    np.testing.assert_array_equal(loaded["w"], params["w"])
