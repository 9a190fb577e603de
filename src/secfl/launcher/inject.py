"""Secrets into an unmodified program: placeholders in arguments, environment and files.

``$$SECFL::name[:selector]$$`` is replaced by the released secret's text. Files
go into a private folder (mode 0700, files 0600) on a RAM-backed file system when
there is one, named by ``SECFL_FILES``; the launcher removes it when the program
exits. A placeholder naming a secret the service was not given is an error, so a
workload never starts with a literal placeholder where a secret should be.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

from secfl.errors import LaunchError, SecflError
from secfl.policy import placeholders
from secfl.spm.enroll import Enrollment


def substitute(text: str, enrollment: Enrollment, where: str) -> str:
    """``text`` with every placeholder replaced by the secret it names."""
    try:
        found = list(placeholders.find(text))
    except ValueError as exc:
        raise LaunchError(f"inject: {where}: {exc}") from None
    for ph in found:
        if ph.name not in enrollment.secrets:
            raise LaunchError(
                f"inject: {where} names secret '{ph.name}', which the SPM did not release to "
                f"service '{enrollment.service}'"
            )
        try:
            value = enrollment.render(ph.name, ph.selector)
        except SecflError as exc:
            raise LaunchError(f"inject: {where}: {exc}") from None
        text = text.replace(ph.text, value)
    return text


def private_dir() -> Path:
    """A fresh folder only this user can enter, in RAM where the machine has /dev/shm."""
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a 0700 folder inside it
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="secfl-run-", dir=base))


def write_private(root: Path, relative: str, data: bytes) -> Path:
    """Write ``data`` at ``root/relative`` with mode 0600 (folders 0700), never outside."""
    rel = PurePosixPath(relative.lstrip("/"))
    if not rel.parts or ".." in rel.parts:
        raise LaunchError(f"inject: '{relative}' is not a clean file path")
    target = root.joinpath(*rel.parts)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return target
