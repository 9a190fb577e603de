"""``secfl policy next``: the next version of a policy, with new federation settings.

The board changes a running federation (more rounds, another strategy, a new run)
by approving a new version. This writes it: the version number goes up by one, the
predecessor is the current version's digest, the federation flags (the same as
``secfl policy init``'s) change the ``federation`` section, and the result is checked
as ``secfl policy validate`` checks it before anyone signs. Anything else a version
changes is edited in the file it writes, before signing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from secfl._internal import files
from secfl.cli._common import (
    FedMinClients,
    FedObjective,
    FedRounds,
    FedSet,
    FedStrategy,
    FedTrain,
    err,
    out,
    read_input,
)
from secfl.errors import UsageError

__all__ = ["next_cmd", "next_path"]


def next_path(current: str, version: int) -> str:
    """Where the next version goes by default: ``policy.yaml`` -> ``policy-v2.yaml``."""
    path = Path(current)
    stem = path.stem
    base, sep, number = stem.rpartition("-v")
    if sep and base and number.isdigit():
        stem = base
    return str(path.with_name(f"{stem}-v{version}{path.suffix or '.yaml'}"))


#: The highest run number a policy may give (``federation.run``).
MAX_RUN = 2**31


def _check_run(given: object, run: int, version: int) -> None:
    """Refuse a ``--set run`` that does not go above the current version's run: the new
    version would train as a new run under an old run's number."""
    if isinstance(given, int) and not isinstance(given, bool) and given <= run:
        raise UsageError(
            f"--set run={given}: version {version} trains run {run} and a new version is a "
            f"new run; give run={run + 1} or more, or leave --set run out (run {run + 1})"
        )


def next_cmd(
    file: Annotated[str, typer.Argument(help="The policy's current version (YAML).")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="The file to write (default: FILE with -vN, e.g. policy-v2.yaml).",
        ),
    ] = None,
    rounds: FedRounds = None,
    min_clients: FedMinClients = None,
    strategy: FedStrategy = None,
    objective: FedObjective = None,
    train: FedTrain = None,
    set_: FedSet = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write the next version of a policy: version + 1, the current version's digest as
    its predecessor, and the federation settings the flags change.

    The file keeps its comments; edit anything else in it before it is signed. The
    result is checked as `secfl policy validate` checks it."""
    from secfl.cli.policy_init import federation_settings
    from secfl.fl._config import FederationConfig
    from secfl.fl._policy_check import check_ready, is_federation
    from secfl.policy import digest, load_policy
    from secfl.policy._document import policy_text
    from secfl.policy._new_version import check_new_version
    from secfl.policy._next import next_version

    text = policy_text(read_input(file, "policy"))  # as `validate` and `sign` read it
    current = load_policy(text)
    federation = None
    if is_federation(current):
        federation = federation_settings(
            dict(current.federation), set_, train,
            rounds=rounds, min_clients=min_clients, strategy=strategy, objective=objective,
        )  # fmt: skip
        # every version trains a run of its own: its number says so in logs and status
        run = FederationConfig.parse(current.federation).run
        if run >= MAX_RUN:
            raise UsageError(
                f"version {current.version} trains run {run}, the highest run number: a new "
                "version would be a new run; start a policy of another name"
            )
        if not any(v.partition("=")[0].strip() == "run" for v in set_ or []):
            federation["run"] = run + 1
        else:
            _check_run(federation.get("run"), run, current.version)
    elif set_ or train or any(v is not None for v in (rounds, min_clients, strategy, objective)):
        raise UsageError(f"'{file}' runs no federation: it has no settings to change")
    policy, new_text = next_version(text, federation)
    check_new_version(policy, new_text)
    warnings = check_ready(policy)
    target = Path(output or next_path(file, policy.version))
    if target.exists() and not force:
        raise UsageError(f"'{target}' exists; use --force to replace it")
    try:
        files.atomic_write(target, new_text.encode())  # a replaced file is never half-written
    except OSError as exc:
        raise UsageError(f"cannot write '{target}': {exc.strerror or exc}") from None
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False)
    changed = sorted(
        k
        for k in set(policy.federation) | set(current.federation)
        if policy.federation.get(k) != current.federation.get(k)
    )
    out.print(
        f"wrote {target}: policy {policy.name} version {policy.version} after version "
        f"{current.version} ({policy.predecessor[:16]}…), digest {digest(policy)}",
        markup=False,
    )
    out.print(f"federation changes: {', '.join(changed) or 'none'}", markup=False)
    if is_federation(policy):
        config = FederationConfig.parse(policy.federation)
        start = (
            "the newest model of the run before it (start_from: previous)"
            if config.start_from == "previous"
            else "the task's initial model (start_from: initial; --set start_from=previous "
            "continues from the last run's model)"
        )
        out.print(f"run {config.run}: a new version is a new run; it starts from {start}",
                  markup=False)  # fmt: skip
    threshold = current.board.threshold
    out.print(
        f"next: {threshold} member(s) of version {current.version}'s board run secfl policy "
        f"sign {target} --key KEY --member NAME; then secfl policy submit {target} --sig ... "
        "--spm URL --spm-pin PIN; then start the aggregator and the collaborators again "
        "with the same commands: a new run begins, no reset needed",
        markup=False,
    )
