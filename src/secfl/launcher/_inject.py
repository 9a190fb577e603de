"""Secrets into an unmodified program: placeholders in arguments, environment and files.

``$$SECFL::name[:selector]$$`` is replaced by the released secret's text, in one
pass over the text as written: a secret's value is inserted as it is and never
scanned again, so a value that itself contains ``$$SECFL::other$$`` stays literal
(it cannot pull in another secret). A placeholder naming a secret the service was
not given is an error, so a workload never starts with a literal placeholder where
a secret should be. Arguments, the program's own as well as the policy's, may name
public parts only (``:pub``, ``:crt``, ``:chain``): every local user can read a
command line (``ps``), so secrets go into the environment or files; this is checked
before attesting, so a refusal releases nothing.

Files go into the launcher's private folder (see :mod:`secfl.launcher._private`),
files 0600 and folders 0700, named by ``SECFL_FILES``. Their paths are checked
before anything is written: clean paths (taken relative to ``SECFL_FILES``, a
leading ``/`` too), none inside the launcher's own ``.secfl/`` (identity) and
``volumes/`` folders, no two the same, none a folder of another. Arguments and
environment variables cannot carry a NUL byte, so a value that would contain one
is refused (inject such a secret with ``:hex`` or ``:base64``, or as a file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from secfl._internal import files
from secfl.errors import LaunchError, SecflError
from secfl.policy import _placeholders as placeholders
from secfl.policy._model import RESERVED_FOLDERS
from secfl.spm.enroll import Enrollment

__all__ = [
    "PUBLIC_SELECTORS",
    "RESERVED",
    "check_env_name",
    "check_public_args",
    "clean_path",
    "file_plan",
    "no_nul",
    "substitute",
    "write_private",
]

#: Top-level names in ``SECFL_FILES`` that the launcher writes itself (policy
#: validation refuses injected files there too; checked again here).
RESERVED = tuple(sorted(RESERVED_FOLDERS))
#: The selectors that render public parts only: a program's arguments (its own and
#: the policy's ``inject.args``, visible to every local user in ``ps``) may use
#: them, nothing else.
PUBLIC_SELECTORS = frozenset({"pub", "crt", "chain"})


def substitute(text: str, enrollment: Enrollment, where: str, *, public: bool = False) -> str:
    """``text`` with every placeholder replaced by the secret it names, in one pass.

    ``public``: only placeholders with a public selector (for the policy's args)."""
    try:
        found = list(placeholders.find(text))
    except ValueError as exc:
        raise LaunchError(f"inject: {where}: {exc}") from None
    values: dict[str, str] = {}
    for ph in found:
        if public and ph.selector not in PUBLIC_SELECTORS:
            raise LaunchError(_not_public(where, ph.name))
        if ph.name not in enrollment.secrets:
            raise LaunchError(
                f"inject: {where} names secret '{ph.name}', which the SPM did not release to "
                f"service '{enrollment.service}'"
            )
        try:
            values[ph.text] = enrollment.render(ph.name, ph.selector)
        except SecflError as exc:
            raise LaunchError(f"inject: {where}: {exc}") from None

    def value(match: re.Match[str]) -> str:
        if match.group(0) not in values:  # pragma: no cover - find() saw every placeholder
            raise LaunchError(f"inject: {where}: unexpected placeholder '{match.group(0)}'")
        return values[match.group(0)]

    return placeholders.PATTERN.sub(value, text)


def check_public_args(args: Sequence[str], what: str) -> None:
    """Arguments name public parts only: every local user reads a command line (``ps``).

    Checked before attesting, so a refusal releases nothing. ``what`` names the
    arguments in a refusal: ``argument`` (the program's own command line, as given
    to ``secfl run``) or ``policy argument`` (the policy's ``inject.args``)."""
    for i, text in enumerate(args):
        where = f"{what} {i + 1}"
        try:
            found = list(placeholders.find(text))
        except ValueError as exc:
            raise LaunchError(f"inject: {where}: {exc}") from None
        for ph in found:
            if ph.selector not in PUBLIC_SELECTORS:
                raise LaunchError(_not_public(where, ph.name))


def _not_public(where: str, name: str) -> str:
    return (
        f"inject: {where} puts secret '{name}' in the program's arguments, which every "
        "local user can read (ps): only :pub, :crt and :chain may go there; use "
        "inject.env or inject.files in the policy"
    )


def no_nul(text: str, where: str) -> str:
    """``text``, which goes into an argument or the environment: it cannot hold NUL."""
    if "\0" in text:
        raise LaunchError(
            f"inject: {where} would contain a NUL byte, which no argument or environment "
            "variable can carry: inject that secret with :hex or :base64, or as a file"
        )
    return text


def check_env_name(name: str) -> None:
    """An environment variable's name: not empty, no ``=`` and no NUL."""
    if not name or "=" in name or "\0" in name:
        raise LaunchError(
            f"inject: environment variable name {_show(name)} is not valid "
            "(it must be non-empty, without '=' or NUL)"
        )


def clean_path(given: str) -> PurePosixPath:
    """The relative path an injected file ``given`` goes to inside ``SECFL_FILES``."""
    rel = PurePosixPath(given.lstrip("/"))
    if "\0" in given or not rel.parts or ".." in rel.parts:
        raise LaunchError(f"inject: file {_show(given)} is not a clean file path")
    return rel


def file_plan(files: Mapping[str, str]) -> dict[str, PurePosixPath]:
    """Where each injected file goes (by its path as the policy writes it), checked.

    Refused in one line, before anything is written: a path inside the launcher's
    own folders, two paths that are the same file, a file that another needs as
    a folder."""
    plan: dict[str, PurePosixPath] = {}
    for given in files:
        rel = clean_path(given)
        if rel.parts[0] in RESERVED:
            raise LaunchError(
                f"inject: file {_show(given)} collides with the launcher's own "
                f"'{rel.parts[0]}' folder in SECFL_FILES: choose another path in the policy"
            )
        for other_given, other in plan.items():
            if other == rel:
                raise LaunchError(
                    f"inject: files {_show(other_given)} and {_show(given)} are the same file: "
                    "give each injected file its own path"
                )
            if other in rel.parents or rel in other.parents:
                outer, inner = (other_given, given)
                if rel in other.parents:
                    outer, inner = inner, outer
                raise LaunchError(
                    f"inject: file {_show(inner)} needs {_show(outer)} to be a folder, but it is "
                    "an injected file too: give each injected file its own path"
                )
        plan[given] = rel
    return plan


def write_private(root: Path, rel: PurePosixPath | str, data: bytes) -> Path:
    """Write ``data`` at ``root/rel`` with mode 0600 (folders 0700), never outside.

    The file is written with :func:`secfl._internal.files.write_private` and never
    replaces anything: ``root`` is the launcher's fresh private folder, so a file
    already at ``rel`` (or a symbolic link) is refused, not overwritten. No fsync:
    nothing in the folder outlives the launcher."""
    rel = clean_path(str(rel))
    target = root.joinpath(*rel.parts)
    try:
        for depth in range(1, len(rel.parts)):
            folder = root.joinpath(*rel.parts[:depth])
            if not folder.is_dir() or folder.is_symlink():
                folder.mkdir(mode=0o700)
        files.write_private(target, data, fsync=False, replace=False)
    except OSError as exc:
        raise LaunchError(f"inject: cannot write file '{rel}': {exc.strerror or exc}") from None
    return target


def _show(text: str) -> str:
    """A path or name from the policy, quoted and bounded for a one-line message."""
    shown = repr(text[:80])
    return shown if len(text) <= 80 else shown + "..."
