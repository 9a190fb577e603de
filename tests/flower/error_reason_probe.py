"""Runs in the Flower venv: ``python error_reason_probe.py``. One real Flower round of
``SecflStrategy("median")`` over four nodes, one of which replies with an error whose
reason is a ClientApp's exception message; prints everything logged, then one JSON line:
what the strategy kept."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from secfl.flower import SecflStrategy

SECRET = "KeyError:<'patient alice-smith, HIV+, viral load 52000'>"


class Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def _record(w: np.ndarray) -> ArrayRecord:
    return ArrayRecord(array_dict={"w": Array.from_numpy_ndarray(w)})


def main() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    seen = io.StringIO()
    handler = logging.StreamHandler(seen)
    for name in ("flwr", "secfl", ""):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    nodes = [101, 102, 103, 104]
    strategy = SecflStrategy("median", {}, fraction_train=1.0, min_train_nodes=4,
                             min_available_nodes=4)  # fmt: skip
    messages = strategy.configure_train(1, _record(np.zeros(4)), ConfigRecord({}),
                                        Grid(nodes))  # type: ignore[arg-type]  # fmt: skip
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        if node == 104:
            replies.append(Message(Error(code=0, reason=SECRET), reply_to=msg))
            continue
        metrics = MetricRecord({"num-examples": 10, "loss": 0.5})
        content = RecordDict({"arrays": _record(np.full(4, node / 100.0)), "metrics": metrics})
        replies.append(Message(content=content, reply_to=msg))
    strategy.aggregate_train(1, replies)
    print(seen.getvalue())
    print(json.dumps({"kept": strategy.kept}))


if __name__ == "__main__":
    main()
