"""Runs: each policy version trains a run of its own, without a reset in between.

A run is identified by the digest of the policy version the aggregator attested
to (the SPM hands that digest to ``secfl run``; the version's ``federation``
section, ``run`` number included, is part of what it covers). Every checkpoint
carries the digest of its run in its authenticated header. All runs of a policy
share one SPM counter, which only goes up: each commit of any run moves it by
one, so the counter value of a checkpoint orders it among every checkpoint ever
committed, whatever its run.

On start, with the SPM's counter at ``c`` (:func:`find_resume_point`):

* ``c == 0``: nothing was ever committed; the first run starts.
* A checkpoint of *this* run has counter ``c``: it is the newest committed state;
  the run goes on after it (the usual restart, after a crash or a Ctrl-C).
* A checkpoint of *another* run has counter ``c`` and this run has none: that run
  committed last, so this run has not started; it starts now, from the task's
  initial model or, when the policy says ``start_from: previous``, from that
  checkpoint's model. The checkpoint must open with the policy's checkpoint key
  (it is authentic) before either happens.
* Anything else is a rollback: no checkpoint has counter ``c`` (the newest was
  lost or withheld), or the checkpoint at ``c`` is another run's while this run
  has older ones (no other run can commit after this one began: a newer policy
  version would be a newer run). Each refusal is one line that ends with the next
  step (:func:`~secfl.fl._checkpoint.reset_hint`).

At counter ``c`` only the checkpoint the SPM's increment to ``c`` committed counts:
each names that increment (``request``), and the SPM says which one took the counter
to ``c``. Two aggregators forked from one state both write a checkpoint at ``c``;
the loser's is never resumed from (before, it could replace the winner's file, and a
restart went on from a model nobody committed).

After a board reset at the SPM's counter ``c`` (:func:`reset_point`): this run's
newest checkpoint the SPM counted, at or below ``c``, is resumed. A run that has none
left (its first commits were lost) begins again: from the task's initial model, or,
when the policy says ``start_from: previous``, from the newest checkpoint of an
earlier run that the SPM counted and that opens with the policy's checkpoint key
(none in the folder: the initial model, and the aggregator warns).

So a host cannot pass an old run off as the current one (the run comes from the
attested policy digest, not from anything on its disk), nor an old checkpoint of
the current run (the counter binds it), nor a fork that lost (the increment's name
binds it), nor make the aggregator skip ahead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secfl.errors import FlError
from secfl.fl._checkpoint import Checkpoint, load_checkpoint, reset_hint
from secfl.fl._checkpoint_dir import (
    committed_only,
    latest_checkpoint,
    list_checkpoints,
    unnamed_where_forgotten,
)
from secfl.fl._checkpoint_format import header_of, policy_of, request_of
from secfl.fl._checkpoint_names import may_commit

__all__ = ["ResumePoint", "find_resume_point", "reset_point", "run_label"]


@dataclass(frozen=True)
class ResumePoint:
    """Where the current run goes on from, at the SPM's counter value ``counter``."""

    counter: int
    #: This run's newest committed checkpoint: the run continues after its round.
    checkpoint: Checkpoint | None = None
    #: A new run: the newest committed checkpoint of the run before it (if any).
    previous: Checkpoint | None = None

    @property
    def new_run(self) -> bool:
        return self.checkpoint is None


def run_label(number: int, version: int | None, digest: str) -> str:
    """``run 2 (policy version 5, 1a2b3c4d5e6f)``: how logs and messages name a run."""
    where = f"policy version {version}, " if version is not None else ""
    return f"run {number} ({where}{digest[:12]})"


def find_resume_point(
    directory: Path, *, key: bytes, run: str, counter: int, request: str | None = None
) -> ResumePoint:
    """The checkpoint the run ``run`` (a policy digest) resumes from, given the SPM's
    ``counter`` and the name of the increment that took it there (``request``, None if
    the SPM has none); ``FlError`` (``rollback:`` or ``integrity:``, with the next step)
    when the folder does not hold the state the counter says was committed."""
    if type(counter) is not int or counter < 0:
        raise FlError(f"counter: the SPM's counter is not a non-negative integer: {counter!r}")
    if counter == 0:
        return ResumePoint(0)
    committed = [c for c in list_checkpoints(directory) if c[1] <= counter]
    headers = {path: header_of(path) for _, _, path in committed}
    runs = {path: None if h is None else str(h["policy_digest"]) for path, h in headers.items()}
    at_counter, named = _committed_at(
        [path for _, ctr, path in committed if ctr == counter and headers[path] is not None],
        headers, request, counter, directory,
    )  # fmt: skip
    mine = [path for path in at_counter if runs[path] == run]
    if mine:
        return ResumePoint(counter, checkpoint=_open(mine[0], key, run, counter, named))
    others = [path for path in at_counter if runs[path] is not None]
    if not others:
        found = (
            f"the newest checkpoint in {directory} has counter {committed[0][1]}"
            if committed
            else f"no checkpoint in {directory}"
        )
        raise FlError(
            f"rollback: {found}, the SPM's counter is {counter}: the newest was lost or "
            "withheld; " + reset_hint(directory, counter)
        )
    if any(digest == run for digest in runs.values()):
        raise FlError(
            f"rollback: the checkpoint with the SPM's counter {counter} ({others[0].name}) is "
            f"of another run, yet this run has older ones in {directory}; "
            + reset_hint(directory, counter)
        )
    digest = runs[others[0]]
    assert digest is not None
    return ResumePoint(counter, previous=_open(others[0], key, digest, counter, named))


