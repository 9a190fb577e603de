"""``secfl aggregator`` and ``secfl collaborator``: the FL workloads that ``secfl run``
starts inside a TEE; ``secfl policy sign-reset`` for board members."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from secfl.cli._common import UsageError, err, read_input

__all__ = ["aggregator", "collaborator", "sign_reset"]

Insecure = Annotated[
    bool,
    typer.Option("--insecure", help="Plaintext, no TEE, no SPM: for measuring overhead only."),
]


#: Secure mode takes only what attestation covers (secfl.fl._inputs.require_measured).
TASK_HELP = "volume:NAME or a built-in task (a .py file: --insecure only)."
DATA_HELP = "volume:NAME; a file: --insecure only"
KEY_HELP = "(an injected file, relative to $SECFL_FILES; default: the well-known one)"


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per SPM request


def _warn_insecure(insecure: bool) -> None:
    if insecure:
        err.print(
            "[bold red]WARNING: --insecure: plaintext gRPC, no TEE, no SPM, no attestation. "
            "For measuring overhead only; never use it with real data.[/]"
        )


def aggregator(
    task: Annotated[str, typer.Option(help=TASK_HELP)],
    validation: Annotated[str | None, typer.Option(help=f"Validation shard ({DATA_HELP}).")] = None,
    test: Annotated[str | None, typer.Option(help=f"Test shard ({DATA_HELP}).")] = None,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve collaborators on.")
    ] = "0.0.0.0:7443",
    checkpoints: Annotated[
        str | None, typer.Option(help="Folder of sealed checkpoints.")
    ] = "checkpoints",
    metrics: Annotated[
        str | None, typer.Option(help="Append one JSON line per round here.")
    ] = None,
    output: Annotated[str | None, typer.Option(help="Folder for the final model.")] = None,
    federation: Annotated[str | None, typer.Option(help="--insecure only: settings file.")] = None,
    signing_key: Annotated[str | None, typer.Option(help=f"Model-signing key {KEY_HELP}.")] = None,
    checkpoint_key: Annotated[str | None, typer.Option(help=f"Checkpoint key {KEY_HELP}.")] = None,
    output_key: Annotated[str | None, typer.Option(help=f"Output key {KEY_HELP}.")] = None,
    ready_file: Annotated[
        str | None, typer.Option(help="Write {port, pid} here when listening.")
    ] = None,
    reset: Annotated[str | None, typer.Option(help="A board-approved reset file.")] = None,
    insecure: Insecure = False,
) -> None:
    """Run global training: rounds, aggregation, sealed checkpoints, fresh signed models."""
    from secfl.fl._startup import AggregatorOptions, run_aggregator

    _logging()
    _warn_insecure(insecure)
    run_aggregator(
        AggregatorOptions(
            task=task,
            validation=validation,
            test=test,
            listen=listen,
            checkpoints=Path(checkpoints) if checkpoints and not insecure else None,
            metrics=Path(metrics) if metrics else None,
            output=Path(output) if output else None,
            insecure=insecure,
            federation=Path(federation) if federation else None,
            signing_key=signing_key,
            checkpoint_key=checkpoint_key,
            output_key=output_key,
            ready_file=Path(ready_file) if ready_file else None,
            reset=Path(reset) if reset else None,
        )
    )


def collaborator(
    aggregator: Annotated[str, typer.Option(help="HOST:PORT of the aggregator.")],
    task: Annotated[str, typer.Option(help=TASK_HELP)],
    data: Annotated[
        str | None, typer.Option(help=f"Training shard ({DATA_HELP}; default: the data volume).")
    ] = None,
    aggregator_service: Annotated[
        str | None, typer.Option(help="The aggregator's service name.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="--insecure only: this site's name.")] = None,
    verify_key: Annotated[
        str | None, typer.Option(help=f"Model-signing public key {KEY_HELP}.")
    ] = None,
    patience: Annotated[
        float, typer.Option(help="Seconds to wait out an unreachable aggregator.")
    ] = 120.0,
    insecure: Insecure = False,
) -> None:
    """Run local training: join, train on this site's data when sampled, send updates."""
    from secfl.fl._startup import CollaboratorOptions, run_collaborator

    _logging()
    _warn_insecure(insecure)
    run_collaborator(
        CollaboratorOptions(
            aggregator=aggregator,
            task=task,
            data=data,
            aggregator_service=aggregator_service,
            insecure=insecure,
            name=name,
            verify_key=verify_key,
            patience=patience,
        )
    )


def sign_reset(
    policy: Annotated[str, typer.Option(help="The policy file (YAML) the reset is for.")],
    value: Annotated[int, typer.Option(help="The SPM counter's current value.")],
    key: Annotated[str, typer.Option(help="Your board signing key (PEM).")],
    member: Annotated[str, typer.Option(help="Your board member name.")],
    out: Annotated[str, typer.Option("-o", "--out", help="The reset file (signatures added).")],
    counter: Annotated[str, typer.Option(help="The counter name.")] = "rounds",
    reason: Annotated[str, typer.Option(help="Why the board resets.")] = "checkpoint lost",
) -> None:
    """Approve, as a board member, that the aggregator resumes past a lost checkpoint."""
    from secfl.fl._reset import reset_statement, sign_reset
    from secfl.policy._canonical import digest
    from secfl.policy._document import load_policy

    doc = load_policy(read_input(policy, "policy"))
    if value < 0:
        raise UsageError("--value must be >= 0")
    statement = reset_statement(doc.name, digest(doc), counter, value, reason)
    count = sign_reset(Path(out), statement, read_input(key, "signing key"), member)
    typer.echo(f"{out}: {count} signature(s) for resetting '{counter}' at {value}")
