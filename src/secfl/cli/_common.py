"""What every command shares: reading inputs, parsing times, failing in one line."""

from __future__ import annotations

import os
import re
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from secfl._internal import files
from secfl._internal.files import TooLarge, read_bounded
from secfl.errors import UsageError

__all__ = [
    "UsageError",
    "err",
    "is_stream",
    "out",
    "parse_at",
    "print_verbatim",
    "read_input",
    "read_optional",
    "read_value",
    "write_output",
]

#: Wide when not on a terminal, so tables stay readable in logs and CI output. No emoji
#: codes: what is printed quotes files, arguments and the SPM's data, where ``:smile:``
#: is text (Rich would show an emoji, and a service name as someone else's).
out = Console(
    highlight=False, soft_wrap=True, emoji=False, width=None if sys.stdout.isatty() else 160
)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def print_verbatim(text: str) -> None:
    """``text`` and a newline on standard output as they are, flushed: a document a
    program reads (``--json``), which no console may reword or wrap."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


#: The largest file a command reads whole (policies, evidence, collateral, signatures):
#: far above any of them, low enough that `/dev/zero` is refused rather than read forever.
MAX_INPUT_BYTES = 64 << 20


def read_input(
    path: str, what: str, *, limit: int = MAX_INPUT_BYTES, regular: bool = False
) -> bytes:
    """Read a file (``-`` is standard input), at most ``limit`` bytes; a missing or
    oversized file is one clear error. ``regular``: a regular file only (or ``-``), so
    that a FIFO or a device named there is refused, not waited on or read."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
            if len(data) > limit:
                raise TooLarge
            return data
        return read_bounded(Path(path), limit, regular=regular)
    except TooLarge:
        raise UsageError(f"{what} '{path}' is larger than {limit} bytes") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} '{path}': {exc.strerror or exc}") from None


#: The largest file a flag names for one value (a public key, a sealed value, the
#: simulation root: each a few kilobytes): a file of megabytes is refused at once,
#: not read and built into a policy (1 MiB at most) for seconds before that is refused.
MAX_VALUE_BYTES = 64 << 10


#: Names of this process's input streams: ``/dev/stdin``, and a shell's process
#: substitution (``<(cat key.pub)``: ``/dev/fd/63``).
_INPUT_STREAM = re.compile(r"/dev/stdin|/dev/fd/[0-9]{1,6}|/proc/self/fd/[0-9]{1,6}")


def read_value(path: str, what: str) -> bytes:
    """The bytes of a regular file (or standard input, or one of this process's input
    streams) that holds one value, at most :data:`MAX_VALUE_BYTES` of them; anything
    else (a FIFO or a device named elsewhere: waited on, or read for ever) is one clear
    error."""
    regular = _INPUT_STREAM.fullmatch(path) is None
    return read_input(path, what, limit=MAX_VALUE_BYTES, regular=regular)


def read_optional(path: str | None, what: str) -> bytes | None:
    return None if path is None else read_input(path, what)


def parse_at(text: str | None) -> datetime | None:
    """An ISO-8601 date or datetime; naive values are UTC."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at: '{text}' is not an ISO-8601 date or time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def write_output(data: bytes, path: str | None) -> None:
    """Write to ``path``, or to standard output when it is ``None`` or ``-``.

    A file appears whole or not at all, and a symbolic link at ``path`` is replaced,
    never followed: a signature written in place was cut short by a full disk, and one
    written through a link that came with a proposal destroyed the member's key. A pipe
    or a device (``/dev/stdout``, ``>(...)``) is written to as it is."""
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        if is_stream(path):
            files.write_stream(path, data)
        else:
            files.atomic_write(path, data, mode=0o644)
    except OSError as exc:
        raise UsageError(f"cannot write '{path}': {exc.strerror or exc}") from None


def is_stream(path: str) -> bool:
    """Whether ``path`` is a stream to write to in place rather than a file to replace:
    one of this process's stream names (``/dev/fd/1``, ``/proc/self/fd/1``...: written
    in place whatever file the stream is, since a redirected stdout is a regular file,
    which replacing would not reach), or (not a link) a pipe, a device or a socket.
    Never because of where a link says it leads: a link to ``/proc/self/root/...`` (or
    ``/dev/../home/...``) leads anywhere, and one planted as a signature's name was
    written through to the member's key (the review of the fix)."""
    if files.own_stream(path):
        return True
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def replaces_file(output: str, key: str) -> bool:
    """Whether writing ``output`` (:func:`write_output`: a link there is replaced,
    never followed) would replace the file ``key`` leads to."""
    where = os.path.realpath(os.path.dirname(os.path.abspath(output)))
    return os.path.join(where, os.path.basename(output)) == os.path.realpath(key)


def keep_folder(keep: str) -> Path:
    """A demo's ``--keep DIR``, absolute: a new folder (made private, 0700), or an empty
    one. A demo writes its SPM, simulated TEE root, policy, keys and every party's data
    there under fixed names: a folder in use lost its own ``sim/`` and ``policy.yaml``
    to them, and a second demo in the same folder read the first one's ready files
    (found by a review)."""
    path = Path(os.path.realpath(keep))
    try:
        path.mkdir(mode=0o700, parents=True)
        return path
    except FileExistsError:
        pass
    except OSError as exc:
        raise UsageError(f"--keep: cannot make '{keep}': {exc.strerror or exc}") from None
    try:
        st = os.stat(path)
        with os.scandir(path) as entries:
            used = any(True for _ in entries)
    except OSError as exc:
        raise UsageError(f"--keep: cannot use '{keep}': {exc.strerror or exc}") from None
    # another user who may write in it could plant a link there as policy.yaml, which
    # the demo writes through, or read what it leaves
    if st.st_uid != os.geteuid() or st.st_mode & 0o002:
        raise UsageError(
            f"--keep: others may write in '{keep}' (it is another user's, or world "
            "writable): name a folder of your own"
        )
    if used:
        raise UsageError(
            f"--keep: '{keep}' is not empty; the demo writes its SPM, simulated TEE root, "
            "policy and data there: name a new or empty folder"
        )
    return path


# --- federation settings given as flags (policy init, policy next) -------------------------

FedRounds = Annotated[int | None, typer.Option(help="federation.rounds (a new policy: 10).")]
FedMinClients = Annotated[
    int | None, typer.Option(help="federation.min_clients (a new policy: every site).")
]
FedStrategy = Annotated[
    str | None, typer.Option(metavar="NAME", help="federation.strategy (a new policy: fedavg).")
]
FedObjective = Annotated[
    str | None,
    typer.Option(metavar="METRIC[:min|max]", help="federation.objective (a new policy: loss:min)."),
]
FedTrain = Annotated[
    list[str] | None,
    typer.Option(metavar="KEY=VALUE", help="A federation.train setting (repeat)."),
]
FedSet = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Any other federation setting (repeat): run=2, start_from=previous, ...",
    ),
]
