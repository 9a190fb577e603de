"""``secfl``: the entry point and its error contract.

A refusal or a user mistake prints ``error: <what failed>`` on standard error in
one line and exits 1; never a traceback.
"""

from __future__ import annotations

import functools
import importlib
import sys
from functools import cache
from typing import Any

import typer

from secfl import __version__
from secfl._internal.values import shown
from secfl.cli._common import err
from secfl.cli._help import LazyGroup, plain_help
from secfl.errors import SecflError

__all__ = [
    "app",
    "command",
    "main",
]

#: Each top-level command: its module under :mod:`secfl.cli`, and the function in it
#: (a command) or ``None`` (the module's ``app``: a group). A module is imported only
#: when its command runs or help lists it: `secfl shield keygen` does not pay for
#: building the FL runtime's or the evaluations' commands (a third of a second each
#: time, in a suite and a walkthrough that start hundreds of them).
COMMANDS: dict[str, tuple[str, str | None]] = {
    "attest": ("attest", None),
    "sim": ("sim", None),
    "policy": ("policy", None),
    "spm": ("spm", None),
    "audit": ("audit", None),
    "shield": ("shield", None),
    "data": ("data", None),
    "eval": ("evaluate", None),
    "flower": ("flower", None),
    "bench": ("bench", None),
    "measure": ("measure", "measure"),
    "run": ("run", "run"),
    "demo": ("demo", "demo"),
    "new": ("new", None),
    "simulate": ("simulate", "simulate"),
    "aggregator": ("fl", "aggregator"),
    "collaborator": ("fl", "collaborator"),
    "status": ("status", "status"),
    "revoke": ("revocation", "revoke_cmd"),
    "revocations": ("revocation", "revocations_cmd"),
}

app = typer.Typer(
    name="secfl",
    help="Confidential federated learning inside attested TEEs.",
    no_args_is_help=True,
    # Classic help: plain metavars and text, never a truncated option; the main commands
    # first (see secfl.cli._help). Lines up to 100 columns where the terminal allows.
    cls=LazyGroup,
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _load(name: str) -> Any:
    """The click command ``secfl NAME``, built from its module (see :data:`COMMANDS`)."""
    module_name, function = COMMANDS[name]
    module = importlib.import_module(f"secfl.cli.{module_name}")
    # built as `app` would build it had it been registered there (typer passes the
    # root's settings down: no rich markup, the same exceptions)
    holder = typer.Typer(
        rich_markup_mode=app.rich_markup_mode,
        pretty_exceptions_short=app.pretty_exceptions_short,
        suggest_commands=app.suggest_commands,
        add_completion=False,
    )
    if function is None:
        holder.add_typer(module.app, name=name)
    else:
        holder.command(name)(getattr(module, function))
    built = typer.main.get_group(holder).commands[name]
    return plain_help(built)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


@cache
def command() -> Any:
    """The click command behind :data:`app`, with the help in its plain form; its
    commands are built as they are asked for."""
    root = typer.main.get_command(app)
    assert isinstance(root, LazyGroup)
    root.loaders = {name: functools.partial(_load, name) for name in COMMANDS}
    return plain_help(root)


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
    except MemoryError as exc:  # a traceback would show a task's code and data (review)
        err.print(f"error: out of memory ({type(exc).__name__[:80]}): give the process "
                  "more memory, or a smaller model or batch", markup=False)  # fmt: skip
        return 1
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
