"""Runs in the Flower venv: ``python strategy_runner.py DIR``.

DIR/jobs.json lists cases (a global model and updates as ``.npz``, each update's sample
count) and jobs (a case, a strategy: ``secfl`` with a rule and settings, or a Flower
strategy by class name with keyword arguments). Each job runs one real Flower round of
the strategy: ``configure_train`` on a grid of the case's nodes (node IDs 101, 102, ...),
each node's reply built from its update (``reply_to`` the message it was sent), then
``aggregate_train``. The aggregate goes to DIR/out-JOB.npz and what the strategy kept
to DIR/out-JOB.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower

from secfl.flower import SecflStrategy


class Grid:
    """What FedAvg's sampling asks of a grid: the connected nodes."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def _loss(target: dict[str, np.ndarray]):
    def loss(params: dict[str, np.ndarray]) -> float:
        return float(sum(np.mean((params[k] - target[k]) ** 2) for k in target)) + 1e-3

    return loss


def main(root: Path) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    # What a ServerApp process has set when its strategy runs.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    spec = json.loads((root / "jobs.json").read_text())
    for job in spec["jobs"]:
        case = spec["cases"][job["case"]]
        with np.load(root / f"{job['case']}-global.npz", allow_pickle=False) as z:
            global_params = {k: z[k] for k in spec["names"]}
        with np.load(root / "target.npz", allow_pickle=False) as z:
            target = {k: z[k] for k in spec["names"]}
        nodes = [101 + i for i in range(len(case["counts"]))]
        common = {
            "fraction_train": 1.0,
            "min_train_nodes": len(nodes),
            "min_available_nodes": len(nodes),
        }
        if job["kind"] == "secfl":
            strategy = SecflStrategy(
                job["rule"],
                job["settings"],
                validation_loss=_loss(target),
                secret=False,
                **common,
            )
        else:
            strategy = getattr(flower, job["kind"])(**job["settings"], **common)
        messages = list(
            strategy.configure_train(1, _record(global_params), ConfigRecord({}), Grid(nodes))
        )
        replies = []
        for msg in messages:
            i = nodes.index(msg.metadata.dst_node_id)
            with np.load(root / f"{job['case']}-{i}.npz", allow_pickle=False) as z:
                params = {k: z[k] for k in spec["names"]}
            content = RecordDict(
                {
                    "arrays": _record(params),
                    "metrics": MetricRecord({"num-examples": case["counts"][i], "loss": 0.5}),
                }
            )
            replies.append(Message(content=content, reply_to=msg))
        arrays, _ = strategy.aggregate_train(1, replies)
        out = {name: arrays[name].numpy() for name in arrays}
        np.savez(root / f"out-{job['id']}.npz", **out)
        kept = getattr(strategy, "kept", None)
        (root / f"out-{job['id']}.json").write_text(
            json.dumps(
                {
                    "order": list(arrays.keys()),
                    "kept": [str(nodes.index(int(s))) for s in kept] if kept is not None else None,
                }
            )
        )


def _record(params: dict[str, np.ndarray]) -> ArrayRecord:
    from flwr.app import Array

    return ArrayRecord(array_dict={k: Array.from_numpy_ndarray(v) for k, v in params.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
