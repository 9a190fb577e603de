"""A reset at a counter value the SPM no longer names (older than its last 4096
increments) refuses the files that name an increment (none can be told from a fork's
loser). That check reads the header before the file is authenticated: a host that
swapped the file between the check and the opening got a fork's loser through (a
review of the reset's choice of an earlier run's checkpoint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from secfl.errors import FlError
from secfl.fl import _checkpoint_dir, _runs
from secfl.fl._checkpoint import write_checkpoint
from secfl.fl._checkpoint_names import checkpoint_name, new_request
from secfl.fl._commit import Commit, MemoryLedger
from secfl.fl._tensors import to_bytes
from tests.fl.test_runs import KEY, RUN_A, RUN_B


class Forgetful(MemoryLedger):
    """An SPM that no longer names the increments below ``keep``."""

    keep = 0

    def request_at(self, value: int) -> str | None:
        return None if value < self.keep else super().request_at(value)


def _write(directory: Path, round: int, counter: int, run: str, request: str | None,
           value: float) -> Path:  # fmt: skip
    return write_checkpoint(
        directory, key=KEY, policy_digest=run, round=round, counter=counter,
        params_bytes=to_bytes({"w": np.full(3, value, np.float32)}), state={}, request=request,
    )  # fmt: skip


def _planted(tmp_path: Path, run: str, loser: str) -> None:
    """A fork's loser at counter 1 under its own name, whose bytes the host swaps for an
    unnamed checkpoint's while the folder is listed and back when it is opened."""
    bait = _write(tmp_path / "bait", 0, 1, run, None, 1.0)
    real = _write(tmp_path / "real", 0, 1, run, loser, 666.0)
    target = tmp_path / "ckpt" / checkpoint_name(0, 1, loser)
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(bait.read_bytes())
    return target, real.read_bytes()


def _swapping(monkeypatch: pytest.MonkeyPatch, module, target: Path, data: bytes) -> None:
    load = module.load_checkpoint

    def swapped(path, **kw):
        if Path(path) == target:
            target.write_bytes(data)  # the host's change between the listing and the opening
        return load(path, **kw)

    monkeypatch.setattr(module, "load_checkpoint", swapped)


@pytest.mark.parametrize("own", [False, True])
def test_a_reset_takes_no_forks_loser_at_a_forgotten_value_by_a_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: bool
) -> None:
    ledger = Forgetful()
    ledger.keep = 2
    for value in range(3):
        ledger.increment(value, request=new_request())
    loser = new_request()  # another aggregator's at 1: never committed
    run = RUN_B if own else RUN_A
    target, data = _planted(tmp_path, run, loser)
    commit = Commit(ledger, directory=tmp_path / "ckpt", key=KEY, policy_digest=RUN_B)
    # unswapped, the loser is refused
    plain = tmp_path / "ckpt2"
    plain.mkdir()
    (plain / target.name).write_bytes(data)
    with pytest.raises(FlError, match="no longer says"):
        Commit(ledger, directory=plain, key=KEY, policy_digest=RUN_B).resume(
            reset_from=3, previous=True
        )
    _swapping(monkeypatch, _checkpoint_dir if own else _runs, target, data)
    try:
        point = commit.resume(reset_from=3, previous=True)
    except FlError as exc:
        assert "integrity" in str(exc) or "rollback" in str(exc)
        return
    taken = point.checkpoint or point.previous
    raise AssertionError(f"took a fork's loser: request {taken.request == loser}")
