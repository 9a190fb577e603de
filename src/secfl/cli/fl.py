"""``secfl aggregator`` and ``secfl collaborator``: the FL workloads that ``secfl run``
starts inside a TEE; ``secfl policy sign-reset`` for board members."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from secfl.cli._common import UsageError, err, read_input
from secfl.fl._host_settings import HostSettings, check_address

__all__ = ["aggregator", "collaborator", "sign_reset"]

Insecure = Annotated[
    bool,
    typer.Option("--insecure", help="Plaintext, no TEE, no SPM: for measuring overhead only."),
]


#: Secure mode takes only what attestation covers (secfl.fl._inputs.require_measured).
TASK_HELP = "volume:NAME or a built-in task (task.py or its folder: --insecure only)."
DATA_HELP = "volume:NAME; a file or folder: --insecure only"
KEY_HELP = "(an injected file, relative to $SECFL_FILES; default: the well-known one)"


def _logging() -> HostSettings:
    """Logging at the host's ``SECFL_LOG_LEVEL`` (secfl's own loggers only: a library's
    debug lines could show what the host should not see); the host's settings."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per SPM request
    # a wait (for the aggregator, for a collaborator to rejoin) repeats its line: once
    # per 30 s, with a count, instead of every second
    from secfl._internal.logfilter import install

    install(logging.getLogger().handlers)
    host = HostSettings.from_env()
    logging.getLogger("secfl").setLevel(host.log_level)
    return host


@contextlib.contextmanager
def _ctrl_c() -> Iterator[None]:
    """Ctrl-C: the workload said what it stopped at; exit 130 without an error line."""
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _warn_insecure(insecure: bool) -> None:
    """The warning of --insecure; a secure workload's uncaught errors are one line from
    here on (a traceback shows the task's code to the host: secfl.tasks._contract)."""
    if insecure:
        err.print(
            "[bold red]WARNING: --insecure: plaintext gRPC, no TEE, no SPM, no attestation. "
            "For measuring overhead only; never use it with real data.[/]"
        )
    else:
        from secfl._internal.failures import hide_uncaught_errors

        hide_uncaught_errors()


def aggregator(
    task: Annotated[str, typer.Option(help=TASK_HELP)],
    validation: Annotated[str | None, typer.Option(help=f"Validation data ({DATA_HELP}).")] = None,
    test: Annotated[str | None, typer.Option(help=f"Test data ({DATA_HELP}).")] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT to serve collaborators on (else $SECFL_LISTEN, else 0.0.0.0:7443)."
        ),
    ] = None,
    checkpoints: Annotated[
        str | None,
        typer.Option(
            help="Folder of sealed checkpoints (else $SECFL_CHECKPOINTS, else checkpoints)."
        ),
    ] = None,
    metrics: Annotated[
        str | None, typer.Option(help="Append one JSON line per round here (else $SECFL_METRICS).")
    ] = None,
    output: Annotated[
        str | None, typer.Option(help="Folder for the final model (else $SECFL_OUTPUT).")
    ] = None,
    federation: Annotated[str | None, typer.Option(help="--insecure only: settings file.")] = None,
    signing_key: Annotated[str | None, typer.Option(help=f"Model-signing key {KEY_HELP}.")] = None,
    checkpoint_key: Annotated[str | None, typer.Option(help=f"Checkpoint key {KEY_HELP}.")] = None,
    output_key: Annotated[str | None, typer.Option(help=f"Output key {KEY_HELP}.")] = None,
    ready_file: Annotated[
        str | None,
        typer.Option(help="Write {port, pid} here when listening (else $SECFL_READY_FILE)."),
    ] = None,
    reset: Annotated[str | None, typer.Option(help="A board-approved reset file.")] = None,
    insecure: Insecure = False,
) -> None:
    """Run global training: rounds, aggregation, sealed checkpoints, fresh signed models."""
    from secfl.fl._startup import AggregatorOptions, run_aggregator

    host = _logging()
    _warn_insecure(insecure)
    # An option on the (measured) command line wins; else the host's environment.
    folder = Path(checkpoints) if checkpoints else host.checkpoints or Path("checkpoints")
    with _ctrl_c():
        run_aggregator(
            AggregatorOptions(
                task=task,
                validation=validation,
                test=test,
                listen=check_address(listen, "--listen", listen=True)
                if listen
                else host.listen or "0.0.0.0:7443",
                checkpoints=None if insecure else folder,
                metrics=Path(metrics) if metrics else host.metrics,
                output=Path(output) if output else host.output,
                insecure=insecure,
                federation=Path(federation) if federation else None,
                signing_key=signing_key,
                checkpoint_key=checkpoint_key,
                output_key=output_key,
                ready_file=Path(ready_file) if ready_file else host.ready_file,
                reset=Path(reset) if reset else None,
            )
        )


