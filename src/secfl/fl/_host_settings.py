"""Operational settings the host chooses: read from the environment, never trusted.

A workload's measurement covers its command line, so anything on it needs a new
board-signed policy to change. Settings that do not change what the code does with
data — where to listen and whom to dial, where to write checkpoints, metrics, the
final model and the ready file, how much to log — are left to the host instead,
through environment variables that ``secfl run`` passes on unmeasured:

=====================  ===========================================================
``SECFL_LISTEN``       aggregator: HOST:PORT to serve on (default ``0.0.0.0:7443``)
``SECFL_AGGREGATOR``   collaborator: HOST:PORT of the aggregator
``SECFL_CHECKPOINTS``  aggregator: folder of sealed checkpoints (``checkpoints``)
``SECFL_METRICS``      aggregator: file to append one JSON line per round to
``SECFL_OUTPUT``       aggregator: folder for the final model (sealed to the output key)
``SECFL_READY_FILE``   aggregator: file to write ``{port, pid}`` to once listening
``SECFL_LOG_LEVEL``    both: DEBUG, INFO (default), WARNING or ERROR
=====================  ===========================================================

Why each is safe in the host's hands (docs/operations.md says it for operators): the
host controls the network and the disk anyway. Peers authenticate each other by
certificates from the policy's CA, not by address; checkpoints and the final model
are sealed, and rollback is caught by the SPM's counter, not by where files lie; the
per-round metrics are the figures the aggregator already logs on the host. Each value
is still bounded and checked (addresses are HOST:PORT, paths hold no control
characters, the log level is one of four words), and no path may point into the
workload's private folder (``$SECFL_FILES``), where its keys are.

An option given on the command line wins over the environment: a board that wants a
setting fixed puts it in the measured command.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from secfl._internal import files
from secfl.errors import FlError

__all__ = [
    "AGGREGATOR",
    "CHECKPOINTS",
    "LISTEN",
    "LOG_LEVEL",
    "LOG_LEVELS",
    "METRICS",
    "OUTPUT",
    "READY_FILE",
    "HostSettings",
    "check_address",
    "check_host_paths",
]

LISTEN = "SECFL_LISTEN"
AGGREGATOR = "SECFL_AGGREGATOR"
CHECKPOINTS = "SECFL_CHECKPOINTS"
METRICS = "SECFL_METRICS"
OUTPUT = "SECFL_OUTPUT"
READY_FILE = "SECFL_READY_FILE"
LOG_LEVEL = "SECFL_LOG_LEVEL"

LOG_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}

#: The longest path accepted (Linux's PATH_MAX).
MAX_PATH = 4096
_HOST = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_.-]{1,253}")


def check_address(value: str, what: str, *, listen: bool = False) -> str:
    """``value`` as HOST:PORT (an IPv6 host in brackets), or one line naming ``what``."""
    host, sep, port = value.rpartition(":")
    low = 0 if listen else 1
    if (
        len(value) > 300
        or not sep
        or not _HOST.fullmatch(host)
        or not (port.isascii() and port.isdigit() and len(port) <= 5)
        or not low <= int(port) <= 65535
    ):
        shown = repr(value[:60] + ("..." if len(value) > 60 else ""))
        raise FlError(f"{what}: {shown} is not HOST:PORT (port {low} to 65535)")
    return value


@dataclass(frozen=True)
class HostSettings:
    """The host's operational settings, each checked; ``None`` where not set."""

    listen: str | None = None
    aggregator: str | None = None
    checkpoints: Path | None = None
    metrics: Path | None = None
    output: Path | None = None
    ready_file: Path | None = None
    log_level: int = logging.INFO

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HostSettings:
        """Read and check the ``SECFL_*`` settings; a bad one is one line naming it."""
        env = os.environ if env is None else env
        private = env.get("SECFL_FILES") or None

        def address(name: str, *, listen: bool = False) -> str | None:
            value = env.get(name)
            return check_address(value, name, listen=listen) if value else None

        def path(name: str) -> Path | None:
            value = env.get(name)
            return _host_path(name, value, private) if value else None

        level = env.get(LOG_LEVEL) or "INFO"
        if level.upper() not in LOG_LEVELS:
            raise FlError(f"{LOG_LEVEL}: {level[:20]!r} is not one of {', '.join(LOG_LEVELS)}")
        return cls(
            listen=address(LISTEN, listen=True),
            aggregator=address(AGGREGATOR),
            checkpoints=path(CHECKPOINTS),
            metrics=path(METRICS),
            output=path(OUTPUT),
            ready_file=path(READY_FILE),
            log_level=LOG_LEVELS[level.upper()],
        )


def _host_path(name: str, value: str, private: str | None) -> Path:
    """A path the host chose: bounded, printable, and outside the private folder."""
    if len(value) > MAX_PATH or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise FlError(f"{name}: not a path (control characters, or longer than {MAX_PATH})")
    path = Path(value)
    if private:
        inside = Path(os.path.realpath(private))
        target = Path(os.path.realpath(path))
        if target == inside or inside in target.parents:
            raise FlError(
                f"{name}: {value[:120]!r} is inside the workload's private folder "
                "($SECFL_FILES, where its keys are): choose a path on the host's disk"
            )
    return path


def check_host_paths(output: Path | None, checkpoints: Path | None, metrics: Path | None) -> None:
    """Make the aggregator's folders and open its metrics file, before any round: one
    that cannot be used is one line now, not a traceback after training (or, for the
    metrics file, after a round was committed, which every restart would repeat).
    Folders are made private, as the checkpoints are written."""
    folders = [
        (output, "output", "the final model's folder", f"{OUTPUT} or --output"),
        (checkpoints, "checkpoint", "the checkpoint folder", f"{CHECKPOINTS} or --checkpoints"),
    ]
    for folder, check, what, where in folders:
        if folder is None:
            continue
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise FlError(
                f"{check}: {folder} ({where}) cannot be {what}: {exc.strerror or exc}; give "
                "a folder this workload may write"
            ) from None
    if metrics is not None:
        try:
            files.append(metrics, b"")  # made if missing; a FIFO there is refused
        except OSError as exc:
            raise FlError(
                f"metrics: cannot append to {metrics} ({METRICS} or --metrics): "
                f"{exc.strerror or exc}; give a file in a folder that exists and this workload "
                "may write"
            ) from None
