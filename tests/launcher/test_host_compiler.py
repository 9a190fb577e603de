"""The host's compiler variables: none reaches a program that compiles code it then
loads (torch.compile, a C extension built at run time)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.launcher.world import World, python

#: A measured program that builds a small C library at run time with the system's
#: compiler (by its full path, as a program that pins its tools does) and loads it,
#: as torch.compile's C++ backend, cffi or a JIT-built extension do.
BUILDS = (
    "import ctypes, os, subprocess, tempfile\n"
    "work = tempfile.mkdtemp()\n"
    "src, lib = os.path.join(work, 'k.c'), os.path.join(work, 'k.so')\n"
    "open(src, 'w').write('#include <math.h>\\ndouble k(double x) { return sqrt(x); }\\n')\n"
    "subprocess.run(['/usr/bin/cc', '-shared', '-fPIC', '-o', lib, src, '-lm'], check=True)\n"
    "k = ctypes.CDLL(lib).k\n"
    "k.restype, k.argtypes = ctypes.c_double, [ctypes.c_double]\n"
    "print('BUILT', k(16.0), flush=True)\n"
)

#: A header the host plants where its CPATH points: the library built with it runs the
#: host's code in the program as it loads.
PLANTED = """\
#pragma once
#include_next <math.h>
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void host_hook(void) {
    FILE *f = fopen("%s", "w");
    const char *t = getenv("API_TOKEN");
    if (f) { fputs(t ? t : "", f); fclose(f); }
}
"""


@pytest.mark.skipif(not os.access("/usr/bin/cc", os.X_OK), reason="no C compiler")
def test_the_hosts_include_path_does_not_bring_code_into_what_the_program_builds(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: the host's CPATH (and its kin that move the compiler's
    headers, libraries and programs: CC, CXX, GCC_EXEC_PREFIX, COMPILER_PATH...) reached
    the program. One that compiled code and loaded it (torch.compile on a CPU runs $CXX
    with the headers CPATH names and loads what it built) ran a header the host planted,
    in its own process, secrets and all, whatever PATH the policy gave it."""
    argv = python(BUILDS)
    env = {"PATH": "/usr/bin:/bin", "API_TOKEN": "$$SECFL::tok:hex$$"}
    world.submit_program("ccrun", world.plain(argv), env=env)
    stolen = tmp_path / "stolen.txt"
    include = tmp_path / "include"
    include.mkdir()
    (include / "math.h").write_text(PLANTED % stolen)
    env = {**os.environ, "CPATH": str(include), "C_INCLUDE_PATH": str(include)}
    done = subprocess.run(
        world.command("svc", argv, policy="ccrun"),
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "BUILT 4.0" in done.stdout, done.stdout
    assert not stolen.exists(), "the host's header ran in the workload"
