"""The aggregator's checkpoint folder: which checkpoint it resumes from, and pruning.

:func:`list_checkpoints` lists a folder's checkpoint files (newest first),
:func:`latest_checkpoint` opens the one to resume from, :func:`prune_checkpoints`
keeps the newest few. Each file is sealed and checked by :mod:`secfl.fl._checkpoint`.

Commit protocol with the SPM counter (the aggregator's side; written down here
because the two must agree). The aggregator is the only service that increments
its counter; with the SPM's value ``c`` after round ``r - 1``:

1. aggregate round ``r``;
2. :func:`~secfl.fl._checkpoint.write_checkpoint` with ``counter = c + 1`` (temp
   file, rename: whole under its name) and keep the previous checkpoint
   (:func:`prune_checkpoints` with ``keep >= 2``);
3. increment the SPM counter (it must return ``c + 1``) while the checkpoint is
   fsynced (file, then folder); the round counts as committed once both are done
   (why the fsync may run beside the counter: :mod:`secfl.fl._commit`);
4. seal the new global model with round ``r`` and counter ``c + 1``
   (:func:`secfl.fl._envelope.seal_model`) and send it.

A crash between 2 and 3 leaves a checkpoint with counter ``c + 1`` while the SPM says
``c``: it was never committed (its model was never sent), so
:func:`latest_checkpoint` skips checkpoints whose counter is *greater* than the
SPM's and resumes from the one that equals it. A crash after 3 resumes from the new
one. No checkpoint equal to the SPM's counter means a rollback (someone replaced or
removed the newest file) and is refused; the only way past it is to restore the
file or a board-approved reset (:mod:`secfl.fl._reset`; every refusal says how:
:func:`~secfl.fl._checkpoint.reset_hint`). Which checkpoint a run resumes from, across
the runs of several policy versions, is :func:`secfl.fl._runs.find_resume_point`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

from secfl.errors import FlError
from secfl.fl._checkpoint import Checkpoint, load_checkpoint, reset_hint
from secfl.fl._checkpoint_format import policy_of, request_of
from secfl.fl._checkpoint_names import drawn_here, may_commit, parse_checkpoint_name

__all__ = [
    "committed_only",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "unnamed_where_forgotten",
]


def list_checkpoints(directory: Path | str) -> list[tuple[int, int, Path]]:
    """``(round, counter, path)`` of the checkpoint files in ``directory``, newest first:
    by counter (the freshness anchor), then round, as their names say (which
    :func:`~secfl.fl._checkpoint.load_checkpoint` checks against the authenticated
    header)."""
    directory = Path(directory)
    try:
        if not directory.is_dir():
            return []
        entries = list(directory.iterdir())
    except OSError as exc:
        raise FlError(f"checkpoint: cannot list {directory}: {exc.strerror or exc}") from None
    found = []
    for entry in entries:
        named = parse_checkpoint_name(entry.name)
        if named is None:
            continue
        try:  # the host's folder: a link whose target cannot be stat'ed is no checkpoint
            regular = entry.is_file()
        except OSError:
            regular = False
        if regular:
            found.append((*named, entry))
    found.sort(key=lambda item: (item[1], item[0]), reverse=True)
    return found


def latest_checkpoint(
    directory: Path | str,
    *,
    key: bytes,
    policy_digest: str,
    expected_counter: int | None = None,
    below: int | None = None,
    committed: tuple[int, str | None] | None = None,
    request_at: Callable[[int], str | None] | None = None,
) -> Checkpoint | None:
    """The newest checkpoint of ``policy_digest`` in ``directory``, opened and checked.

    Files of other policies are ignored. Without ``expected_counter``: the newest by
    (counter, round) whose counter is at most ``below`` (when given), or None if
    there is none. With it (the SPM's counter value, see the commit protocol in the
    module docstring): checkpoints with a greater counter are uncommitted and skipped;
    the newest of the rest must have exactly that counter (``rollback:`` otherwise); no
    checkpoint at all is a fresh start (None) only while the counter is 0, and a
    rollback after that. A newest checkpoint that does not open is an error, never a
    reason to use an older one. ``committed`` (the SPM's counter and the name of the
    increment that took it there): files at that counter that another increment was
    to commit (a forked aggregator's) are skipped. ``request_at`` (the SPM's answer to
    which increment took the counter to an earlier value): at each value it names one
    for, the other increments' files are skipped too (:func:`committed_only`).
    """
    candidates = [
        (rnd, ctr, path)
        for rnd, ctr, path in list_checkpoints(directory)
        if policy_of(path) == policy_digest
    ]
    if committed is not None:
        # at the SPM's counter, a file another increment was to commit never was
        counter, request = committed
        candidates = [c for c in candidates
                      if c[1] != counter or may_commit(request_of(c[2]), request)]  # fmt: skip
    if expected_counter is not None:
        if type(expected_counter) is not int or expected_counter < 0:
            raise FlError(
                "checkpoint: the expected counter must be a non-negative integer, "
                f"not {expected_counter!r}"
            )
        candidates = [c for c in candidates if c[1] <= expected_counter]
    if below is not None:
        candidates = [c for c in candidates if c[1] <= below]
    asked = request_at is not None
    if request_at is not None:
        candidates, committed = committed_only(Path(directory), candidates, committed, request_at)
    if not candidates:
        if expected_counter:
            raise FlError(
                f"rollback: no checkpoint of this policy in {directory}, "
                f"the SPM's counter is {expected_counter}: "
                + reset_hint(directory, expected_counter)
            )
        return None
    _, chosen, path = candidates[0]
    tied = [c for c in candidates if c[1] == chosen]
    if len(tied) > 1:  # two at that value (a fork), and nothing here says which committed
        raise FlError(
            f"rollback: {len(tied)} checkpoints in {directory} have counter {chosen} "
            f"({', '.join(p.name for _, _, p in tied[:3])}), one of them another aggregator's "
            "that never committed: set aside the one whose name is not the request of the "
            f"SPM's counter.incremented entry at {chosen} (secfl audit show), then start again"
        )
    checkpoint = load_checkpoint(
        path, key=key, policy_digest=policy_digest, expected_counter=expected_counter
    )
    if (
        committed is not None
        and checkpoint.counter == committed[0]
        and not may_commit(checkpoint.request, committed[1])
    ):  # what was read before it was authenticated said otherwise
        raise FlError(
            f"integrity: checkpoint {path.name} changed while it was read (it names another "
            "increment than the one that committed its counter)"
        )
    if asked:
        unnamed_where_forgotten(checkpoint, committed)
    return checkpoint


def unnamed_where_forgotten(checkpoint: Checkpoint, named: tuple[int, str | None] | None) -> None:
    """After :func:`committed_only` chose ``checkpoint``'s value (``named``: what it
    returned): at a value the SPM no longer names, only a checkpoint that names no
    increment passed (its header was read before it was authenticated); one that names
    one now is another file, swapped in after the check (a fork's loser, say)."""
    if named is not None and checkpoint.counter == named[0]:
        return  # the SPM named this value's increment: checked against it already
    if drawn_here(checkpoint.request or ""):
        raise FlError(
            f"integrity: checkpoint {checkpoint.path.name} changed while it was read (it "
            f"names an increment, and the SPM no longer says which one took its counter to "
            f"{checkpoint.counter})"
        )


Candidate = tuple[int, int, Path]


#: Counter values a reset asks the SPM about before it refuses (the headers that name
#: them are not authenticated: a host must not make it ask thousands of times).
MAX_VALUES_ASKED = 64


def committed_only(
    directory: Path,
    candidates: list[Candidate],
    committed: tuple[int, str | None] | None,
    request_at: Callable[[int], str | None],
) -> tuple[list[Candidate], tuple[int, str | None] | None]:
    """From the newest value down, the files at a value the SPM names the committing
    increment of are that increment's only; a value left with none (a fork's loser
    alone there, the committed file lost or deleted) is passed over. Stops at the first
    value kept; returns the candidates left and the (value, name) the chosen file must
    hold once authenticated. Where the SPM names no increment (it keeps only its newest
    ones) but the files there name one, none can be told from a fork's: refused."""
    for _ in range(MAX_VALUES_ASKED):
        if not candidates:
            return candidates, committed
        chosen = candidates[0][1]
        if committed is not None and chosen == committed[0]:
            return candidates, committed  # filtered by the caller already
        at = [c for c in candidates if c[1] == chosen]
        rest = [c for c in candidates if c[1] != chosen]
        named = request_at(chosen)  # which increment took the counter to that value
        if named is None:
            if any(drawn_here(request_of(c[2]) or "") for c in at):
                raise FlError(
                    f"rollback: the SPM no longer says which increment took its counter to "
                    f"{chosen}, and the checkpoints there in {directory} name increments: "
                    "none can be told from a forked aggregator's; restore a newer checkpoint, "
                    f"or set aside those with counter {chosen}, then start again"
                )
            return candidates, committed
        kept = [c for c in at if may_commit(request_of(c[2]), named)]
        if kept:
            return kept + rest, (chosen, named)
        candidates = rest
    raise FlError(
        f"rollback: more than {MAX_VALUES_ASKED} counter values in {directory} hold only "
        "checkpoints that no increment the SPM knows committed; set them aside (keep the "
        "newest the SPM's counter.incremented entries name), then start again"
    )


def prune_checkpoints(
    directory: Path | str,
    *,
    keep: int = 2,
    committed: Mapping[int, str | None] | None = None,
    runs: AbstractSet[str] | None = None,
) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoint files; returns what was deleted.
    Keep at least 2 with the commit protocol (the newest may be uncommitted).

    ``committed``: counter values and the names of the increments that took the counter
    to them, as this aggregator knows them (the newest is the SPM's now). Then the
    files at those values that another increment was to commit (a forked aggregator's:
    they can never commit now) are deleted first; of the rest up to the newest value,
    the ``keep`` newest *values* are kept with every file at them (a tie is never
    broken by the folder's order), and files above it (in flight) are left alone.
    ``runs``: only files whose header names one of these policy digests are looked at."""
    if type(keep) is not int or keep < 1:
        raise FlError(f"checkpoint: keep must be a positive integer, not {keep!r}")
    found = list_checkpoints(directory)
    if runs is not None:  # only these runs' files (another federation's are not ours)
        found = [c for c in found if policy_of(c[2]) in runs]
    if not committed:
        doomed = [path for _, _, path in found[keep:]]
    else:
        newest = max(committed)
        named = {ctr: request for ctr, request in committed.items() if request is not None}
        doomed = [path for _, ctr, path in found
                  if ctr in named and not may_commit(request_of(path), named[ctr])]  # fmt: skip
        values = sorted({ctr for _, ctr, path in found if ctr <= newest and path not in doomed},
                        reverse=True)  # fmt: skip
        kept = set(values[:keep])
        doomed += [path for _, ctr, path in found
                   if ctr <= newest and ctr not in kept and path not in doomed]  # fmt: skip
    removed = []
    for path in doomed:
        try:  # the host's folder: a file it keeps (immutable, say) is left, not a failure
            path.unlink(missing_ok=True)
        except OSError:
            continue
        removed.append(path)
    return removed
