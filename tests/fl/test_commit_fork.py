"""Two aggregators forked from one checkpoint: only the one whose increment the SPM
committed counts. Found by a hostile review: a checkpoint was not tied to the
increment that committed it. The loser of a fork wrote its checkpoint at the same
counter, under the same name, over the winner's, and a restart went on from the
loser's model, which nobody committed (and wrote it as the final model); after a
board reset, a leftover of a crashed commit shadowed the reset's commit the same way.
Each checkpoint now names its increment, the SPM says which one took the counter to
its value, and resume takes only that checkpoint. Real aggregators and sites over
mutual TLS (fedkit)."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secfl.errors import FlError
from secfl.fl import _runs as runs
from secfl.fl._aggregator import Aggregator, Signer
from secfl.fl._checkpoint import write_checkpoint
from secfl.fl._checkpoint_dir import list_checkpoints
from secfl.fl._checkpoint_format import header_of
from secfl.fl._checkpoint_names import drawn_here, new_request
from secfl.fl._commit import Commit, MemoryLedger
from secfl.fl._config import FederationConfig
from secfl.fl._runs import find_resume_point
from secfl.fl._tensors import from_bytes, to_bytes
from secfl.tasks._registry import get_task
from secfl.tasks._split import split
from tests.fl.fedkit import Federation, site
from tests.fl.test_runs import KEY, QUICK, RUN_A, gates

pytestmark = pytest.mark.timeout(280)


def _aggregator(
    fed: Federation, settings: dict[str, Any], ledger: MemoryLedger, directory: Path
) -> Aggregator:
    agg = Aggregator(
        fed.task, FederationConfig.parse({**QUICK, "min_clients": 3, **settings}),
        fed.server([site(i) for i in range(6)]), Signer(RUN_A, fed.key),
        Commit(ledger, directory=directory, key=KEY, policy_digest=RUN_A),
        validation=fed.validation(),
    )  # fmt: skip
    agg.start()
    return agg


def test_the_loser_of_a_fork_neither_replaces_nor_passes_for_the_commit(tmp_path: Path) -> None:
    fed = Federation(get_task("digits"), split("digits", 6, seed=2, out=tmp_path / "shards"))
    directory, ledger = tmp_path / "checkpoints", MemoryLedger()
    first = _aggregator(fed, {"rounds": 1}, ledger, directory)
    fed.run(first, range(3), gates=gates(fed, RUN_A))
    a = _aggregator(fed, {"rounds": 2}, ledger, directory)  # both from round 1's checkpoint
    b = _aggregator(fed, {"rounds": 2}, ledger, directory)
    final_a = fed.run(a, range(3), gates=gates(fed, RUN_A))  # A commits round 2
    with pytest.raises(FlError, match="^counter: "):
        fed.run(b, range(3, 6), gates=gates(fed, RUN_A))  # B's increment is refused
    at = [path.name for _, ctr, path in list_checkpoints(directory) if ctr == ledger.value]
    assert len(at) == 2  # both files are there, side by side
    # the host copies B's file over A's name: still not the committed one
    b_file, a_file = sorted(directory.glob(f"*-c{ledger.value:010d}-*.secfl"),
                            key=lambda p: p.stat().st_mtime)[::-1]  # fmt: skip
    c = _aggregator(fed, {"rounds": 2}, ledger, directory)
    c.server.stop(None)
    assert all(np.array_equal(c._params[n], final_a[n]) for n in final_a)
    shutil.copy(b_file, a_file)
    with pytest.raises(FlError, match="^rollback: no checkpoint with the SPM's counter 3 .* is "
                       "the one its increment committed"):  # fmt: skip
        _aggregator(fed, {"rounds": 2}, ledger, directory)


def _params(round: int) -> bytes:
    return to_bytes({"w": np.full(3, float(round), np.float32)})


@pytest.mark.parametrize("named", [True, False], ids=["leftover", "leftover-of-old-code"])
def test_a_leftover_never_shadows_a_resets_commit(tmp_path: Path, named: bool) -> None:
    ledger = MemoryLedger()
    commit = Commit(ledger, directory=tmp_path, key=KEY, policy_digest=RUN_A, overlap=False)
    commit.resume()
    for r in (1, 2, 3):
        assert commit.commit(r, _params(r), {}) == r
    # round 4 sealed at counter 4, killed before its increment: never committed
    write_checkpoint(tmp_path, key=KEY, policy_digest=RUN_A, round=4, counter=4,
                     params_bytes=_params(4), state={},
                     request=secrets.token_hex(16) if named else None)  # fmt: skip
    next(tmp_path.glob("checkpoint-r00000003-c0000000003*")).unlink()  # "lost"
    restarted = Commit(ledger, directory=tmp_path, key=KEY, policy_digest=RUN_A, overlap=False)
    point = restarted.resume(reset_from=3)  # the board's reset at 3
    assert point.checkpoint is not None and point.checkpoint.round == 2
    assert restarted.commit(2, point.checkpoint.params_bytes, point.checkpoint.state) == 4
    value, request = ledger.committed()
    again = find_resume_point(tmp_path, key=KEY, run=RUN_A, counter=value, request=request)
    assert again.checkpoint is not None and again.checkpoint.round == 2
    assert from_bytes(again.checkpoint.params_bytes)[0]["w"].tolist() == [2.0] * 3
    # the leftover could never commit now: the reset's commit pruned it
    assert [ctr for _, ctr, _ in list_checkpoints(tmp_path)].count(4) == 1


def test_two_checkpoints_at_the_counter_and_no_name_are_refused(tmp_path: Path) -> None:
    """Not knowing which increment committed the counter (an unnamed one), resume
    refuses two checkpoints at its value rather than guess."""
    for request in (secrets.token_hex(16), secrets.token_hex(16)):
        write_checkpoint(tmp_path, key=KEY, policy_digest=RUN_A, round=1, counter=1,
                         params_bytes=_params(1), state={}, request=request)  # fmt: skip
    with pytest.raises(FlError, match="the SPM does not say which increment took its counter"):
        find_resume_point(tmp_path, key=KEY, run=RUN_A, counter=1)


# --- the review of the fix ----------------------------------------------------------------


def _forked(folder: Path) -> tuple[MemoryLedger, Commit, Commit]:
    """Round 1 committed; two aggregators resumed from it."""
    ledger = MemoryLedger()
    first = Commit(ledger, directory=folder, key=KEY, policy_digest=RUN_A, overlap=False)
    first.resume()
    first.commit(1, _params(1), {})
    both = [Commit(ledger, directory=folder, key=KEY, policy_digest=RUN_A, overlap=False)
            for _ in range(2)]  # fmt: skip
    for commit in both:
        commit.resume()
    return ledger, both[0], both[1]


def _fork(folder: Path) -> tuple[MemoryLedger, Path, Path]:
    """Round 1 committed, then two aggregators forked from it: the winner commits round
    2 at counter 2, the loser's round 2 (weights 666) is refused. Returns the ledger
    and the winner's and the loser's files."""
    ledger, winner, loser = _forked(folder)
    winner.commit(2, _params(2.0), {}, prune=False)
    with pytest.raises(FlError, match="^counter: "):
        loser.commit(2, _params(666.0), {}, prune=False)
    at = [path for _, ctr, path in list_checkpoints(folder) if ctr == 2]
    won = next(path for path in at if header_of(path)["request"] == ledger.request)
    return ledger, won, next(path for path in at if path != won)


def test_a_file_that_changes_between_its_choice_and_its_opening_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The choice read headers before they were authenticated, and what was opened was
    not checked again: a host serving the folder (FUSE, NFS) answered the first read
    with the winner's bytes, the second with the loser's, under the loser's name."""
    ledger, won, lost = _fork(tmp_path)
    loser_bytes = lost.read_bytes()
    shutil.copy(won, lost)
    won.unlink()
    real = runs.load_checkpoint

    def second_open(path: Path, **kw: Any) -> Any:
        Path(path).write_bytes(loser_bytes)
        return real(path, **kw)

    monkeypatch.setattr(runs, "load_checkpoint", second_open)
    with pytest.raises(FlError, match="changed while it was read"):
        Commit(ledger, directory=tmp_path, key=KEY, policy_digest=RUN_A).resume()


