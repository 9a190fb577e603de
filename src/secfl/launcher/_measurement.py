"""What the simulated TEE measures for ``secfl run``: program, code volumes, command.

Hardware TEEs measure themselves (the enclave, the TD, the VM image). The
simulated TEE has nothing to measure, so ``secfl run`` reports this digest
instead, which a policy author computes ahead with ``secfl measure --for-run``:

    SHA-384 of the canonical JSON (sorted keys, no spaces) of
    {"format": "secfl-run/1",
     "program": <the secfl-measure/1 manifest of the program file, or null for --module>,
     "argv": [the command line as given, placeholders unexpanded],
     "code_volumes": {name: tag, ...},
     "found": where PATH found a program named by a bare name, or the absolute path
              of one named by a relative path (only then),
     "interpreter": where PATH found the interpreter of a script whose first line
                    looks it up there, ``#!/usr/bin/env NAME`` (only then)}

Any change to the program's bytes or mode, to a code volume's content (its tag)
or to the command line changes it; for a program named by a bare name (``python``,
``secfl``), so does the place PATH found it, and for one named by a relative path
(``venv/bin/python``), the folder it was named from (not for a ``#!`` script, such as
``./train.py``: the interpreter its first line names is what starts). The file
measured is the one the name leads to (a link resolved), but a program may find its
surroundings by the name it was started under: a venv's ``python`` is the base
interpreter, which looks its name up on PATH again (or takes it from the working
folder) and takes that venv's packages. A host that put a venv of its own first on
PATH (found by a review), or started the launcher in a folder holding one where the
relative path leads (found by a hostile review), had its packages' code run in the
workload under the genuine measurement. The launcher starts the program under the
absolute name it found and measured (:func:`locate_program`), so the program does not
look it up again. A script whose ``#!`` line has ``env`` look its interpreter up on
PATH had it looked up on the program's PATH, the host's, with the same effect (found by
a hostile review): where the launcher's PATH finds it is measured, and the interpreter
is started by that path with the script (:func:`script_interpreter`). A script is
read by its path again once measured (by the kernel, by its interpreter): the launcher
measures and starts a private copy of it (:func:`private_script`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shlex
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from secfl._internal.canonical import canonical_json
from secfl.errors import MeasurementError
from secfl.tee._measure import manifest

__all__ = [
    "FORMAT",
    "commands_from",
    "describe_measured",
    "locate_program",
    "private_script",
    "resolve_program",
    "run_measurement",
    "script_interpreter",
]

#: What a ``#!`` line names to have its interpreter looked up on PATH.
ENV_PROGRAMS = ("/usr/bin/env", "/bin/env")

FORMAT = "secfl-run/1"


def resolve_program(program: str) -> Path:
    """The file ``program`` names: a path, or a command found on PATH."""
    return locate_program(program)[0]


def locate_program(program: str) -> tuple[Path, str | None]:
    """The file ``program`` names (a path, or a command found on PATH), resolved; and,
    for a bare name, the absolute path PATH found it at, not resolved, for a relative
    path the absolute path it names from the working folder, not resolved (None for an
    absolute path, and for a relative one to a ``#!`` script): the name it is started
    under, which the measurement covers."""
    found: str | None = None
    if "/" in program:
        path = Path(program)
        if not program.startswith("/"):  # the working folder is the host's to choose
            found = os.path.abspath(program)
    else:
        on_path = shutil.which(program)
        if on_path is None:
            raise MeasurementError(f"measure: program '{program}' is not on PATH")
        found = os.path.abspath(on_path)
        path = Path(found)
    try:  # (`Path.is_file` raised on a name too long: a traceback)
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise MeasurementError(
                f"measure: program '{program[:200]}': {exc.strerror or exc}"
            ) from None
        regular = False
    if not regular:
        raise MeasurementError(f"measure: program '{program[:200]}' is not a file")
    if found is not None and "/" in program and _is_script(path):
        found = None  # (the interpreter its first line names is started, not this name)
    return Path(os.path.realpath(path)), found


#: The largest ``#!`` script :func:`private_script` copies (its bytes go to RAM).
MAX_SCRIPT = 64 * 1024 * 1024


def private_script(program: Path, folder: Path) -> Path:
    """``program`` itself if it is not a ``#!`` script; else a copy of it in ``folder``
    (the launcher's private one), of the same name and mode: what is measured and
    started. A script is read by its path again after it is measured, by the kernel
    (its ``#!`` line) and by its interpreter (all of it): one in a folder the host may
    write in (README's ``./train.py`` in the working folder) was the host's to replace
    in between, its own script run under the genuine one's measurement with its
    secrets (found by a hostile review)."""
    try:
        fd = os.open(program, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise MeasurementError(
            f"measure: program '{program.name[:100]}': {exc.strerror or exc}"
        ) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or f.read(2) != b"#!":
            return program
        content = b"#!" + f.read(MAX_SCRIPT)
        if len(content) > MAX_SCRIPT or f.read(1):
            raise MeasurementError(
                f"measure: the script '{program.name[:100]}' is over {MAX_SCRIPT >> 20} MiB"
            )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    copy = folder / program.name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(copy, flags, 0o700), "wb") as out:
        out.write(content)
        os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
    return copy


def _is_script(path: Path) -> bool:
    """Whether ``path`` starts with ``#!``: the kernel starts the interpreter that line
    names (its bytes measured), which never sees the name the script was started under,
    so a script named by a relative path (``./train.py``) measures alike in any folder.
    Unreadable: not a script (its place is measured)."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _found(program: Path | None, argv: Sequence[str], found: str | None) -> str | None:
    """Where a bare or relative ``argv[0]`` was found: ``found`` as the launcher found
    it, else looked up here on PATH or from the working folder (an author measuring
    ahead, on the same PATH, in the same folder)."""
    if program is None or not argv or argv[0].startswith("/"):
        return None
    return found if found is not None else locate_program(argv[0])[1]


def script_interpreter(program: Path) -> str | None:
    """For a script whose ``#!`` line looks its interpreter up on PATH
    (``#!/usr/bin/env python3``): the absolute path PATH finds it at, not resolved (its
    venv is found by that name); None for any other file. A ``#!`` line that leaves the
    interpreter to the program's surroundings in another form (``env``'s options or
    settings, an interpreter named by a relative path, which the working folder
    resolves) is a :class:`MeasurementError`: the host would choose what runs."""
    words = _shebang(program)
    if not words:
        return None
    name = program.name[:100]
    if not words[0].startswith("/"):
        raise MeasurementError(
            f"measure: {name}'s #! line names its interpreter by a relative path, which "
            "the working folder resolves: name it by its absolute path"
        )
    if not _is_env(words[0]):
        return None
    if len(words) != 2 or words[1].startswith("-") or "/" in words[1] or "=" in words[1]:
        raise MeasurementError(
            f"measure: {name}'s #! line runs env with options or settings: name the "
            "interpreter by its path, or as `#!/usr/bin/env NAME` alone"
        )
    on_path = shutil.which(words[1])
    if on_path is None:
        raise MeasurementError(
            f"measure: the interpreter '{words[1][:100]}' of {name}'s #! line is not on PATH"
        )
    return os.path.abspath(on_path)


def _shebang(program: Path) -> list[str] | None:
    """The words of ``program``'s ``#!`` line; None if it has none (or is unreadable)."""
    try:
        with open(program, "rb") as f:
            head = f.read(256)  # (the kernel reads no more of a #! line)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    return head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()


def commands_from(program: Path | None, started: str) -> str | None:
    """The absolute name whose folder the program, the file ``program`` started under
    the name ``started``, finds its commands in first
    (:func:`secfl._internal.environ.program_path`): ``started`` (a venv's python, a
    ``#!/usr/bin/env`` interpreter the launcher found), but for a script, which the
    kernel hands to its ``#!`` line's interpreter, that interpreter: never the script's
    own folder, a job folder the host may write in (the script's bytes are measured,
    not what lies beside them: found by a hostile review). None: no folder."""
    words = _shebang(program) if program is not None else None
    if words is not None:
        return words[0] if words and words[0].startswith("/") else None
    return started if started.startswith("/") else None


def _is_env(path: str) -> bool:
    """Whether an absolute ``#!`` interpreter path is env however it is spelt
    (``/usr//bin/env``, ``/usr/bin/../bin/env``, a link to env): a review found such a
    line started as written, env looking the interpreter up on the program's PATH."""
    if "/" + os.path.normpath(path).lstrip("/") in ENV_PROGRAMS:
        return True
    try:
        real = os.path.realpath(path)
        envs = {os.path.realpath(p) for p in ENV_PROGRAMS}
    except (OSError, ValueError):  # (a NUL in the line)
        return False
    return os.path.basename(real) == "env" and real in envs  # (not busybox's sh)


def _interpreter(program: Path | None, interpreter: str | None) -> str | None:
    """``interpreter`` as the launcher found it, else looked up here (an author
    measuring ahead, on the same PATH)."""
    if program is None:
        return None
    return interpreter if interpreter is not None else script_interpreter(program)


def run_measurement(
    program: Path | None,
    argv: Sequence[str],
    code_volumes: Mapping[str, str],
    *,
    found: str | None = None,
    interpreter: str | None = None,
) -> str:
    """The measurement (hex SHA-384) of running ``argv`` with ``program`` and code
    volumes; a bare or relative ``argv[0]`` with where it was found (``found``, else
    looked up), a script's interpreter with where PATH found it (``interpreter``, else
    looked up)."""
    doc: dict[str, object] = {
        "format": FORMAT,
        "program": None if program is None else manifest([program]),
        "argv": list(argv),
        "code_volumes": {name: tag.lower() for name, tag in sorted(code_volumes.items())},
    }
    located = _found(program, argv, found)
    if located is not None:
        doc["found"] = located
    interpreter = _interpreter(program, interpreter)
    if interpreter is not None:
        doc["interpreter"] = interpreter
    return hashlib.sha384(canonical_json(doc)).hexdigest()


def describe_measured(
    program: Path | None,
    argv: Sequence[str],
    code_volumes: Mapping[str, str],
    *,
    found: str | None = None,
    interpreter: str | None = None,
    shown: Path | None = None,
) -> list[str]:
    """What :func:`run_measurement` covers, as lines a person compares: the program
    file (its path, or ``shown``'s where it was copied from, digest and mode), the
    command line (shell-quoted), the code volumes' tags. ``secfl run`` prints them when
    the SPM refuses its measurement, and ``secfl policy init`` writes them next to the
    measurements it pins, in the same form."""
    lines = []
    if program is None:
        lines.append("program:      none (a --module run from the code volumes)")
    else:
        entry = manifest([program])["entries"][0]
        lines.append(
            f"program:      {shown or program} (sha256 {entry.get('sha256', '?')}, "
            f"mode {entry['mode']})"
        )
    lines.append(f"command:      {shlex.join(argv)}")
    located = _found(program, argv, found)
    if located is not None:
        where = "on PATH" if "/" not in argv[0] else "from the working folder"
        lines.append(f"found at:     {located} ({where}: install it there on every machine)")
    interpreter = _interpreter(program, interpreter)
    if interpreter is not None:
        lines.append(f"interpreter:  {interpreter} (its #! line's, found on PATH: install it "
                     "there on every machine)")  # fmt: skip
    volumes = ", ".join(f"{n}={t.lower()}" for n, t in sorted(code_volumes.items()))
    lines.append(f"code volumes: {volumes or 'none'}")
    return lines
