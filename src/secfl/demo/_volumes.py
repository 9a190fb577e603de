"""The demo's shielded volumes: the task code, a site's modified copy of it, and each
party's share of the data, every one under its owner's own key.

:func:`shield_volumes` splits the task's data into one shard per site plus the
aggregator's validation and test sets, flips the labels of the poisoned sites'
shards, writes the task code (the built-in task's module, or the given folder) and
the copy a dishonest site modified, and shields each into ``volumes/NAME.secfl``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from secfl.shield import encrypt_directory

if TYPE_CHECKING:
    from secfl.demo.federation import DemoSettings

__all__ = ["TAMPERING", "TASK_MODULE", "shard_in", "shield_volumes"]

TASK_MODULE = '''"""The federation's task, as the board approved it: {task}."""

from secfl.tasks._registry import get_task

_task = get_task("{task}")
name = _task.name
build_model = _task.build_model
load_data = _task.load_data
train = _task.train
evaluate = _task.evaluate
'''

#: What a dishonest site adds to its copy: every update scaled up (model poisoning).
TAMPERING = """

def train(model, data, config, _train=_task.train):
    metrics = _train(model, data, config)
    for p in model.parameters():
        p.data.mul_(10.0)
    return metrics
"""


def shield_volumes(
    s: DemoSettings, sites: Sequence[str], poisoned: Sequence[str], work: Path
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Write and shield every volume below ``work`` (plaintext in ``work/plain``);
    returns each volume's key and tag by name (``task-modified`` has neither: only the
    dishonest site holds its key)."""
    from secfl.tasks._split import split

    keys: dict[str, bytes] = {}
    tags: dict[str, str] = {}

    def shield(name: str, folder: Path, out: Path) -> None:
        keys[name] = os.urandom(32)
        tags[name] = encrypt_directory(folder, out, keys[name])

    report = split(s.task, len(sites), seed=s.seed, out=work / "plain" / "shards",
                   samples=s.samples, overwrite=True)  # fmt: skip
    parts = {site: report.path(sh) for site, sh in zip(sites, report.client_shards, strict=True)}
    parts["validation"] = report.path("validation.safetensors")
    parts["test"] = report.path("test.safetensors")
    volumes = work / "volumes"
    volumes.mkdir(exist_ok=True)
    for name, shard in parts.items():
        folder = work / "plain" / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(shard, folder / shard.name)
        if name in poisoned:
            _flip_labels(folder / shard.name)
        shield(name, folder, volumes / f"{name}.secfl")
    code = work / "plain" / "task"
    bad = work / "plain" / "task-modified"
    if s.code is None:
        code.mkdir(parents=True, exist_ok=True)
        (code / "task.py").write_text(TASK_MODULE.format(task=s.task))
        bad.mkdir(parents=True, exist_ok=True)
        (bad / "task.py").write_text(TASK_MODULE.format(task=s.task) + TAMPERING)
    else:  # the site's modified copy: one line more in task.py changes the volume's tag
        shutil.copytree(s.code, code, dirs_exist_ok=True)
        shutil.copytree(s.code, bad, dirs_exist_ok=True)
        with open(bad / "task.py", "a", encoding="utf-8") as fh:
            fh.write("\nMODIFIED_BY_THE_SITE = True\n")
    shield("task", code, volumes / "task.secfl")
    encrypt_directory(bad, volumes / "task-modified.secfl", os.urandom(32))
    return keys, tags


def shard_in(folder: Path) -> Path:
    """The shard (the one safetensors file) in a party's plaintext folder."""
    return next(folder.glob("*.safetensors"))


def _flip_labels(path: Path) -> None:
    """A dishonest site's shard: every label y becomes classes - 1 - y; a regression's
    targets are mirrored about their mean instead (y becomes 2m - y)."""
    from secfl.tasks._shards import read_shard, target_kind, write_shard

    x, y, meta = read_shard(path)
    if target_kind(meta) == "value":
        mean = float(meta["target_scaling"]["offset"][0])
        write_shard(path, x, (2 * mean - y).astype(y.dtype), meta)
        return
    classes = int(meta["num_classes"])
    meta = {**meta, "label_counts": list(reversed(meta["label_counts"]))}
    write_shard(path, x, classes - 1 - y, meta)