def test_without_the_spms_name_a_named_checkpoint_is_refused(tmp_path: Path) -> None:
    """An SPM that did not say which increment took the counter there (one that had not
    caught up with another SPM's commit) let any one file at the counter through: the
    host deleted the winner's, and the loser's was resumed."""
    _, won, _ = _fork(tmp_path)
    won.unlink()
    with pytest.raises(FlError, match="the SPM does not say which increment took its counter"):
        find_resume_point(tmp_path, key=KEY, run=RUN_A, counter=2, request=None)


def test_a_checkpoint_of_the_code_before_names_never_passes_for_a_named_commit(
    tmp_path: Path,
) -> None:
    """A leftover of the code before names (unnamed) at the counter this code committed
    with a name passed for the committed one once the host deleted that. The names this
    code draws are recognisable; one drawn by the code before is not."""
    ledger, _, _ = _fork(tmp_path)
    for path in list(tmp_path.iterdir()):
        path.unlink()
    write_checkpoint(tmp_path, key=KEY, policy_digest=RUN_A, round=2, counter=2,
                     params_bytes=_params(666.0), state={})  # fmt: skip
    value, request = ledger.committed()
    assert request is not None and drawn_here(request)
    with pytest.raises(FlError, match="is the one its increment committed"):
        find_resume_point(tmp_path, key=KEY, run=RUN_A, counter=value, request=request)
    # the code before named its increments at random: its own checkpoint still resumes
    point = find_resume_point(tmp_path, key=KEY, run=RUN_A, counter=2, request="ab" * 16)
    assert point.checkpoint is not None and point.checkpoint.request is None


