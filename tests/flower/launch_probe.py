"""Runs in the Flower venv: ``python launch_probe.py WORKDIR``. Makes a SuperNode
executor whose tasks run in WORKDIR and has it launch one task, with the process start
captured: prints the command it would run (JSON) and the ``sys.path`` a Python started
with that command's interpreter options sees from WORKDIR."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from flwr.supercore.constant import TaskType

from secfl.flower import _exec

work = Path(sys.argv[1])
started: list[dict[str, Any]] = []


class Captured:
    def __init__(self, argv: list[str], **kwargs: Any) -> None:
        started.append({"argv": argv, "cwd": str(kwargs.get("cwd"))})
        self.pid = len(started)  # the executor keeps each task by its process

    def poll(self) -> int:
        return 0


real_popen = subprocess.Popen
_exec.subprocess.Popen = Captured  # type: ignore[assignment,misc]
tokens = work / "tokens"
tokens.mkdir(mode=0o700)
executor = _exec.Executor(
    address="127.0.0.1:9", secret=b"k" * 32, allowed=frozenset(), env={},
    task_type=TaskType.CLIENT_APP, cwd=work, token_dir=tokens,
)  # fmt: skip
executor._launch("token")
subprocess.Popen = real_popen  # type: ignore[misc]
argv = started[0]["argv"]
options = argv[1 : argv.index("-m")]  # the interpreter's options, before its module
seen = subprocess.run(
    [argv[0], *options, "-c", "import json, sys; print(json.dumps(sys.path))"],
    cwd=work, capture_output=True, text=True, check=True,
)  # fmt: skip
print(json.dumps({"argv": argv, "cwd": started[0]["cwd"], "path": json.loads(seen.stdout)}))
