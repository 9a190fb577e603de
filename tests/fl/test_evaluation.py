"""The robustness evaluation on a tiny grid: every output written, the figures
computed from the runs, defences whose preconditions fail reported as such."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from secfl.fl.evaluation import Evaluation, Grid, write_results


def test_a_tiny_grid_writes_an_honest_report(tmp_path: Path) -> None:
    grid = Grid(tasks=["digits"], clients=10, partitions=[None], malicious=[0.0, 0.2],
                attacks=["sign-flip", "backdoor"], defences=["fedavg", "bulyan", "clone-audit"],
                seeds=[0], rounds=3, epochs=3)  # fmt: skip
    ev = Evaluation(grid)
    seen: list[str] = []
    ev.run(lambda i, n, label: seen.append(label))
    assert len(seen) == len(ev.runs) == 3 * (1 + 2)
    paths = write_results(ev, tmp_path, "secfl eval robustness --test")
    with open(paths["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9
    clean = next(r for r in rows if r["defence"] == "fedavg" and r["attack"] == "none")
    assert float(clean["gap_to_clean_fedavg"]) == 0.0
    # Bulyan needs n >= 4f + 3: with 10 sites and f = 2 it cannot run, and says so
    bulyan = [r for r in rows if r["defence"] == "bulyan" and r["attack"] != "none"]
    assert all("bulyan" in r["error"] and not r["accuracy"] for r in bulyan)
    audit = next(r for r in rows if r["defence"] == "clone-audit" and r["attack"] == "sign-flip")
    assert float(audit["tpr"]) == 1.0
    backdoor = next(r for r in rows if r["defence"] == "fedavg" and r["attack"] == "backdoor")
    assert 0.0 <= float(backdoor["backdoor_success"]) <= 1.0
    report = paths["report"].read_text()
    assert "## digits, iid, 20% malicious" in report and "Not applicable here: bulyan" in report
    doc = json.loads(paths["json"].read_text())
    assert doc["command"] == "secfl eval robustness --test" and len(doc["runs"]) == 9
    assert all(len(r["rounds"]) == 3 for r in doc["runs"] if not r["error"])
    assert Path(paths["png:digits:iid"]).read_bytes().startswith(b"\x89PNG")