def _slow_loser(folder: Path) -> MemoryLedger:
    """A fork whose loser writes its checkpoint at counter 2 after the winner's commit
    pruned; the winner then commits counter 3 and prunes again."""
    ledger, winner, loser = _forked(folder)
    winner.commit(2, _params(2), {})
    with pytest.raises(FlError, match="^counter: "):
        loser.commit(2, _params(666.0), {})
    winner.commit(3, _params(3), {})
    return ledger


def test_pruning_keeps_the_committed_file_beside_a_forks(tmp_path: Path) -> None:
    """The review's review: pruning kept one of the two files at counter 2 by the
    folder's order (it deleted the committed one in 8 of 12 folders), and a board reset
    after a power loss then resumed the loser's model."""
    for i in range(6):
        folder = tmp_path / f"f{i}"
        ledger = _slow_loser(folder)
        at_2 = [header_of(p)["request"] for _, ctr, p in list_checkpoints(folder) if ctr == 2]
        assert len(at_2) == 1 and drawn_here(at_2[0])
        next(folder.glob("checkpoint-*-c0000000003-*")).unlink()  # torn by a power loss
        point = Commit(ledger, directory=folder, key=KEY, policy_digest=RUN_A).resume(reset_from=3)
        assert point.checkpoint is not None
        assert from_bytes(point.checkpoint.params_bytes)[0]["w"].tolist() == [2.0] * 3


def test_a_reset_refuses_two_checkpoints_at_the_counter_it_would_take(tmp_path: Path) -> None:
    """Two files at a counter below the SPM's (a fork's, from before a restart): nothing
    says which one committed, so a reset refuses rather than take either."""
    for value in (2.0, 666.0):
        write_checkpoint(tmp_path, key=KEY, policy_digest=RUN_A, round=2, counter=2,
                         params_bytes=_params(value), state={}, request=new_request())  # fmt: skip
    ledger = MemoryLedger(3, new_request())
    with pytest.raises(FlError, match="no longer says which increment took its counter to 2"):
        Commit(ledger, directory=tmp_path, key=KEY, policy_digest=RUN_A).resume(reset_from=3)


