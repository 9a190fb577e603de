"""Which file `secfl run` starts: the one it measured, whatever PATH the program gets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from secfl.launcher._measurement import run_measurement
from tests.launcher.world import World

PROGRAM = "#!{python}\nimport os\nprint('WHO', {who!r}, os.environ.get('API_TOKEN'), flush=True)\n"


def test_the_program_started_is_the_file_measured_even_under_the_policys_path(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: the launcher measured the program its own PATH names
    (the host's) but started it by name again, under the program's environment, whose
    PATH the policy may set (``inject.env``). A host that planted a file of that name in
    a folder on the policy's PATH, and put the genuine program first on its own PATH,
    had its own program started with the genuine one's measurement, and its secrets."""
    genuine, planted = tmp_path / "genuine", tmp_path / "planted"
    for folder, who in ((genuine, "measured"), (planted, "host")):
        folder.mkdir()
        prog = folder / "fl-workload"
        prog.write_text(PROGRAM.format(python=sys.executable, who=who))
        prog.chmod(0o755)
    argv = ["fl-workload"]
    measurement = run_measurement((genuine / "fl-workload").resolve(), argv, {})
    # the board's PATH for its program: a site's tools folder, then the system's
    env = {"PATH": f"{planted}:/usr/bin:/bin", "API_TOKEN": "$$SECFL::tok:hex$$"}
    world.submit_program("pathrun", measurement, env=env)
    cmd = world.command("svc", argv, policy="pathrun")
    env = {**os.environ, "PATH": f"{genuine}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    who = [line.split() for line in done.stdout.splitlines() if line.startswith("WHO")]
    assert who and who[0][1] == "measured", done.stdout
