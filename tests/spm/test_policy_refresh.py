"""``SECFL_SPM_POLICY_REFRESH``: it may shorten how long an SPM serves a policy's current
version and revocations before re-reading them, never lengthen it; anything else stops
the SPM at start, in one line. (That the SPM honours a shortened interval is what
tests/spm/test_hostile.py relies on: its SPMs run with ``POLICY_REFRESH``, and it waits
only ``REFRESH_WAIT`` for a change behind the SPM's back to be seen.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from secfl.errors import SpmError
from secfl.spm._policy_cache import CURRENT_TTL, REFRESH_ENV, PolicyCache, refresh_seconds


def test_unset_or_empty_is_the_production_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REFRESH_ENV, raising=False)
    assert refresh_seconds() == CURRENT_TTL == 1.0
    monkeypatch.setenv(REFRESH_ENV, " ")
    assert refresh_seconds() == 1.0


@pytest.mark.parametrize("text", ["0.1", "0.01", "1", " 0.5 "])
def test_a_shorter_interval_is_taken(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(REFRESH_ENV, text)
    assert refresh_seconds() == float(text)
    assert PolicyCache(store=None).ttl == float(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["1.5", "60", "0", "0.001", "-1", "nan", "inf", "1s", "x"])
def test_a_longer_or_meaningless_interval_is_refused(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv(REFRESH_ENV, text)
    refused = rf"^{REFRESH_ENV}: '{re.escape(text)}' is not a number of seconds"
    with pytest.raises(SpmError, match=refused):
        refresh_seconds()
    with pytest.raises(SpmError, match=f"^{REFRESH_ENV}"):
        PolicyCache(store=None)  # type: ignore[arg-type]


def test_the_spm_does_not_start_with_a_longer_interval(
    tmp_path: Path, sim: tuple[Path, bytes]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "spm", "serve", "--data", str(tmp_path / "d"),
         "--listen", "127.0.0.1:0", "--platform", "simulated", "--sim-dir", str(sim[0]),
         "--ready-file", str(tmp_path / "ready.json")],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, REFRESH_ENV: "30"},
    )  # fmt: skip
    assert done.returncode != 0
    assert f"{REFRESH_ENV}: '30' is not a number of seconds from 0.01 to 1.0" in done.stderr
    assert not (tmp_path / "ready.json").exists()