def test_a_reset_takes_the_checkpoint_the_spm_names_at_that_value(tmp_path: Path) -> None:
    """The last notes' open item: a fork's two files at a value below the SPM's counter
    (the fork was before a restart, so this aggregator never learnt which committed)
    made a reset refuse, and the operator had to find the request in the audit log. The
    SPM now says which increment took the counter to that value, and the reset takes
    that file alone, in either order of the folder."""
    for order in (0, 1):
        folder = tmp_path / f"order{order}"
        ledger = MemoryLedger()
        ledger.increment(0, request=new_request())
        committed = new_request()
        ledger.increment(1, request=committed)
        named = [committed, new_request()]  # the winner's and the loser's increments
        for value, request in zip((2.0, 666.0)[:: 1 - 2 * order], named[:: 1 - 2 * order],
                                  strict=True):  # fmt: skip
            write_checkpoint(folder, key=KEY, policy_digest=RUN_A, round=2, counter=2,
                             params_bytes=_params(value), state={}, request=request)  # fmt: skip
        ledger.increment(2, request=new_request())  # counter 3's checkpoint was lost
        point = Commit(ledger, directory=folder, key=KEY, policy_digest=RUN_A).resume(reset_from=3)
        assert point.checkpoint is not None and point.checkpoint.request == committed
        assert from_bytes(point.checkpoint.params_bytes)[0]["w"].tolist() == [2.0] * 3
    # The SPM remembers no name at 2 (an unnamed increment, or too long ago): refused.
    forgetful = MemoryLedger()
    forgetful.increment()
    forgetful.increment()
    forgetful.increment(2, request=new_request())
    with pytest.raises(FlError, match="no longer says which increment took its counter to 2"):
        Commit(forgetful, directory=tmp_path / "order0", key=KEY,
               policy_digest=RUN_A).resume(reset_from=3)  # fmt: skip


def test_a_reset_never_resumes_a_fork_left_alone_at_a_value(tmp_path: Path) -> None:
    """The review of the fix: the SPM was asked only when two files tied. With the
    committed file at 2 deleted (or lost: the counter commits beside the fsync), the
    fork's file was the only one there, and the reset resumed the model nobody
    committed. Files the SPM does not name are passed over: the reset goes on from 1."""
    ledger = MemoryLedger()
    first = new_request()
    ledger.increment(0, request=first)
    committed, forked = new_request(), new_request()
    ledger.increment(1, request=committed)
    write_checkpoint(tmp_path, key=KEY, policy_digest=RUN_A, round=1, counter=1,
                     params_bytes=_params(1.0), state={}, request=first)  # fmt: skip
    write_checkpoint(tmp_path, key=KEY, policy_digest=RUN_A, round=2, counter=2,
                     params_bytes=_params(666.0), state={}, request=forked)  # fmt: skip
    ledger.increment(2, request=new_request())  # counter 3's checkpoint was lost
    point = Commit(ledger, directory=tmp_path, key=KEY, policy_digest=RUN_A).resume(reset_from=3)
    assert point.checkpoint is not None and point.checkpoint.request == first
    assert from_bytes(point.checkpoint.params_bytes)[0]["w"].tolist() == [1.0] * 3


def test_a_reset_trusts_no_named_checkpoint_the_spm_no_longer_vouches_for(
    tmp_path: Path,
) -> None:
    """The review's review: where the SPM remembered no name (more than 4096 increments
    ago), the files there were taken unfiltered, so a fork's file left alone passed. And
    a host could plant files at thousands of values, one SPM request each."""
    ledger = MemoryLedger()
    for value in range(3):
        ledger.increment(value, request=new_request())
    forgetful = MemoryLedger(3, ledger.request)  # remembers only its current value
    write_checkpoint(tmp_path, key=KEY, policy_digest=RUN_A, round=2, counter=2,
                     params_bytes=_params(666.0), state={}, request=new_request())  # fmt: skip
    with pytest.raises(FlError, match="no longer says which increment took its counter to 2"):
        Commit(forgetful, directory=tmp_path, key=KEY, policy_digest=RUN_A).resume(reset_from=3)
    # values the SPM names another increment for: asked about at most MAX_VALUES_ASKED
    from secfl.fl import _checkpoint_dir

    planted = tmp_path / "planted"
    many = MemoryLedger()
    for value in range(200):
        many.increment(value, request=new_request())
    source = next(tmp_path.glob("checkpoint-*"))
    for value in range(2, 200):
        (planted / f"checkpoint-r{value:08d}-c{value:010d}-{source.name[-22:]}").parent.mkdir(
            exist_ok=True
        )
        (planted / f"checkpoint-r{value:08d}-c{value:010d}-{source.name[-22:]}").write_bytes(
            source.read_bytes()
        )
    asked: list[int] = []
    real = many.request_at
    many.request_at = lambda value: asked.append(value) or real(value)  # type: ignore[method-assign]
    with pytest.raises(FlError, match="more than 64 counter values"):
        Commit(many, directory=planted, key=KEY, policy_digest=RUN_A).resume(reset_from=200)
    assert len(asked) == _checkpoint_dir.MAX_VALUES_ASKED
