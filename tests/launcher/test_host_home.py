"""The host's home folder: none of its settings reach a measured program, nor does what
a library writes there by default."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.launcher.world import World, python

GIT = "/usr/bin/git"

#: A measured program that runs git in a folder of its own (as a task that records
#: its code's commit does) and says where its home folder is.
PROGRAM = (
    "import os, subprocess, sys\n"
    f"subprocess.run([{GIT!r}, '-C', sys.argv[1], 'status', '--short'], check=False)\n"
    "print('HOME', os.path.expanduser('~').startswith(os.environ['SECFL_FILES']), flush=True)\n"
)


@pytest.mark.skipif(not os.access(GIT, os.X_OK), reason=f"no {GIT}")
def test_the_hosts_home_and_config_folders_do_not_reach_the_program(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: the launcher dropped ``GIT_CONFIG*`` but kept the
    host's ``HOME`` (and ``XDG_CONFIG_HOME``), whose ``.gitconfig`` (``git/config``)
    names a command git runs on every status (``core.fsmonitor``): the host's command
    ran in the workload with its secrets when the measured program ran git. (And Ray
    Train kept its checkpoints, the model, in ``~/ray_results`` on the host's disk.)
    Now HOME and the XDG folders are an empty folder of the private one."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([GIT, "init", "-q", str(repo)], check=True, timeout=60)
    argv = python(PROGRAM, str(repo))
    world.submit_program("homerun", world.plain(argv), env={"API_TOKEN": "$$SECFL::tok:hex$$"})
    stolen = tmp_path / "stolen.txt"
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$API_TOKEN" > {stolen}\n')
    hook.chmod(0o755)
    for name, config in (("HOME", ".gitconfig"), ("XDG_CONFIG_HOME", "git/config")):
        folder = tmp_path / name
        (folder / config).parent.mkdir(parents=True, exist_ok=True)
        (folder / config).write_text(f"[core]\n\tfsmonitor = {hook}\n")
        env = {**os.environ, name: str(folder)}
        done = subprocess.run(
            world.command("svc", argv, policy="homerun"),
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert not stolen.exists(), f"the host's git hook ran in the workload ({name})"
        assert done.returncode == 0, done.stderr
        assert "HOME True" in done.stdout, done.stdout
