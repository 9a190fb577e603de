"""A Python workload run in the launcher's own interpreter (``secfl run --module``).

Its code is imported from memory, out of the code volumes (:class:`VolumeImporter`),
and it streams its data from :data:`volumes` (``from secfl.launcher import volumes``),
in bounded memory, every chunk authenticated: no plaintext copy is ever written.
Only code volumes (the policy's ``kind: code``, measured with the command) are
imported from: a data volume is not covered by the measurement, and whoever holds
its key (a data owner) could otherwise put a module of the same name in it.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence

from secfl._internal.failures import hide_uncaught_errors, show_task_errors
from secfl.errors import LaunchError
from secfl.shield import Volume, VolumeImporter

__all__ = ["run_module", "volumes"]

#: The open volumes of the workload running in this interpreter (``--module``), by
#: name: it streams its data from them (bounded memory, every chunk authenticated).
volumes: dict[str, Volume] = {}


def run_module(
    module: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    opened: Mapping[str, Volume],
    code: Sequence[str],
) -> int:
    """Run ``module`` (imported from the volumes of ``opened`` named in ``code``: the
    first of them that has a module serves it) as ``__main__`` in this interpreter,
    with ``argv`` and exactly ``env``; returns its exit code. The interpreter's own
    arguments and environment are restored afterwards."""
    importers = [VolumeImporter(opened[name]) for name in code]
    saved_argv, saved_env, saved_tmp = sys.argv, dict(os.environ), tempfile.tempdir
    sys.argv = [module, *argv]
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # found again, from env's TMPDIR (the launcher's was cached)
    volumes.update(opened)
    # what the module does not catch (in any thread, in a finaliser), its warnings and a
    # fatal signal's dump, as one line each: their text names the volume's files and may
    # quote its data, and the host reads this process's stderr (found by a review)
    show_task_errors(False)
    hide_uncaught_errors()
    try:
        with _installed(importers):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exc:
        status = exc.code
        return status if isinstance(status, int) else (0 if status is None else 1)
    except KeyboardInterrupt:  # the launcher's Ctrl-C
        raise
    except BaseException as exc:
        # its message and traceback name the volume's files and may quote its data:
        # the host reads what this process prints (found by a review)
        raise LaunchError(
            f"module: '{module}' raised {type(exc).__name__[:80]} (its message and "
            "traceback are not shown: the host reads them)"
        ) from None
    finally:
        volumes.clear()
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        tempfile.tempdir = saved_tmp


@contextlib.contextmanager
def _installed(importers: Sequence[VolumeImporter]) -> Iterator[None]:
    for imp in reversed(importers):  # each goes first in sys.meta_path: the first ends first
        imp.install()
    try:
        yield
    finally:
        for imp in importers:
            imp.uninstall()
