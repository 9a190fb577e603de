"""Any metrics, the policy's objective and the best round: the aggregator's side, and
a user's multi-file regression task on CSV data as real `--insecure` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from secfl.errors import FlError, TaskError
from secfl.fl._config import FederationConfig, Objective
from secfl.fl._scoring import STATE_KEY, Scoreboard, train_means
from secfl.fl._tensors import from_bytes
from secfl.fl.strategies import Update
from tests.fl.example_task import write_csv_sites, write_task

# --- the scoreboard, in-process -------------------------------------------------------------


def rounds(board: Scoreboard, values: list[float], key: str = "val_r2") -> list[dict[str, object]]:
    entries = []
    for number, value in enumerate(values, start=1):
        entry: dict[str, object] = {key: value}
        board.observe(number, entry)
        entries.append(entry)
    return entries


def test_the_best_round_follows_the_objective_direction() -> None:
    lower = Scoreboard(Objective(metric="r2", mode="min"))
    higher = Scoreboard(Objective(metric="r2", mode="max"))
    assert [e["best_round"] for e in rounds(lower, [0.5, 0.3, 0.3, 0.4])] == [1, 2, 2, 2]
    last = rounds(higher, [0.5, 0.7, 0.6, 0.7])[-1]
    assert last == {"val_r2": 0.7, "objective": 0.7, "objective_metric": "val_r2",
                    "best_round": 2, "best_objective": 0.7}  # fmt: skip


def test_the_objective_comes_from_validation_then_test_then_training() -> None:
    board = Scoreboard(Objective())
    entry = {"train_loss": 3.0, "test_loss": 2.0, "val_loss": 1.0}
    board.observe(1, entry)
    assert entry["objective_metric"] == "val_loss" and entry["objective"] == 1.0
    alone = {"train_loss": 3.0}
    Scoreboard(Objective()).observe(1, alone)
    assert alone["objective_metric"] == "train_loss"
    nothing: dict[str, object] = {"val_accuracy": 0.9}
    Scoreboard(Objective()).observe(1, nothing)
    assert nothing == {"val_accuracy": 0.9}  # no loss anywhere: nothing to report


def test_the_best_round_survives_a_restart_in_the_checkpoint_state() -> None:
    board = Scoreboard(Objective(metric="mae", mode="min"))
    rounds(board, [4.0, 2.0, 3.0], key="val_mae")
    state = {"momentum": [1, 2], **board.state()}
    again = Scoreboard(Objective(metric="mae", mode="min"))
    assert again.restore(state) == {"momentum": [1, 2]}  # the strategy's part, untouched
    entry = {"val_mae": 2.5}
    again.observe(4, entry)
    assert (entry["best_round"], entry["best_objective"]) == (2, 2.0)
    assert again.summary() == {"objective": "mae (min)", "best_round": "2",
                               "best_objective": "2.0", "objective_metric": "val_mae"}  # fmt: skip
    for broken in ({STATE_KEY: "x"}, {STATE_KEY: {"round": "2", "value": 1.0, "key": "val_mae"}},
                   {STATE_KEY: {"round": 2, "value": float("nan"), "key": "val_mae"}}):  # fmt: skip
        fresh = Scoreboard(Objective())
        assert fresh.restore(broken) == {} and fresh.best_round is None


def test_evaluate_without_the_objective_metric_is_one_line() -> None:
    class Task:
        def evaluate(self, model: object, data: object) -> dict[str, float]:
            return {"loss": 0.5, "n": 10}

    board = Scoreboard(Objective(metric="accuracy", mode="max"))
    with pytest.raises(FlError) as info:
        board.evaluate(Task(), None, [("val", [1])])
    assert str(info.value) == (
        "objective: the task's evaluate returned no 'accuracy' (it returned: loss, n); "
        "return it, or set federation.objective.metric to one of these"
    )
    assert Scoreboard(Objective()).evaluate(Task(), None, [("val", [1]), ("test", [2])]) == {
        "val_loss": 0.5, "val_n": 10.0, "test_loss": 0.5, "test_n": 10.0,
    }  # fmt: skip

    class NaN(Task):
        def evaluate(self, model: object, data: object) -> dict[str, float]:
            return {"loss": float("nan")}

    with pytest.raises(TaskError, match="^evaluate: metric 'loss' is not a finite number"):
        Scoreboard(Objective()).evaluate(NaN(), None, [("val", [1])])


def test_training_means_are_weighted_and_need_every_update() -> None:
    updates = [Update("a", {}, 30, {"loss": 1.0, "mae": 2.0}), Update("b", {}, 10, {"loss": 3.0})]
    assert train_means(updates, ["loss", "mae", "loss"]) == {"train_loss": 1.5}
    # under a robust rule: the median, whatever the weights (each one vote)
    liar = Update("c", {}, 1, {"loss": -1e300})
    assert train_means([*updates, liar], ["loss"], robust=True) == {"train_loss": 1.0}
    assert train_means([*updates, liar], ["loss"])["train_loss"] < -1e290


def test_the_objective_setting_is_checked() -> None:
    assert FederationConfig.parse({}).objective == Objective(metric="loss", mode="min")
    with pytest.raises(FlError, match="^federation: objective.mode: Input should be 'min' or"):
        FederationConfig.parse({"objective": {"metric": "r2", "mode": "higher"}})
    with pytest.raises(FlError, match="^federation: objective.metric: String should match"):
        FederationConfig.parse({"objective": {"metric": "val loss\n"}})
    with pytest.raises(FlError, match=r"^federation: objective.goal: unknown setting"):
        FederationConfig.parse({"objective": {"metric": "r2", "goal": "max"}})


# --- a user's task in real processes ----------------------------------------------------------


def secfl(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as fh:
        argv = [sys.executable, "-m", "secfl.cli.main", *args]
        return subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


class Insecure:
    """An --insecure aggregator and collaborators of one federation, in ``root``."""

    def __init__(self, root: Path, task: Path, settings: dict[str, object]) -> None:
        self.root, self.task = root, task
        self.procs: list[subprocess.Popen[bytes]] = []
        (root / "settings.yaml").write_text(yaml.safe_dump(settings))

    def aggregator(self, validation: Path, test: Path) -> subprocess.Popen[bytes]:
        ready = self.root / "ready.json"
        proc = secfl("aggregator", "--insecure", "--task", str(self.task),
                     "--validation", str(validation), "--test", str(test),
                     "--federation", str(self.root / "settings.yaml"),
                     "--listen", "127.0.0.1:0", "--ready-file", str(ready),
                     "--metrics", str(self.root / "metrics.jsonl"),
                     "--output", str(self.root / "out"),
                     log=self.root / "aggregator.log")  # fmt: skip
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, (self.root / "aggregator.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the aggregator did not start"
            time.sleep(0.05)
        self.port = json.loads(ready.read_text())["port"]
        return proc

    def collaborator(self, name: str, data: Path) -> subprocess.Popen[bytes]:
        proc = secfl("collaborator", "--insecure", "--name", name, "--task", str(self.task),
                     "--aggregator", f"127.0.0.1:{self.port}", "--data", str(data),
                     log=self.root / f"{name}.log")  # fmt: skip
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Path]]]:
    task = write_task(tmp_path / "mytask")
    yield task, write_csv_sites(tmp_path / "data", 2)


def error_lines(text: str) -> list[str]:
    assert "Traceback" not in text, text[-3000:]
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_a_multi_file_regression_on_csv_runs_to_the_end(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    task, data = federation
    fed = Insecure(tmp_path, task, {
        "rounds": 3, "min_clients": 2, "objective": {"metric": "mae", "mode": "min"},
        "train": {"epochs": 2, "lr": 0.05}, "join_timeout": 60,
    })  # fmt: skip
    try:
        agg = fed.aggregator(data["validation"], data["test"])
        sites = [fed.collaborator(n, data[n]) for n in ("site-1", "site-2")]
        assert agg.wait(timeout=180) == 0, fed.log("aggregator")[-3000:]
        for site in sites:
            assert site.wait(timeout=60) == 0
    finally:
        fed.stop()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["round"] for e in lines] == [1, 2, 3]
    assert not any("accuracy" in key for e in lines for key in e)
    for e in lines:
        assert {"train_loss", "val_loss", "val_mae", "val_n", "test_mae"} <= set(e)
        assert e["objective_metric"] == "val_mae" and e["objective"] == e["val_mae"]
    best = min(lines, key=lambda e: (e["val_mae"], e["round"]))
    assert lines[-1]["best_round"] == best["round"]
    assert lines[0]["val_mae"] > lines[-1]["val_mae"]  # it learns
    _, meta = from_bytes((tmp_path / "out" / "model.safetensors").read_bytes())
    assert meta["best_round"] == str(best["round"]) and meta["objective"] == "mae (min)"
    assert float(meta["best_objective"]) == best["val_mae"] and meta["rounds"] == "3"
    # which commit it is (a hostile review: a stale output could not be told from a
    # current one): the run, its final counter (the initial model, then three rounds)
    assert meta["run"] == "1" and meta["counter"] == str(lines[-1]["counter"]) == "4"
    assert meta["policy_digest"] == "insecure"  # (a secure run: the policy's digest)
    assert "best round" in fed.log("aggregator")


def test_a_missing_objective_metric_stops_the_aggregator_in_one_line(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    task, data = federation
    fed = Insecure(tmp_path, task, {
        "rounds": 2, "min_clients": 1, "objective": {"metric": "r2", "mode": "max"},
        "join_timeout": 60,
    })  # fmt: skip
    try:
        agg = fed.aggregator(data["validation"], data["test"])
        fed.collaborator("site-1", data["site-1"])
        assert agg.wait(timeout=120) == 1
    finally:
        fed.stop()
    assert error_lines(fed.log("aggregator")) == [
        "error: objective: the task's evaluate returned no 'r2' (it returned: loss, mae, n); "
        "return it, or set federation.objective.metric to one of these"
    ]


def test_a_task_whose_train_returns_no_loss_stops_its_collaborator(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    task, data = federation
    with open(task / "task.py", "a") as fh:
        fh.write("\n_train = train\n\ndef train(model, data, config):\n"
                 "    return {'n': _train(model, data, config)['n']}\n")  # fmt: skip
    fed = Insecure(tmp_path, task, {"rounds": 1, "min_clients": 1, "join_timeout": 60})
    try:
        fed.aggregator(data["validation"], data["test"])
        site = fed.collaborator("site-1", data["site-1"])
        assert site.wait(timeout=120) == 1
    finally:
        fed.stop()
    assert error_lines(fed.log("site-1")) == ["error: train: returned no 'loss' (it returned: n)"]
