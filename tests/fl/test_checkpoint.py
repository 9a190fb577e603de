"""Sealed checkpoints: round trip, tampering, wrong key, other policy, rollback; the
checkpoint folder: resuming from the newest committed one, pruning."""

from __future__ import annotations

import os
import shutil
import stat
import struct
from pathlib import Path

import numpy as np
import pytest

from secfl.errors import FlError
from secfl.fl._checkpoint import load_checkpoint, write_checkpoint
from secfl.fl._checkpoint_dir import latest_checkpoint, list_checkpoints, prune_checkpoints
from secfl.fl._checkpoint_format import MAGIC
from secfl.fl._checkpoint_names import checkpoint_name
from secfl.fl._tensors import from_bytes, to_bytes
from secfl.fl.strategies import FedAdam, Update

KEY = bytes(range(32))
POLICY = "sha256:" + "12" * 32
OTHER_POLICY = "sha256:" + "34" * 32


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((50, 20)).astype(np.float32), "b": np.arange(20.0)}


def fedadam_state() -> dict[str, object]:
    strategy = FedAdam()
    g = model()
    strategy.aggregate(1, g, [Update("a", model(1), 10), Update("b", model(2), 5)])
    return strategy.state()


def write(directory: Path, round: int, counter: int, **kw: object) -> Path:
    params = kw.pop("params", to_bytes(model(round)))
    return write_checkpoint(
        directory,
        key=kw.pop("key", KEY),  # type: ignore[arg-type]
        policy_digest=kw.pop("policy", POLICY),  # type: ignore[arg-type]
        round=round,
        counter=counter,
        params_bytes=params,  # type: ignore[arg-type]
        state=kw.pop("state", {"round": round}),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_round_trip_with_strategy_state(tmp_path: Path) -> None:
    state = fedadam_state()
    params = to_bytes(model(), metadata={"task": "digits"})
    path = write(tmp_path, 3, 7, params=params, state=state)
    assert path.name == checkpoint_name(3, 7) == "checkpoint-r00000003-c0000000007.secfl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    assert MAGIC in path.read_bytes()[:8] and params[100:200] not in path.read_bytes()
    ckpt = load_checkpoint(path, key=KEY, policy_digest=POLICY, expected_counter=7)
    assert (ckpt.round, ckpt.counter, ckpt.policy_digest) == (3, 7, POLICY)
    assert ckpt.params_bytes == params
    assert from_bytes(ckpt.params_bytes)[1] == {"task": "digits"}
    assert set(ckpt.state) == set(state)
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            assert ckpt.state[name].dtype == value.dtype
            np.testing.assert_array_equal(ckpt.state[name], value)
        else:
            assert ckpt.state[name] == value
    restored = FedAdam()
    restored.load_state(ckpt.state)
    assert restored.step == 1


def test_many_chunks_round_trip(tmp_path: Path) -> None:
    params = to_bytes({"w": np.arange(10_000, dtype=np.float64)})
    path = write(tmp_path, 1, 1, params=params, chunk_size=1000)
    ckpt = load_checkpoint(path, key=KEY, policy_digest=POLICY, expected_counter=None)
    assert ckpt.params_bytes == params and ckpt.state == {"round": 1}


def test_empty_state_and_params(tmp_path: Path) -> None:
    path = write(tmp_path, 0, 0, params=b"", state={})
    ckpt = load_checkpoint(path, key=KEY, policy_digest=POLICY, expected_counter=0)
    assert ckpt.params_bytes == b"" and ckpt.state == {}


def records(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """(offset of the first record, [(offset, length) of each record])."""
    data = path.read_bytes()
    (hlen,) = struct.unpack(">I", data[8:12])
    at = start = 12 + hlen
    out = []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        out.append((at, 4 + length))
        at += 4 + length
    return start, out


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_tampered_file_is_refused(tmp_path: Path, where: str) -> None:
    path = write(tmp_path, 2, 2, chunk_size=1024)
    data = bytearray(path.read_bytes())
    _, recs = records(path)
    assert len(recs) >= 3
    at, length = {"first": recs[0], "middle": recs[1], "last": recs[-1]}[where]
    data[at + length // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(FlError, match=r"^integrity: checkpoint .* does not open"):
        load_checkpoint(path, key=KEY, policy_digest=POLICY, expected_counter=2)


def test_reordered_truncated_or_extended_files_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 2, 2, chunk_size=1024)
    data = path.read_bytes()
    start, recs = records(path)
    (a0, l0), (a1, l1) = recs[0], recs[1]
    swapped = data[:start] + data[a1 : a1 + l1] + data[a0 : a0 + l0] + data[a1 + l1 :]
    cases = {
        "swapped": swapped,
        "dropped last": data[: recs[-1][0]],
        "cut": data[:-10],
        "extended": data + b"\0",
        "header only": data[:start],
    }
    for what, blob in cases.items():
        path.write_bytes(blob)
        with pytest.raises(FlError, match="^integrity:"):
            load_checkpoint(path, key=KEY, policy_digest=POLICY, expected_counter=None)
        assert what


def test_header_edits_are_caught_by_the_associated_data(tmp_path: Path) -> None:
    path = write(tmp_path, 2, 2)
    data = path.read_bytes()
    # same length edits: round 2 -> 9, then counter 2 -> 9
    for old, new in ((b'"round":2', b'"round":9'), (b'"counter":2', b'"counter":9')):
        path.write_bytes(data.replace(old, new, 1))
        with pytest.raises(FlError, match="^integrity:"):
            load_checkpoint(path, key=KEY, policy_digest=POLICY, expected_counter=None)
    # a policy edit: refused as another policy, or (made to match) as tampered
    forged = data.replace(POLICY.encode(), OTHER_POLICY.encode(), 1)
    path.write_bytes(forged)
    with pytest.raises(FlError, match="^policy:"):
        load_checkpoint(path, key=KEY, policy_digest=POLICY, expected_counter=None)
    with pytest.raises(FlError, match="^integrity:"):
        load_checkpoint(path, key=KEY, policy_digest=OTHER_POLICY, expected_counter=None)


@pytest.mark.parametrize("chunk_size", [None, (4 << 30) - 30])
def test_a_planted_header_allocates_nothing_before_a_record_opens(
    tmp_path: Path, chunk_size: int | None
) -> None:
    """Found by a hostile review: a sparse 4 TiB file with a header copied from a
    genuine checkpoint (its plaintext names the run) and ``size`` set to the file's
    apparent size made the reader allocate 4 TiB before any record was authenticated
    (MemoryError and a traceback, or the OOM killer, not an ``integrity:`` line); a
    record of up to 4 GiB was read whole before it opened."""
    import json
    import tracemalloc

    real = write(tmp_path, 3, 7)
    data = real.read_bytes()
    (hlen,) = struct.unpack(">I", data[8:12])
    header = json.loads(data[12 : 12 + hlen])
    size = 4 << 40
    fake = {**header, "round": 4, "size": size, "chunk_size": chunk_size or size, "chunks": 1}
    if chunk_size is not None:
        fake["chunks"] = -(-size // chunk_size)
    raw = json.dumps(fake, sort_keys=True, separators=(",", ":")).encode()
    planted = tmp_path / checkpoint_name(4, 7)
    with open(planted, "wb") as fh:
        fh.write(MAGIC + struct.pack(">I", len(raw)) + raw)
        if chunk_size is not None:
            fh.write(struct.pack(">I", (4 << 30) - 1))  # a record of 4 GiB
        fh.truncate(size + 4096)
    tracemalloc.start()
    try:
        with pytest.raises(FlError, match="^(integrity|format): "):
            load_checkpoint(planted, key=KEY, policy_digest=POLICY, expected_counter=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_wrong_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 1, 1)
    with pytest.raises(FlError, match=r"^integrity: .*wrong key"):
        load_checkpoint(path, key=bytes(32), policy_digest=POLICY, expected_counter=1)
    with pytest.raises(FlError, match="key must be 32 bytes"):
        load_checkpoint(path, key=b"short", policy_digest=POLICY, expected_counter=1)


def test_other_policy_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 1, 1, policy=OTHER_POLICY)
    with pytest.raises(FlError, match=r"^policy: checkpoint .* is for policy sha256:34343434"):
        load_checkpoint(path, key=KEY, policy_digest=POLICY, expected_counter=1)


def test_rollback_is_refused(tmp_path: Path) -> None:
    old = write(tmp_path, 4, 4)
    write(tmp_path, 5, 5)
    with pytest.raises(
        FlError,
        match=r"^rollback: checkpoint of round 4 has counter 4, the SPM's counter is 5: "
        r"restore the newest checkpoint, or .* sign-reset .* --value 5 .*reset\.json, then ",
    ):
        load_checkpoint(old, key=KEY, policy_digest=POLICY, expected_counter=5)


def test_renamed_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 4, 4)
    renamed = path.rename(tmp_path / checkpoint_name(5, 5))
    with pytest.raises(FlError, match="^integrity: .* not what its name says"):
        load_checkpoint(renamed, key=KEY, policy_digest=POLICY, expected_counter=None)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "x.secfl"
    path.write_bytes(b"hello world, no checkpoint here")
    with pytest.raises(FlError, match="^format:"):
        load_checkpoint(path, key=KEY, policy_digest=POLICY, expected_counter=None)
    with pytest.raises(FlError, match="cannot open"):
        load_checkpoint(tmp_path / "missing", key=KEY, policy_digest=POLICY, expected_counter=None)


def test_state_values_must_be_arrays_or_json(tmp_path: Path) -> None:
    with pytest.raises(FlError, match="neither a numpy array nor JSON"):
        write(tmp_path, 1, 1, state={"x": object()})
    with pytest.raises(FlError, match="neither a numpy array nor JSON"):
        write(tmp_path, 1, 1, state={"x": float("nan")})
    assert list(tmp_path.iterdir()) == []


# --- latest_checkpoint and the commit protocol --------------------------------------------


def test_latest_picks_the_newest_of_this_policy(tmp_path: Path) -> None:
    for n in (1, 2, 3):
        write(tmp_path, n, n)
    write(tmp_path, 9, 9, policy=OTHER_POLICY)
    ckpt = latest_checkpoint(tmp_path, key=KEY, policy_digest=POLICY)
    assert ckpt is not None and (ckpt.round, ckpt.counter) == (3, 3)
    ckpt = latest_checkpoint(tmp_path, key=KEY, policy_digest=POLICY, expected_counter=3)
    assert ckpt is not None and ckpt.round == 3


def test_latest_skips_an_uncommitted_checkpoint(tmp_path: Path) -> None:
    # crash after writing round 3 (counter 3) but before the SPM counter moved to 3
    for n in (1, 2, 3):
        write(tmp_path, n, n)
    ckpt = latest_checkpoint(tmp_path, key=KEY, policy_digest=POLICY, expected_counter=2)
    assert ckpt is not None and (ckpt.round, ckpt.counter) == (2, 2)


def test_latest_refuses_a_rollback(tmp_path: Path) -> None:
    for n in (1, 2, 3):
        write(tmp_path, n, n)
    (tmp_path / checkpoint_name(3, 3)).unlink()  # the host removes the newest
    with pytest.raises(
        FlError,
        match=r"^rollback: checkpoint of round 2 has counter 2, the SPM's counter is 3: "
        r"restore the newest checkpoint, or .* sign-reset .* --value 3 .*reset\.json, then ",
    ):
        latest_checkpoint(tmp_path, key=KEY, policy_digest=POLICY, expected_counter=3)


def test_latest_refuses_an_older_file_copied_over_the_newest(tmp_path: Path) -> None:
    older = write(tmp_path, 1, 1)
    shutil.copy(older, tmp_path / "saved")
    newest = write(tmp_path, 2, 2)
    os.replace(tmp_path / "saved", newest)
    with pytest.raises(FlError, match="^integrity: .* not what its name says"):
        latest_checkpoint(tmp_path, key=KEY, policy_digest=POLICY, expected_counter=2)


def test_latest_with_no_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "none", key=KEY, policy_digest=POLICY) is None
    assert latest_checkpoint(tmp_path, key=KEY, policy_digest=POLICY, expected_counter=0) is None
    write(tmp_path, 1, 1, policy=OTHER_POLICY)
    with pytest.raises(FlError, match=r"^rollback: no checkpoint of this policy .* counter is 4"):
        latest_checkpoint(tmp_path, key=KEY, policy_digest=POLICY, expected_counter=4)


