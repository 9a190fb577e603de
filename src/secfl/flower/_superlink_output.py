"""The SuperLink's ``--output``: the ServerApp's outputs sealed to the model owner's key.

:func:`check_output` refuses, before anything runs, an ``--output`` the wrapper could
not write; :func:`read_output_key` reads the key ``secfl run`` injected; once the run
completed, :func:`seal_output` seals the ServerApp's working folder (in RAM, gone when
the wrapper exits) as a shield volume, trying again while the host keeps ``--output``
unwritable. Used by :mod:`secfl.flower._superlink`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from secfl._internal.files import read_bounded
from secfl.errors import FlowerError

__all__ = [
    "OUTPUT_PATIENCE",
    "OUTPUT_RETRY_SECONDS",
    "check_output",
    "read_output_key",
    "seal_output",
]

#: How long the wrapper keeps trying to write the sealed output once the run completed
#: (the ServerApp's outputs are in a RAM folder that goes when it exits), and how often.
OUTPUT_PATIENCE = 600.0
OUTPUT_RETRY_SECONDS = 5.0


def read_output_key(path: Path) -> bytes:
    """The model owner's key in ``path`` (a file ``secfl run`` injected), in hex."""
    raw = read_bounded(path, 4096)
    try:
        return bytes.fromhex(raw.decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise FlowerError(
            "flower: --output-key must hold a hex key ($$SECFL::NAME:hex$$)"
        ) from None


def check_output(out: Path) -> None:
    """Refuse, before anything runs, an --output the wrapper could not write once the run
    completed (its folder made if missing): a file made there and removed at once."""
    import tempfile

    try:
        if out.is_symlink():  # refused by the sealing, never followed: say so now
            raise OSError(40, "a symbolic link; name the file itself")
        if out.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".secfl-output-", dir=out.parent)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise FlowerError(
            f"flower: --output {out} cannot be written: {exc.strerror or exc}; give a file "
            "in a folder this workload may write"
        ) from None


def seal_output(folder: Path, out: Path, key: bytes) -> str:
    """The ServerApp's working folder as a shield volume under the model owner's key.
    The folder is in RAM and goes when the wrapper exits: while ``out`` cannot be
    written (the host changed it since the start), it is tried again every
    :data:`OUTPUT_RETRY_SECONDS` for :data:`OUTPUT_PATIENCE`, saying so in one line."""
    from secfl.errors import ShieldError
    from secfl.shield import encrypt_directory

    deadline, said = time.monotonic() + OUTPUT_PATIENCE, ""
    while True:
        try:
            tag = encrypt_directory(folder, out, key)
            break
        except ShieldError as exc:
            if time.monotonic() >= deadline:
                raise FlowerError(
                    f"flower: the ServerApp's outputs were not sealed to --output {out}: "
                    f"{exc}; they are lost with the run's private folder"
                ) from None
            if str(exc) != said:  # once per reason, not every few seconds
                said = str(exc)
                print(f"secfl: cannot write the sealed outputs: {exc}; trying again every "
                      f"{OUTPUT_RETRY_SECONDS:.0f} s for {OUTPUT_PATIENCE:.0f} s (make {out} "
                      "writable)", flush=True)  # fmt: skip
            time.sleep(OUTPUT_RETRY_SECONDS)
    print(f"secfl: the ServerApp's outputs are sealed in {out} (tag {tag[:16]}...)", flush=True)
    return str(tag)
