"""Runs in the Flower venv: ``python bad_reply_probe.py``. One real Flower round of
``SecflStrategy("median")`` over four nodes, three honest and one whose reply is bad
in the way named by each case; prints JSON: per case, what the strategy kept (or the
error that ended the round)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from secfl.flower import SecflStrategy


class Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def _record(params: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array.from_numpy_ndarray(v) for k, v in params.items()})


CASES: dict[str, tuple[Any, Any, Any]] = {  # (the bad node's w, its num-examples, its loss)
    "nan": (np.full(4, np.nan), 10, 0.5),
    "huge": (np.full(4, 1e155), 10, 0.5),
    "float32": (np.zeros(4, np.float32), 10, 0.5),
    "examples-inf": (np.zeros(4), float("inf"), 0.5),
    "examples-nan": (np.zeros(4), float("nan"), 0.5),
    "examples-zero": (np.zeros(4), 0, 0.5),
    "examples-1e300": (np.zeros(4), 1e300, 0.5),
    "loss-list": (np.zeros(4), 10, [1.0, 2.0]),
    "loss-nan": (np.zeros(4), 10, float("nan")),
}


def main() -> dict[str, Any]:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    out: dict[str, Any] = {}
    nodes = [101, 102, 103, 104]
    for case, (bad, examples, loss) in CASES.items():
        strategy = SecflStrategy("median", {}, fraction_train=1.0, min_train_nodes=4,
                                 min_available_nodes=4)  # fmt: skip
        global_params = {"w": np.zeros(4)}
        messages = strategy.configure_train(1, _record(global_params), ConfigRecord({}),
                                            Grid(nodes))  # type: ignore[arg-type]  # fmt: skip
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            honest = node != 104
            w = np.full(4, node / 100.0) if honest else bad
            metrics = {"num-examples": 10 if honest else examples, "loss": 0.5 if honest else loss}
            content = RecordDict({"arrays": _record({"w": w}), "metrics": MetricRecord(metrics)})
            replies.append(Message(content=content, reply_to=msg))
        try:
            arrays, _ = strategy.aggregate_train(1, replies)
            w = arrays["w"].numpy().tolist() if arrays else None
            out[case] = {"kept": strategy.kept, "w": w}
        except Exception as exc:  # the round ended: what the old code did
            out[case] = {"error": f"{type(exc).__name__}: {exc}"}
    out["krum-short"] = krum_short()
    return out


def krum_short() -> dict[str, Any]:
    """Krum (f=1) needs 5 replies; of five nodes one sends NaN. The round aggregates
    nothing and keeps the model (Flower's answer to a round without a result); before,
    Krum's "needs n > 2f + 2" ended the ServerApp: one node could stop any run."""
    strategy = SecflStrategy("krum", {"f": 1}, fraction_train=1.0, min_train_nodes=5,
                             min_available_nodes=5)  # fmt: skip
    nodes = [101, 102, 103, 104, 105]
    messages = strategy.configure_train(1, _record({"w": np.zeros(4)}), ConfigRecord({}),
                                        Grid(nodes))  # type: ignore[arg-type]  # fmt: skip
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        w = np.full(4, np.nan) if node == 105 else np.full(4, node / 100.0)
        metrics = {"num-examples": 10, "loss": 0.5}
        content = RecordDict({"arrays": _record({"w": w}), "metrics": MetricRecord(metrics)})
        replies.append(Message(content=content, reply_to=msg))
    try:
        arrays, _ = strategy.aggregate_train(1, replies)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"kept": strategy.kept, "w": None if arrays is None else "aggregated"}


if __name__ == "__main__":
    print(json.dumps(main()))
