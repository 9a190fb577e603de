"""``secfl``: the entry point and its error contract.

A refusal or a user mistake prints ``error: <what failed>`` on standard error in
one line and exits 1; never a traceback.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

import typer

from secfl import __version__
from secfl._internal.values import shown
from secfl.cli import (
    attest,
    attest_demo,
    audit,
    bench,
    data,
    demo,
    evaluate,
    fl,
    flower,
    measure,
    new,
    policy,
    revocation,
    run,
    shield,
    sim,
    simulate,
    spm,
    status,
)
from secfl.cli._common import err
from secfl.cli._help import OrderedGroup, plain_help
from secfl.errors import SecflError

__all__ = [
    "app",
    "command",
    "main",
]

app = typer.Typer(
    name="secfl",
    help="Confidential federated learning inside attested TEEs.",
    no_args_is_help=True,
    # Classic help: plain metavars and text, never a truncated option; the main commands
    # first (see secfl.cli._help). Lines up to 100 columns where the terminal allows.
    cls=OrderedGroup,
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},
    pretty_exceptions_enable=False,
    add_completion=False,
)
attest.app.command("demo")(attest_demo.attestation_demo)
app.add_typer(attest.app, name="attest")
app.add_typer(sim.app, name="sim")
app.add_typer(policy.app, name="policy")
app.add_typer(spm.app, name="spm")
app.add_typer(audit.app, name="audit")
app.add_typer(shield.app, name="shield")
app.add_typer(data.app, name="data")
app.add_typer(evaluate.app, name="eval")
app.add_typer(flower.app, name="flower")
app.add_typer(bench.app, name="bench")
app.command("measure")(measure.measure)
app.command("run")(run.run)
app.command("demo")(demo.demo)
app.add_typer(new.app, name="new")
app.command("simulate")(simulate.simulate)
app.command("aggregator")(fl.aggregator)
app.command("collaborator")(fl.collaborator)
policy.app.command("sign-reset")(fl.sign_reset)
app.command("status")(status.status)
app.command("revoke")(revocation.revoke_cmd)
app.command("revocations")(revocation.revocations_cmd)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


@cache
def command() -> Any:
    """The click command behind :data:`app`, with the help in its plain form."""
    return plain_help(typer.main.get_command(app))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map every :class:`SecflError` to one line and exit code 1."""
    try:
        result = command().main(args=argv, prog_name="secfl", standalone_mode=False)
    except SecflError as exc:
        # one line, nothing a terminal acts on: messages quote peers, files and databases
        err.print(f"error: {shown(str(exc))}", markup=False)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("error: aborted", markup=False)
        return 1
    except typer.TyperException as exc:  # usage errors: typer shows usage and the problem
        _hint(exc)
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"error: {exc.format_message()}", markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("error: interrupted", markup=False)
        return 130
    return result if isinstance(result, int) else 0


def _hint(exc: Exception) -> None:
    """Say where a program's own options go when `secfl run` took one for its own (a
    user who left out the ``--`` got only "No such option: --rounds")."""
    ctx = getattr(exc, "ctx", None)
    # (typer carries its own copy of click: the class is told by its name)
    if type(exc).__name__ == "NoSuchOption" and ctx is not None and ctx.command.name == "run":
        hint = "; the program's own options go after `--`: secfl run [OPTIONS] -- PROGRAM ARGS"
        setattr(exc, "message", f"{getattr(exc, 'message', '')}{hint}")  # noqa: B010


if __name__ == "__main__":
    sys.exit(main())
