"""Metrics report: JSON lines read back (last entry of a round wins), CSV, JSON, PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from secfl.demo.report import read_metrics, write_report
from secfl.errors import FlError

ROUNDS: list[dict[str, Any]] = [
    {"round": 1, "participants": ["a", "b"], "updates": 2, "duration_s": 1.5, "counter": 1,
     "train_loss": 0.9, "val_loss": 1.0, "val_accuracy": 0.5},
    {"round": 2, "participants": ["a", "b", "c"], "updates": 3, "duration_s": 1.25, "counter": 2,
     "train_loss": 0.6, "val_loss": 0.7, "val_accuracy": 0.7, "zeta": "x"},
    {"round": 3, "participants": ["a", "c"], "updates": 2, "duration_s": 1.0, "counter": 3,
     "train_loss": 0.4, "val_loss": 0.5, "val_accuracy": 0.8, "test_accuracy": 0.75,
     "alpha": 1},
]  # fmt: skip


def write_lines(path: Path, entries: list[dict[str, Any]], *, blank: bool = False) -> Path:
    lines = [json.dumps(entry) for entry in entries]
    path.write_text(("\n\n" if blank else "\n").join(lines) + "\n", encoding="utf-8")
    return path


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG")
    assert len(data) > 1024


def test_a_metrics_file_round_trips_to_csv_json_and_png(tmp_path: Path) -> None:
    rounds = read_metrics(write_lines(tmp_path / "metrics.jsonl", ROUNDS, blank=True))
    assert rounds == ROUNDS

    paths = write_report(tmp_path / "out" / "run", rounds, title="MNIST", extra={"policy": "p"})
    assert paths == {
        "csv": tmp_path / "out/run/metrics.csv",
        "json": tmp_path / "out/run/metrics.json",
        "png": tmp_path / "out/run/accuracy.png",
    }

    with paths["csv"].open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [
        "round", "participants", "updates", "duration_s", "counter", "train_loss", "val_loss",
        "val_accuracy", "test_accuracy", "alpha", "zeta",
    ]  # fmt: skip
    assert [row["round"] for row in rows] == ["1", "2", "3"]
    assert rows[1]["participants"] == "a;b;c"
    assert float(rows[1]["duration_s"]) == 1.25
    assert float(rows[2]["test_accuracy"]) == 0.75
    assert rows[0]["test_accuracy"] == "" and rows[0]["zeta"] == ""
    assert rows[1]["zeta"] == "x" and rows[2]["alpha"] == "1"

    document = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert document == {"title": "MNIST", "rounds": ROUNDS, "policy": "p"}
    check_png(paths["png"])


def test_a_redone_round_keeps_its_later_entry(tmp_path: Path) -> None:
    redone = {**ROUNDS[1], "counter": 7, "val_accuracy": 0.72}
    path = write_lines(tmp_path / "m.jsonl", [ROUNDS[0], ROUNDS[1], ROUNDS[2], redone])
    rounds = read_metrics(path)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[1] == redone


def test_a_malformed_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(ROUNDS[0]) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(FlError, match=r"^metrics: line 3 is not JSON$"):
        read_metrics(path)
    path.write_text(json.dumps(ROUNDS[0]) + '\n["round", 2]\n', encoding="utf-8")
    with pytest.raises(FlError, match=r"^metrics: line 2 is not a round"):
        read_metrics(path)
    with pytest.raises(FlError, match="^metrics: cannot read"):
        read_metrics(tmp_path / "missing.jsonl")


def test_no_rounds_still_makes_every_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n", encoding="utf-8")
    assert read_metrics(empty) == []
    paths = write_report(tmp_path, [], title="nothing yet")
    assert paths["csv"].read_text(encoding="utf-8").splitlines() == ["round"]
    assert json.loads(paths["json"].read_text()) == {"title": "nothing yet", "rounds": []}
    check_png(paths["png"])


def test_rounds_without_accuracy_still_plot(tmp_path: Path) -> None:
    rounds = [{k: v for k, v in r.items() if "accuracy" not in k} for r in ROUNDS]
    check_png(write_report(tmp_path, rounds, title="losses only")["png"])


def test_extra_may_not_replace_the_title_or_rounds(tmp_path: Path) -> None:
    with pytest.raises(FlError, match="^report: extra may not set title$"):
        write_report(tmp_path, ROUNDS, title="t", extra={"title": "other"})
