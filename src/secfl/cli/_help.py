"""How ``secfl --help`` reads: plain metavars, plain text, the main commands first.

Typer would show each option's Python type (``<bool>``, ``<list[str]>``), squeeze long
option names into a rich table until they are cut off, and print docstrings' inline
markup as typed. Here the help is the classic command-line form instead: click's own
formatter (nothing is ever truncated), one metavar vocabulary for the whole CLI (the
same option name takes the same kind of value in every command; an option's own
``metavar=`` wins), and docstrings' inline literals rendered as quoted text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from typer.core import TyperArgument, TyperGroup, TyperOption

__all__ = [
    "COMMAND_ORDER",
    "OPTION_METAVARS",
    "LazyGroup",
    "OrderedGroup",
    "plain_help",
    "plain_text",
    "walk",
]

#: The top-level commands in the order a newcomer meets them: try it, start a task,
#: run a federation, govern it, prepare volumes and data, inspect, then the tools.
#: Commands not named here follow, in the order they were registered.
COMMAND_ORDER = (
    "demo",
    "new",
    "simulate",
    "run",
    "aggregator",
    "collaborator",
    "status",
    "policy",
    "spm",
    "shield",
    "data",
    "audit",
    "revoke",
    "revocations",
    "attest",
    "measure",
    "sim",
    "eval",
    "bench",
)

#: What an option's value is, by the option's long name (the CLI's one vocabulary).
OPTION_METAVARS: dict[str, str] = {
    **dict.fromkeys(("--spm", "--kds", "--pccs", "--db"), "URL"),
    **dict.fromkeys(("--aggregator", "--listen"), "HOST:PORT"),
    **dict.fromkeys(
        (
            "--amd-crl",
            "--aux",
            "--board",
            "--board-key",
            "--cache",
            "--chain",
            "--chain-out",
            "--checkpoint-key",
            "--checkpoints",
            "--collateral",
            "--federation",
            "--keep",
            "--key",
            "--key-file",
            "--metrics",
            "--out",
            "--out-dir",
            "--output",
            "--output-key",
            "--ready-file",
            "--report",
            "--reset",
            "--sig",
            "--signing-key",
            "--sim-dir",
            "--sim-root",
            "--vcek",
            "--vcek-out",
            "--vectors",
            "--verify-key",
        ),
        "PATH",
    ),
    **dict.fromkeys(
        (
            "--aggregator-service",
            "--counter",
            "--defence",
            "--member",
            "--name",
            "--policy",
            "--secret",
            "--service",
        ),
        "NAME",
    ),
    **dict.fromkeys(("--volume", "--code-volume"), "NAME=PATH"),
    **dict.fromkeys(
        (
            "--expect-measurement",
            "--expect-tag",
            "--key-hex",
            "--measurement",
            "--report-data",
            "--spm-measurement",
            "--spm-pin",
        ),
        "HEX",
    ),
    **dict.fromkeys(("--patience", "--body-timeout", "--header-timeout"), "SECONDS"),
    **dict.fromkeys(
        ("--attacks", "--defences", "--malicious", "--partitions", "--tasks"), "A,B,..."
    ),
    "--at": "TIME",
    "--dirichlet": "ALPHA",
    "--format": "FORMAT",
    "--kind": "KIND",
    "--platform": "PLATFORM",
    "--product": "PRODUCT",
    "--task": "TASK",
    "--cmd": "COMMAND",
    "--module": "MODULE",
    "--shard": "K/N",
}

#: Metavars for the value types typer knows, as click names them.
TYPE_METAVARS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH"}

#: Arguments whose parameter name does not say what they are.
ARGUMENT_METAVARS = {"argv": "-- PROGRAM"}

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?(?:[\w.]+\.)?([^`]+)`")
_LITERAL = re.compile(r"``([^`\n]+)``")
_QUOTED = re.compile(r"(?<![`\w])`([^`\n]+)`(?![`\w])")


class OrderedGroup(TyperGroup):
    """The top-level group: lists its commands in :data:`COMMAND_ORDER`."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = list(super().list_commands(ctx))
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))


class LazyGroup(OrderedGroup):
    """The top-level group, whose commands are built the first time one is asked for:
    running a command builds that one (and imports its module) only. ``loaders`` maps
    each name to what builds it. ``commands`` builds them all (help's tests, the docs'
    checks); ``built`` is what has been built so far."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.loaders: dict[str, Callable[[], Any]] = {}
        self._built: dict[str, Any] = {}
        super().__init__(*args, **kwargs)

    @property
    def commands(self) -> dict[str, Any]:
        for name in self.loaders:
            self._build(name)
        return self._built

    @commands.setter
    def commands(self, value: Mapping[str, Any]) -> None:
        self._built = dict(value)

    @property
    def built(self) -> dict[str, Any]:
        return self._built

    def _build(self, name: str) -> Any:
        if name not in self._built and name in self.loaders:
            self._built[name] = self.loaders[name]()
        return self._built.get(name)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return self._build(cmd_name)

    def list_commands(self, ctx: Any) -> list[str]:
        names = [*self.loaders, *(n for n in self._built if n not in self.loaders)]
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))


class _PlainArgument(TyperArgument):
    """An argument listed by its metavar alone (typer would append its Python type)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        """The classic usage form, ``FILE``, ``[FILE]``, ``PATHS...`` (typer writes a
        required argument as ``{FILE}``)."""
        name = self.metavar or (self.name or "value").upper()
        if not self.required:
            name = f"[{name}]"
        return [f"{name}..." if self.nargs != 1 else name]


def plain_text(text: str) -> str:
    """Docstring markup as plain text: ``:class:`x``` is x, ````x```` and ```x``` are 'x'."""
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(r"'\1'", text)
    return _QUOTED.sub(r"'\1'", text)


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``command`` (itself first) with its path of names (a
    :class:`LazyGroup` builds all of its own)."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


def _walk_built(command: Any) -> Iterator[Any]:
    """Every command under ``command`` that is built (nothing of a lazy group's is
    built for it)."""
    yield command
    subs = command.built if isinstance(command, LazyGroup) else getattr(command, "commands", {})
    for sub in subs.values():
        yield from _walk_built(sub)


def _type_metavar(option: TyperOption, ctx: Any) -> str:
    label = option.display_type(ctx).strip("<>")
    label = label.removeprefix("list[").removesuffix("]").removesuffix(" range")
    if "|" in label:
        return f"[{label}]"
    return TYPE_METAVARS.get(label, label.upper())


def plain_help(root: Any) -> Any:
    """Give every parameter under ``root`` a plain metavar and its help plain text (a
    lazy group's commands are given theirs as they are built)."""
    ctx = root.make_context(root.name or "secfl", [], resilient_parsing=True)
    for command in _walk_built(root):
        if command.help:
            command.help = plain_text(command.help)
        if command.short_help:
            command.short_help = plain_text(command.short_help)
        elif command.help:  # the whole first paragraph, wrapped (click would cut it short)
            command.short_help = " ".join(command.help.strip().split("\n\n")[0].split())
        for param in command.params:
            if getattr(param, "help", None):
                param.help = plain_text(param.help)
            if isinstance(param, TyperArgument):
                if param.metavar is None:
                    name = param.name or "value"
                    param.metavar = ARGUMENT_METAVARS.get(name, name.upper())
                param.__class__ = _PlainArgument
            elif isinstance(param, TyperOption) and param.metavar is None:
                if param.is_flag or param.count:
                    param.metavar = ""
                else:
                    long_name = max(param.opts, key=len)
                    param.metavar = OPTION_METAVARS.get(long_name) or _type_metavar(param, ctx)
    return root