def collaborator(
    task: Annotated[str, typer.Option(help=TASK_HELP)],
    aggregator: Annotated[
        str | None, typer.Option(help="HOST:PORT of the aggregator (else $SECFL_AGGREGATOR).")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help=f"Training data ({DATA_HELP}; default: the data volume).")
    ] = None,
    aggregator_service: Annotated[
        str | None, typer.Option(help="The aggregator's service name.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="--insecure only: this site's name.")] = None,
    verify_key: Annotated[
        str | None, typer.Option(help=f"Model-signing public key {KEY_HELP}.")
    ] = None,
    patience: Annotated[
        float | None,
        typer.Option(
            help="Seconds to wait for an unreachable aggregator (default: the policy's "
            "federation.join_patience, 3600)."
        ),
    ] = None,
    insecure: Insecure = False,
) -> None:
    """Run local training: join, train on this site's data when sampled, send updates."""
    from secfl.fl._collaborator_startup import CollaboratorOptions, run_collaborator

    host = _logging()
    if aggregator:
        address = check_address(aggregator, "--aggregator")
    elif host.aggregator:
        address = host.aggregator
    else:
        # under secfl run an option is part of the measured command line: the policy's
        # measurement would no longer match, so only the variable is the host's to set
        raise UsageError(
            "collaborator: where is the aggregator? set SECFL_AGGREGATOR=HOST:PORT (not "
            "measured: the host may change it) or give --aggregator HOST:PORT"
            if insecure
            else "collaborator: where is the aggregator? set SECFL_AGGREGATOR=HOST:PORT in "
            "the environment of `secfl run` (not measured: the host may change it; an "
            "--aggregator option would change the command line the policy measured)"
        )
    _warn_insecure(insecure)
    with _ctrl_c():
        run_collaborator(
            CollaboratorOptions(
                aggregator=address,
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
    policy: Annotated[
        str, typer.Option(metavar="PATH", help="The policy file (YAML) the reset is for.")
    ],
    value: Annotated[int, typer.Option(help="The SPM counter's current value.")],
    key: Annotated[str, typer.Option(help="Your board signing key (PEM).")],
    member: Annotated[str, typer.Option(help="Your board member name.")],
    out: Annotated[str, typer.Option("-o", "--out", help="The reset file (signatures added).")],
    counter: Annotated[
        str | None,
        typer.Option(help="The counter name (default: the federation's, federation.counter)."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why the board resets.")] = "checkpoint lost",
) -> None:
    """Approve, as a board member, that the aggregator resumes past a lost checkpoint."""
    from secfl.fl._reset import reset_statement, sign_reset
    from secfl.policy import _keys as keys
    from secfl.policy._canonical import digest
    from secfl.policy._document import load_policy
    from secfl.policy._signatures import check_signer

    doc = load_policy(read_input(policy, "policy"))
    if not 0 <= value < 2**63:  # what the aggregator accepts (secfl.fl._reset.check_reset)
        raise UsageError("--value: the SPM counter's current value, from 0 to 2**63-1")
    if counter is None:
        named = doc.federation.get("counter", "rounds")
        counter = named if isinstance(named, str) else "rounds"
    if counter not in doc.counter_names():
        names = ", ".join(sorted(doc.counter_names())[:16]) or "none"
        raise UsageError(f"--counter: '{counter[:64]}' is not a counter of this policy ({names})")
    signing_key = read_input(key, "signing key")
    check_signer(doc.board, member, keys.load_private(signing_key), previous=False, versions=False)
    statement = reset_statement(doc.name, digest(doc), counter, value, reason)
    count = sign_reset(Path(out), statement, signing_key, member)
    typer.echo(
        f"{out}: {count} signature(s) for resetting '{counter}' at {value}, for version "
        f"{doc.version} of '{doc.name}' (digest {statement['policy_digest'][:16]}...)"
    )
