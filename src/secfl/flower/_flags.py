"""The Flower command lines under secfl: every flag checked before Flower starts.

``python -m secfl.flower superlink|supernode [options] -- flower-superlink|flower-supernode
FLAGS`` runs inside the TEE as the program ``secfl run`` started (its command line is
the service's measurement). Every Flower flag is checked against an allow-list of
flwr 1.41's flags (argparse accepts abbreviations: ``--ins`` would be ``--insecure``,
so an unknown spelling is refused, not guessed); the flags that would weaken the
service are refused; the required ones must be there; and the files that carry keys
must be the ones ``secfl run`` injected: ``$SECFL_FILES`` and ``$SECFL_VOLUMES`` in
the flags are expanded here, and nothing else is. Each refusal is one line.

This module imports no Flower: the checks are testable in any venv.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from secfl.errors import FlowerError

__all__ = [
    "ROLES",
    "SUPERLINK",
    "SUPERNODE",
    "FlagSpec",
    "FlowerCommand",
    "expand",
    "parse_flower",
]

#: Tokens of the Flower flags that name a folder of ``secfl run``: nothing else expands.
_TOKENS = ("SECFL_FILES", "SECFL_VOLUMES")
#: What a folder expanded into a flag may not hold: quotes and backslashes end or escape
#: the string it is in (TOML's, in ``--node-config``), spaces and controls split it.
_UNPLAIN = re.compile(r"[\"'\\\s\x00-\x1f\x7f]")


@dataclass(frozen=True)
class FlagSpec:
    """The flags one Flower command accepts (from its ``--help`` in flwr 1.41), and what
    secfl requires of them."""

    program: str
    with_value: frozenset[str]
    switches: frozenset[str]
    #: Refused outright, with the reason.
    refused: Mapping[str, str]
    #: Must be given (flag -> why).
    required: Mapping[str, str]
    #: Flags naming a file that must come from ``secfl run`` (under ``$SECFL_FILES``).
    injected: frozenset[str]
    #: flag -> the only value secfl accepts.
    fixed: Mapping[str, str] = field(default_factory=dict)


_SHARED_REFUSED = {
    "--insecure": "it turns TLS off",
    "--superexec-auth-secret-file": "the wrapper creates the SuperExec secret itself",
    "--allow-runtime-dependency-installation": (
        "it installs packages from the network at run time, code no measurement covers"
    ),
    "-h": "it prints help instead of running",
    "--help": "it prints help instead of running",
    "-V": "it prints the version instead of running",
    "--version": "it prints the version instead of running",
}

_LINK_VALUES = frozenset({
    "--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--isolation", "--database",
    "--log-file", "--log-rotation-interval-hours", "--log-rotation-backup-count",
    "--host", "--port", "--health-server-address", "--superexec-auth-secret-file",
    "--auth-list-public-keys", "--fleet-api-type", "--fleet-api-address",
    "--control-api-address",
})  # fmt: skip

_LINK_SWITCHES = frozenset({
    "--insecure", "--enable-supernode-auth", "--disable-runtime-dependency-installation",
    "--allow-runtime-dependency-installation", "--simulation", "-h", "--help", "-V",
    "--version",
})  # fmt: skip

_NODE_VALUES = frozenset({
    "--root-certificates", "--superlink", "--max-retries", "--max-wait-time",
    "--auth-supernode-private-key", "--auth-supernode-public-key", "--node-config",
    "--isolation", "--host", "--port", "--ssl-certfile", "--ssl-keyfile",
    "--ssl-ca-certfile", "--trusted-entities", "--superexec-auth-secret-file",
    "--health-server-address",
})  # fmt: skip

_NODE_SWITCHES = frozenset({
    "--insecure", "--allow-runtime-dependency-installation", "-h", "--help", "-V",
    "--version",
})  # fmt: skip

SUPERLINK = FlagSpec(
    program="flower-superlink",
    with_value=_LINK_VALUES,
    switches=_LINK_SWITCHES,
    refused={
        **_SHARED_REFUSED,
        "--simulation": "a simulation SuperLink accepts no SuperNodes",
        "--auth-list-public-keys": "Flower 1.41 refuses it; secfl registers the attested keys",
        "--fleet-api-type": "deprecated: the Fleet API is HTTP, behind secfl's gate",
        "--fleet-api-address": "deprecated: the Fleet API is HTTP, behind secfl's gate",
        "--control-api-address": "deprecated: the Control API must stay inside the TEE",
    },
    required={
        "--ssl-certfile": "the SuperLink's certificate from the policy",
        "--ssl-keyfile": "the SuperLink's key, released only to this service",
        "--ssl-ca-certfile": "the policy's Flower CA",
        "--enable-supernode-auth": "only the attested SuperNodes' keys may join",
        "--isolation": "process: secfl runs only the approved ServerApp",
        "--disable-runtime-dependency-installation": (
            "no packages installed at run time (code no measurement covers)"
        ),
    },
    injected=frozenset({"--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile"}),
    fixed={"--isolation": "process"},
)

SUPERNODE = FlagSpec(
    program="flower-supernode",
    with_value=_NODE_VALUES,
    switches=_NODE_SWITCHES,
    refused={
        **_SHARED_REFUSED,
        "--auth-supernode-public-key": "deprecated: the key pair comes from the policy",
        **dict.fromkeys(
            ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile"),
            "the wrapper serves the Runtime API with a TLS key of its own, made in the TEE",
        ),
    },
    required={
        "--superlink": "the SuperLink's address",
        "--auth-supernode-private-key": "this site's node key, released only to this service",
        "--isolation": "process: secfl runs only the approved ClientApp",
    },
    injected=frozenset({"--root-certificates", "--auth-supernode-private-key"}),
    fixed={"--isolation": "process"},
)

ROLES = {"superlink": SUPERLINK, "supernode": SUPERNODE}


@dataclass
class FlowerCommand:
    """A checked Flower command line: the program and its flags (expanded)."""

    spec: FlagSpec
    argv: list[str]
    values: dict[str, str]
    switches: set[str]

    def value(self, flag: str, default: str | None = None) -> str | None:
        return self.values.get(flag, default)

    def replaced(self, flag: str, value: str) -> list[str]:
        """The command line with ``flag``'s value (given once) replaced by ``value``."""
        out, i = list(self.argv), 1
        while i < len(out):
            if out[i] in self.switches:
                i += 1
                continue
            if out[i] == flag:
                out[i + 1] = value
            i += 2
        return out

    def port(self, default: int) -> int:
        """``--port`` (Flower's own API, on loopback), checked."""
        text = self.values.get("--port", str(default))
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise FlowerError(f"flower: {self.spec.program} --port {text[:20]} is not a port")
        return int(text)


