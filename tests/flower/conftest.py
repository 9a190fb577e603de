"""The Flower venv for these tests: ``.venv-flwr``, made (or checked) by
scripts/flwr-venv.sh. Where it is absent and ``CI`` is not set, the tests skip and say
why; under CI the script creates it (and a failure to do so fails them)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-flwr"
SCRIPT = ROOT / "scripts" / "flwr-venv.sh"


@pytest.fixture(scope="session")
def flower_python() -> Path:
    """``.venv-flwr/bin/python`` with flwr 1.41, torch, scikit-learn and secfl."""
    if not os.environ.get("CI") and not VENV.exists():
        pytest.skip(
            "Flower apps under secfl need the Flower venv: run `bash scripts/flwr-venv.sh` "
            "(or set CI=1) to enable these tests"
        )
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail("scripts/flwr-venv.sh took more than 900 s")
    if proc.returncode != 0:
        pytest.fail(f"scripts/flwr-venv.sh failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return VENV / "bin" / "python"
