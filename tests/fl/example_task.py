"""The example task of docs/tasks.md, written out as a user would: a multi-file task
folder (``task.py`` importing the package ``mymodels``) and CSV data folders.

The code is read from the documentation itself, so the tests that run it keep the
documented example working."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tasks.md"


def _block(after: str) -> str:
    """The first ```python block after the line containing ``after``."""
    text = DOCS.read_text()
    start = text.index(after)
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"docs/tasks.md has no python block after {after!r}"
    return match.group(1)


def write_task(folder: Path) -> Path:
    """``folder/task.py`` and ``folder/mymodels/{__init__,net}.py`` as documented."""
    (folder / "mymodels").mkdir(parents=True, exist_ok=True)
    (folder / "task.py").write_text(_block("`mytask/task.py`"))
    (folder / "mymodels" / "__init__.py").write_text("")
    (folder / "mymodels" / "net.py").write_text(_block("`mymodels/net.py`"))
    return folder


def write_csv_sites(root: Path, sites: int) -> dict[str, Path]:
    """scikit-learn's diabetes data as CSV (standardised features, then the standardised
    target in the last column):
    one folder per site (each with two CSV files: data may come in several files), a
    validation and a test folder."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    x = (bunch.data - bunch.data.mean(axis=0)) / bunch.data.std(axis=0)
    y = (bunch.target - bunch.target.mean()) / bunch.target.std()
    order = np.random.default_rng(0).permutation(len(y))
    parts = np.array_split(order, sites + 2)
    names = [*(f"site-{i + 1}" for i in range(sites)), "validation", "test"]
    header = ",".join([*bunch.feature_names, "progression"])
    folders = {}
    for name, index in zip(names, parts, strict=True):
        folder = root / name
        folder.mkdir(parents=True)
        rows = np.column_stack([x[index], y[index]])
        half = len(rows) // 2
        for number, chunk in enumerate((rows[:half], rows[half:])):
            np.savetxt(folder / f"part-{number}.csv", chunk, delimiter=",", header=header,
                       comments="", fmt="%.8f")  # fmt: skip
        folders[name] = folder
    return folders