def test_latest_does_not_fall_back_past_a_broken_newest(tmp_path: Path) -> None:
    write(tmp_path, 1, 1)
    newest = write(tmp_path, 2, 2)
    data = bytearray(newest.read_bytes())
    data[-5] ^= 1
    newest.write_bytes(bytes(data))
    with pytest.raises(FlError, match="^integrity:"):
        latest_checkpoint(tmp_path, key=KEY, policy_digest=POLICY)


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for n in range(1, 6):
        write(tmp_path, n, n)
    removed = prune_checkpoints(tmp_path, keep=2)
    assert len(removed) == 3
    assert [(r, c) for r, c, _ in list_checkpoints(tmp_path)] == [(5, 5), (4, 4)]
    with pytest.raises(FlError, match="keep must be"):
        prune_checkpoints(tmp_path, keep=0)


def test_overwrite_of_the_same_round_is_atomic(tmp_path: Path) -> None:
    write(tmp_path, 1, 1, state={"v": 1})
    write(tmp_path, 1, 1, state={"v": 2})
    ckpt = latest_checkpoint(tmp_path, key=KEY, policy_digest=POLICY, expected_counter=1)
    assert ckpt is not None and ckpt.state == {"v": 2}
    assert len(list(tmp_path.iterdir())) == 1