def reset_point(
    directory: Path,
    *,
    key: bytes,
    run: str,
    committed: tuple[int, str | None],
    request_at: Callable[[int], str | None],
    previous: bool,
) -> ResumePoint:
    """Where the run ``run`` goes on from after a board reset at the SPM's counter
    (``committed``: its value and the name of the increment that took it there): this
    run's newest checkpoint the SPM counted at or below it; without one and with
    ``previous`` (``start_from: previous``), a new run after an earlier run's newest
    checkpoint the SPM counted (:func:`_previous_for_reset`); else a new run alone."""
    counter = committed[0]
    newest = latest_checkpoint(
        directory, key=key, policy_digest=run, below=counter, committed=committed,
        request_at=request_at,
    )  # fmt: skip
    if newest is not None or not previous:
        return ResumePoint(counter, checkpoint=newest)
    return ResumePoint(counter, previous=_previous_for_reset(directory, key, run, committed,
                                                             request_at))  # fmt: skip


def _previous_for_reset(
    directory: Path,
    key: bytes,
    run: str,
    committed: tuple[int, str | None],
    request_at: Callable[[int], str | None],
) -> Checkpoint | None:
    """The newest checkpoint of another run than ``run`` that the SPM counted, chosen
    as :func:`~secfl.fl._checkpoint_dir.latest_checkpoint` chooses (at the SPM's
    counter only the file its increment committed; below it, at each value the SPM
    names an increment for, only that increment's file: a fork's loser, an uncommitted
    leftover or another federation's file is passed over), then opened with the
    policy's checkpoint key (one of its runs) and checked against that choice; None
    when there is none. The chosen one not opening is an error, never a reason to take
    an older one."""
    counter, request = committed
    found = [c for c in list_checkpoints(directory) if c[1] <= counter]
    runs = {path: policy_of(path) for _, _, path in found}
    candidates = [
        (rnd, ctr, path)
        for rnd, ctr, path in found
        if runs[path] not in (None, run)
        and (ctr != counter or may_commit(request_of(path), request))
    ]
    candidates, named = committed_only(directory, candidates, committed, request_at)
    if not candidates:
        return None
    _, chosen, path = candidates[0]
    tied = [p.name for _, ctr, p in candidates if ctr == chosen]
    if len(tied) > 1:
        raise FlError(
            f"rollback: {len(tied)} checkpoints of earlier runs in {directory} have counter "
            f"{chosen} ({', '.join(tied[:3])}), and nothing says which one committed: set "
            "aside the one whose name is not the request of the SPM's counter.incremented "
            f"entry at {chosen} (secfl audit show), then start again"
        )
    digest = runs[path]
    assert digest is not None
    try:
        checkpoint = load_checkpoint(path, key=key, policy_digest=digest, expected_counter=chosen)
    except FlError as exc:
        raise FlError(
            f"{exc}; it is the newest checkpoint of an earlier run the SPM counted, which "
            "this run goes on from (start_from: previous): restore it, or set it aside to "
            "go on from an older one, then start the aggregator again"
        ) from None
    if named is not None and chosen == named[0] and not may_commit(checkpoint.request, named[1]):
        raise FlError(
            f"integrity: checkpoint {path.name} changed while it was read (it names another "
            "increment than the one that committed its counter)"
        )
    unnamed_where_forgotten(checkpoint, named)
    return checkpoint


def _committed_at(
    paths: list[Path],
    headers: dict[Path, dict[str, Any] | None],
    request: str | None,
    counter: int,
    directory: Path,
) -> tuple[list[Path], str | None]:
    """Of the checkpoints at the SPM's ``counter``, the one its increment ``request``
    committed (:func:`~secfl.fl._checkpoint_names.may_commit`), and the name that one must
    hold once opened: these headers are not authenticated yet, and the file may change
    before it is opened."""

    def named(path: Path) -> str | None:
        header = headers[path]
        return None if header is None else header.get("request")

    exact = [path for path in paths if request is not None and named(path) == request]
    if exact:
        return exact[:1], request
    possible = [path for path in paths if may_commit(named(path), request)]
    if len(possible) == 1:
        return possible, None
    if len(possible) > 1:
        raise FlError(
            f"rollback: {len(possible)} checkpoints in {directory} have the SPM's counter "
            f"{counter}, and the SPM does not say which one it committed; "
            + reset_hint(directory, counter)
        )
    if paths and request is None:
        raise FlError(
            f"rollback: the SPM does not say which increment took its counter to {counter} "
            "(an SPM older than this aggregator: update it; or one that has not yet read "
            "another SPM's commit: start the aggregator again), and every checkpoint there "
            "names one"
        )
    if paths:
        raise FlError(
            f"rollback: no checkpoint with the SPM's counter {counter} in {directory} is the "
            f"one its increment committed (those there were another aggregator's, or their "
            "increment failed): the committed one was lost or withheld; "
            + reset_hint(directory, counter)
        )
    return [], None


def _open(path: Path, key: bytes, digest: str, counter: int, request: str | None) -> Checkpoint:
    """Open the checkpoint chosen at ``counter``; it must name ``request`` (the header
    it was chosen by was read before it was authenticated)."""
    checkpoint = _load(path, key, digest, counter)
    if checkpoint.request != request:
        raise FlError(
            f"integrity: checkpoint {path.name} changed while it was read (its header named "
            "another increment than the one it was chosen for)"
        )
    return checkpoint


def _load(path: Path, key: bytes, digest: str, counter: int) -> Checkpoint:
    try:
        return load_checkpoint(path, key=key, policy_digest=digest, expected_counter=counter)
    except FlError as exc:
        if "sign-reset" in str(exc):  # it says what to do already
            raise
        raise FlError(f"{exc}; {reset_hint(path.parent, counter)}") from None
