"""The README's commands for the federation: `secfl demo` and the three-machine
walkthrough (examples/walkthrough.sh), run for real as the user would."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.clirun import run_script

pytestmark = pytest.mark.heavy(45)  # seconds on one worker: scheduled first

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_demo_trains_refuses_the_tampered_site_and_writes_a_report(tmp_path: Path) -> None:
    """With a site whose data is poisoned added to the 3 honest ones (genuine code, so
    attestation admits it): the clone audit leaves it out of every round, and the SPM's
    audit log says so."""
    report = tmp_path / "report"
    result = run_script(
        [sys.executable, "-m", "secfl.cli.main", "demo", "--clients", "3", "--rounds", "3",
         "--defence", "clone-audit", "--poisoned", "1", "--report", str(report)],
        timeout=300, cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "audit verify: OK" in result.stdout
    assert "was refused by attestation" in result.stdout
    doc = json.loads((report / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    assert doc["tampered_site_refused"] is True
    assert (report / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    events = [json.loads(line)["event"] for line in (report / "audit.jsonl").open()]
    # the aggregator, 3 honest sites and the added poisoned one; the tampered copy refused
    assert events.count("attestation.accepted") == 5 and events.count("attestation.refused") == 1
    assert "sites with poisoned data (attested: their code is genuine): site-4" in result.stdout
    assert [r["excluded"] for r in doc["rounds"]] == [["site-4"]] * 3
    assert events.count("fl.audit.excluded") == 3
    assert (report / "model.safetensors").stat().st_size > 0
    assert not list(tmp_path.glob("secfl-demo-*"))  # the work folder is gone


def test_three_machine_walkthrough(tmp_path: Path) -> None:
    result = run_script(
        ["bash", str(REPO / "examples" / "walkthrough.sh"), str(tmp_path / "w")],
        timeout=300,
        env=_env(),
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "accepted: policy fed version 1" in out
    assert "round 5 done: 2 updates" in out
    assert "audit verify: OK" in out
    # each site enrolled with its own site key (its service names it)
    assert (tmp_path / "w" / "board" / "policy.yaml").read_text().count("site_key:") == 2
    # the policy `secfl policy init` wrote seals the final model to its owner's key
    assert (tmp_path / "w" / "agg" / "model" / "model.safetensors").stat().st_size > 0
