"""Where a measured program keeps what it writes and reads by default: its temporary
files, caches and home folder, all in ``secfl run``'s private folder (RAM), never the
host's (:func:`scratch`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

__all__ = ["SCRATCH_VARIABLES", "scratch"]


def scratch(files: Path) -> dict[str, str]:
    """Where the program's temporary files and caches go: into the private folder, in
    RAM (``TMPDIR`` and its kin, ``XDG_CACHE_HOME``), not the host's ``/tmp`` or home,
    on disk, where what a library writes there (a spooled upload, a compiled kernel, a
    dataset's cache) outlived a workload killed with SIGKILL. The policy's injected
    variables may set them elsewhere. ``HOME`` too, and the XDG folders under it, are
    an empty folder of the private one: the host's held settings that run commands
    (git's ``core.fsmonitor`` in ``~/.gitconfig``, ssh's ``ProxyCommand``), data a
    library unpickles from its default folder there, and took what libraries write there
    by default (Ray Train's and Tune's checkpoints, ``~/ray_results``): found by a
    hostile review. The policy's ``inject.env`` names another where the board wants."""
    secfl = files / ".secfl"
    tmp, cache, home = secfl / "tmp", secfl / "cache", secfl / "home"
    for folder in (tmp, cache, home):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {
        **dict.fromkeys(SCRATCH_VARIABLES, str(tmp)),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_CACHE_HOME": str(cache),
        # caches of compiled GPU code whose defaults are under HOME, not XDG_CACHE_HOME
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "CUDA_CACHE_PATH": str(cache / "nv"),
        # scikit-learn's datasets, which it unpickles (joblib) from ~/scikit_learn_data,
        # the host's HOME, or the host's $SCIKIT_LEARN_DATA (found by a hostile review)
        "SCIKIT_LEARN_DATA": str(cache / "scikit_learn_data"),
        # where ciphertext-only scratch (an aggregator's sealed spill) stays on disk
        "SECFL_HOST_TMPDIR": tempfile.gettempdir(),
    }


#: The variables that name a program's temporary folder (Python's ``tempfile`` reads
#: the first three, most C libraries ``TMPDIR``; Ray, its session and the objects it
#: spills, ``RAY_TMPDIR`` before ``TMPDIR``; joblib the folder it maps arrays from: the
#: host's reached the program, found by a hostile review).
SCRATCH_VARIABLES = ("TMPDIR", "TEMP", "TMP", "RAY_TMPDIR", "JOBLIB_TEMP_FOLDER")
