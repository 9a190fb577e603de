"""Traces of a program's tensors and compiled code: never switched on by the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.launcher.world import World, python

#: A measured program that compiles its model with torch.compile: what torch makes of
#: its environment (whether it writes a debug trace, with the real tensors, and where).
TRACED = (
    "import torch._dynamo.config as dynamo, torch._inductor.config as inductor\n"
    "print('TRACE', inductor.trace.enabled, inductor.trace.save_real_tensors, flush=True)\n"
    "print('DIR', dynamo.debug_dir_root, flush=True)\n"
)


def test_the_host_cannot_make_torch_compile_write_the_models_tensors_to_its_disk(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: ``TORCH_COMPILE_DEBUG=1`` with
    ``TORCH_COMPILE_DEBUG_SAVE_REAL=1`` reached the program, and a model it compiled had
    its debug trace written with the real tensors (the weights, the batch: 1234.5678 of
    a weight came out eight times in a storage file), its graphs and generated code,
    below ``TORCH_COMPILE_DEBUG_DIR`` or else the working folder: the host's disk. The
    variables that switch torch's traces on are dropped like GRPC_TRACE."""
    argv = python(TRACED)
    world.submit_program("tracerun", world.plain(argv))
    host = tmp_path / "host-disk"
    env = {
        **os.environ,
        "TORCH_COMPILE_DEBUG": "1",
        "TORCH_COMPILE_DEBUG_SAVE_REAL": "1",
        "TORCH_COMPILE_DEBUG_DIR": str(host),
    }
    done = subprocess.run(
        world.command("svc", argv, policy="tracerun"),
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "TRACE False False" in done.stdout, done.stdout
    assert str(host) not in done.stdout, done.stdout
