"""What both Flower roles share under ``secfl run``: loopback APIs, private paths,
clean environments and supervised children.

Flower's own processes get an environment with no inherited ``FLWR_*``
(``FLWR_INTERNAL_GRPC_CONTROL_API=1`` alone would open the Control API on the
network) nor ``PYTHONPATH``-like variables, ``FLWR_HOME`` in the private folder (FABs,
state and logs stay in RAM), and no telemetry, update check or run-time package
installation; they die with the wrapper. The command lines themselves are checked by
:mod:`secfl.flower._flags`.

This module imports no Flower: the checks are testable in any venv.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from secfl._internal import environ, files
from secfl.errors import FlowerError

__all__ = [
    "Child",
    "PrivatePaths",
    "check_health_address",
    "check_loopback",
    "clean_env",
    "host_port",
    "scrub_environment",
    "venv_program",
]


def venv_program(name: str) -> Path:
    """A command of this Python's venv (never one found on the host's ``PATH``)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise FlowerError(
            f"flower: '{name}' is not installed next to {sys.executable}: run the wrapper "
            "with the Flower venv's Python (bash scripts/flwr-venv.sh)"
        )
    return path


def check_health_address(address: str | None) -> None:
    """Flower's health service (gRPC without TLS), when asked for, listens on loopback."""
    if address is not None:
        host, _, _ = address.rpartition(":")
        check_loopback("Flower's health service (--health-server-address)", host or address)


def check_loopback(what: str, host: str) -> None:
    """``host`` must be a loopback address: the API behind it never leaves the TEE. An
    address, not a name: what ``localhost`` resolves to is the host's /etc/hosts."""
    name = host.strip("[]")
    try:
        if ipaddress.ip_address(name).is_loopback:
            return
    except ValueError:
        pass
    raise FlowerError(
        f"flower: {what} listens on {host}, not on loopback: it must stay inside the TEE "
        "(give 127.0.0.1; the wrapper's gate is what the network reaches)"
    )


def host_port(host: str, port: int) -> str:
    """``HOST:PORT`` for a URL or a Flower address (an IPv6 host in brackets;
    ``localhost`` as 127.0.0.1, the name the policy certificate carries)."""
    name = host.strip("[]")
    if name == "localhost":
        name = "127.0.0.1"
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


@dataclass
class PrivatePaths:
    """The wrapper's folders inside ``$SECFL_FILES`` (RAM, 0700)."""

    root: Path

    @classmethod
    def create(cls, env: Mapping[str, str]) -> PrivatePaths:
        private = env.get("SECFL_FILES")
        if not private or not Path(private).is_dir():
            raise FlowerError(
                "flower: $SECFL_FILES is not set: start this under `secfl run`, which attests "
                "it and injects its keys"
            )
        paths = cls(Path(private))
        for folder in (paths.home, paths.work, paths.wrapper, paths.tmp):
            try:
                folder.mkdir(mode=0o700)
            except FileExistsError:
                raise FlowerError(
                    f"flower: {folder.name} already exists in $SECFL_FILES: the policy must "
                    "not inject files there"
                ) from None
        return paths

    @property
    def home(self) -> Path:
        """``FLWR_HOME``: installed FABs, state, logs."""
        return self.root / "flower-home"

    @property
    def work(self) -> Path:
        """The working folder of Flower and of the apps (a ServerApp's outputs)."""
        return self.root / "flower-work"

    @property
    def tmp(self) -> Path:
        """Flower's and the apps' temporary files (``TMPDIR``): installing a FAB unpacks
        the app's code in one, which in the system's /tmp a host process could read."""
        return self.root / "flower-tmp"

    @property
    def wrapper(self) -> Path:
        """The wrapper's own files (the SuperExec secret)."""
        return self.root / "flower-wrapper"

    def secret(self) -> tuple[Path, bytes]:
        """A fresh SuperExec secret, as a 0600 file: only the wrapper's executor, which
        holds it too, may take tasks from Flower's Runtime API."""
        value = os.urandom(32).hex().encode()
        path = files.write_private(self.wrapper / "superexec.secret", value, fsync=False)
        return path, value


def scrub_environment() -> None:
    """This wrapper's own environment: no TLS key log, and loopback never through a
    proxy (its gate, executor and health checks connect from this process, gRPC and
    httpx read these, and Flower's Runtime API on loopback is plaintext)."""
    environ.scrub(environ.KEY_LOGS | environ.CODE_LOADERS)
    direct = environ.loopback_direct(os.environ)
    for name in [k for k in os.environ if k not in direct]:
        del os.environ[name]
    os.environ.update(direct)


def clean_env(base: Mapping[str, str], paths: PrivatePaths) -> dict[str, str]:
    """Flower's environment: ``base`` without what could reconfigure it, plus ours."""
    # no code or library loaded by name, no TLS key log, none of Flower's own settings,
    # and loopback never through a proxy (its APIs are plaintext): secfl._internal.environ
    env, _ = environ.for_program(base)
    env = environ.loopback_direct({k: v for k, v in env.items() if not k.startswith("FLWR_")})
    bindir = str(Path(sys.executable).parent)
    env.update(
        {
            "FLWR_HOME": str(paths.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": bindir + os.pathsep + base.get("PATH", os.defpath),
            "PYTHONUNBUFFERED": "1",
            **dict.fromkeys(("TMPDIR", "TEMP", "TMP"), str(paths.tmp)),
        }
    )
    return env


def _die_with(parent: int) -> Callable[[], None]:
    """What a child runs between fork and exec: die when the wrapper dies (the signal
    follows the forking *thread*: children are started from the main thread)."""

    def setup() -> None:  # pragma: no cover - runs in the child
        from secfl.launcher import _linux as linux

        if linux.available():
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(127)

    return setup


@dataclass
class Child:
    """A Flower process the wrapper started: it dies with the wrapper (``PDEATHSIG``)."""

    name: str
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> Child:
        try:
            proc = subprocess.Popen(
                list(argv), env=dict(env), cwd=cwd, preexec_fn=_die_with(os.getpid())
            )
        except OSError as exc:
            raise FlowerError(f"flower: cannot start {name}: {exc.strerror or exc}") from None
        return cls(name, proc)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)
