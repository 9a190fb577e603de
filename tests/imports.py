"""Which modules a piece of code loads, run in a fresh interpreter (the suite's own
has loaded everything): for the tests that keep a command or a server start from
loading what it never uses, since the suite and a walkthrough start hundreds of them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path


def modules_loaded(
    code: str, modules: Iterable[str], *, cwd: Path | None = None
) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """Run ``code`` in a fresh interpreter; which of ``modules`` it loaded, and the
    finished process (its output before the probe's last line is the code's own)."""
    names = list(modules)
    report = f"print('loaded:' + ','.join(m for m in {names!r} if m in sys.modules))"
    probe = f"{code}\nimport sys\n{report}\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ), cwd=cwd, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith("loaded:"), done.stdout
    return [m for m in last.removeprefix("loaded:").split(",") if m], done