def expand(text: str, env: Mapping[str, str]) -> str:
    """``text`` with ``$SECFL_FILES`` / ``${SECFL_FILES}`` (and ``SECFL_VOLUMES``) replaced.

    The folder's name must be plain: the host chooses where ``secfl run`` makes it
    (``$TMPDIR`` when /dev/shm is not writable), and a quote in it ended the string it
    is expanded into (``--node-config 'data-path="$SECFL_VOLUMES/..."'``: Flower read
    ``data-path`` as a folder of the host's, whose files the ClientApp trained on)."""
    for token in _TOKENS:
        for form in ("${" + token + "}", "$" + token):
            if form in text:
                if not env.get(token):
                    raise FlowerError(
                        f"flower: ${token} is not set: start this under `secfl run`, which "
                        "injects the keys and volumes it names"
                    )
                if _UNPLAIN.search(env[token]):
                    raise FlowerError(
                        f"flower: ${token} ({env[token][:80]!r}) holds a quote, a backslash or "
                        "a space: expanded into a flag it would change what the flag says; "
                        "start secfl run where its private folder has a plain name (a "
                        "writable /dev/shm, or a $TMPDIR without them)"
                    )
                text = text.replace(form, env[token])
    return text


def parse_flower(role: str, argv: Sequence[str], env: Mapping[str, str]) -> FlowerCommand:
    """The Flower command after ``--``, checked against the role's :class:`FlagSpec`."""
    spec = ROLES[role]
    if not argv:
        raise FlowerError(f"flower: give the Flower command after --: -- {spec.program} FLAGS")
    if Path(argv[0]).name != spec.program:
        raise FlowerError(
            f"flower: {role} runs '{spec.program}', not '{argv[0]}': -- {spec.program} FLAGS"
        )
    values: dict[str, str] = {}
    switches: set[str] = set()
    out = [argv[0]]
    i = 1
    while i < len(argv):
        token = argv[i]
        flag, eq, inline = token.partition("=")
        if not flag.startswith("-"):
            raise FlowerError(f"flower: {spec.program} takes no argument '{token[:60]}'")
        if flag in spec.refused:
            raise FlowerError(f"flower: {spec.program} {flag} is refused: {spec.refused[flag]}")
        if flag in spec.switches:
            if eq:
                raise FlowerError(f"flower: {spec.program} {flag} takes no value")
            if flag in switches:
                raise FlowerError(f"flower: {spec.program} {flag} given twice")
            switches.add(flag)
            out.append(flag)
            i += 1
            continue
        if flag not in spec.with_value:
            raise FlowerError(
                f"flower: {spec.program} flag '{flag[:60]}' is not one secfl checks (abbreviated "
                "or unknown): spell it out as in `--help` of flwr 1.41"
            )
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                raise FlowerError(f"flower: {spec.program} {flag} needs a value")
            value = argv[i + 1]
            i += 2
        if flag in values:
            raise FlowerError(f"flower: {spec.program} {flag} given twice")
        value = expand(value, env)
        if not value.strip():
            # an empty host is every interface to Flower's servers (found by a hostile
            # review: `--host=` passed the loopback check as its default)
            raise FlowerError(f"flower: {spec.program} {flag} has an empty value: give one or "
                              "leave the flag out")  # fmt: skip
        values[flag] = value
        out += [flag, value]
    for flag, why in spec.required.items():
        if flag not in values and flag not in switches:
            raise FlowerError(f"flower: {spec.program} needs {flag} ({why})")
    for flag, want in spec.fixed.items():
        if values.get(flag) != want:
            raise FlowerError(
                f"flower: {spec.program} needs {flag} {want} ({spec.required.get(flag, '')})"
            )
    private = env.get("SECFL_FILES", "")
    for flag in spec.injected:
        if flag in values:
            _check_injected(spec.program, flag, values[flag], private)
    return FlowerCommand(spec, out, values, switches)


def _check_injected(program: str, flag: str, value: str, private: str) -> None:
    """A key or CA file must be one ``secfl run`` injected: under ``$SECFL_FILES``."""
    if not private:
        raise FlowerError(
            f"flower: {program} {flag} must name a file secfl run injected, but $SECFL_FILES "
            "is not set: start this under `secfl run`"
        )
    root = Path(os.path.realpath(private))  # (Path.resolve raises on a link loop)
    path = Path(os.path.realpath(value))
    if root not in path.parents:
        raise FlowerError(
            f"flower: {program} {flag} names {value[:80]}, not a file secfl run injected: "
            "use $SECFL_FILES/... as the policy's inject.files says"
        )
    if not path.is_file():
        raise FlowerError(
            f"flower: {program} {flag}: {value[:80]} does not exist: the policy must inject it "
            "(inject.files of this service)"
        )
