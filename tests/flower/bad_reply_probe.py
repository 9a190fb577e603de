"""Runs in the Flower venv: ``python bad_reply_probe.py``. One real Flower round of
``SecflStrategy("median")`` over four nodes, three honest and one whose reply is bad
in the way named by each case; prints JSON: per case, what the strategy kept (or the
error that ended the round)."""

from __future__ import annotations

import io
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
    out.update({case: content_case(case) for case in CONTENT_CASES})
    out["fortran"] = fortran_case()
    out.update({case: evaluate_case(metrics) for case, metrics in EVALUATE_CASES.items()})
    return out


def _npy(shape: tuple[int, ...], data: bytes = b"") -> Array:
    """An Array whose .npy header claims ``shape`` (float64) with ``data`` behind it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    return Array(dtype="float64", shape=(4,), stype="numpy.ndarray", data=buf.getvalue() + data)


#: A second hostile review: each of these, from one node, ended the ServerApp (Flower's
#: check of all replies together raised InconsistentMessageReplies, or np.load failed).
CONTENT_CASES = ["extra-metric", "missing-loss", "examples-list", "two-arrayrecords",
                 "extra-tensor", "missing-tensor", "npy-empty", "npy-lying-shape",
                 "npy-short-data"]  # fmt: skip


def content_case(case: str) -> dict[str, Any]:
    strategy = SecflStrategy("median", {}, fraction_train=1.0, min_train_nodes=4,
                             min_available_nodes=4)  # fmt: skip
    messages = strategy.configure_train(1, _record({"w": np.zeros(4), "b": np.zeros(2)}),
                                        ConfigRecord({}), Grid([101, 102, 103, 104]))  # type: ignore[arg-type]  # fmt: skip
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        b0 = np.zeros(2)
        arrays = _record({"w": np.full(4, node / 100.0), "b": b0})
        metrics: dict[str, Any] = {"num-examples": 10, "loss": 0.5}
        extra: dict[str, Any] = {}
        if node == 104:
            if case == "extra-metric":
                metrics["accuracy"] = 0.9
            elif case == "missing-loss":
                del metrics["loss"]
            elif case == "examples-list":
                metrics["num-examples"] = [10, 10]
            elif case == "two-arrayrecords":
                extra["arrays2"] = _record({"w": np.zeros(4)})
            elif case == "extra-tensor":
                arrays = _record({"w": np.zeros(4), "b": np.zeros(2), "v": np.zeros(1)})
            elif case == "missing-tensor":
                arrays = _record({"w": np.zeros(4)})
            elif case.startswith("npy-"):
                w = {
                    "npy-empty": Array(dtype="float64", shape=(4,), stype="numpy.ndarray",
                                       data=b""),
                    "npy-lying-shape": _npy((1 << 40,)),  # 8 TiB claimed, 100 bytes sent
                    "npy-short-data": _npy((4,), bytes(24)),
                }[case]  # fmt: skip
                arrays = ArrayRecord(array_dict={"w": w, "b": Array.from_numpy_ndarray(b0)})
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics), **extra})
        replies.append(Message(content=content, reply_to=msg))
    try:
        arrays_out, train_metrics = strategy.aggregate_train(1, replies)
    except BaseException as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {
        "kept": strategy.kept,
        "w": None if arrays_out is None else arrays_out["w"].numpy().tolist(),
        "metrics": dict(train_metrics or {}),
    }


def fortran_case() -> dict[str, Any]:
    """Every node honest, its 2-D weight Fortran-ordered (a transpose: np.save writes it
    so): the review's review found each such reply left out, and no round aggregated."""
    strategy = SecflStrategy("median", {}, fraction_train=1.0, min_train_nodes=4,
                             min_available_nodes=4)  # fmt: skip
    messages = strategy.configure_train(1, _record({"w": np.zeros((3, 4))}), ConfigRecord({}),
                                        Grid([101, 102, 103, 104]))  # type: ignore[arg-type]  # fmt: skip
    replies, sent = [], []
    for msg in messages:
        w = np.asfortranarray(np.arange(12.0).reshape(3, 4) + msg.metadata.dst_node_id)
        sent.append(w)
        metrics = MetricRecord({"num-examples": 10, "loss": 0.5})
        content = RecordDict({"arrays": _record({"w": w}), "metrics": metrics})
        replies.append(Message(content=content, reply_to=msg))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    got = arrays["w"].numpy()
    return {"kept": strategy.kept, "same": bool(np.array_equal(got, np.median(sent, axis=0)))}


#: The bad node's evaluate metrics: each ended the run, or alone set the reported loss.
EVALUATE_CASES: dict[str, dict[str, Any]] = {
    "eval-loss-nan": {"num-examples": 10, "loss": float("nan")},
    "eval-loss-list": {"num-examples": 10, "loss": [1.0, 2.0]},
    "eval-examples-cancel": {"num-examples": -30, "loss": 0.5},
    "eval-loss-huge": {"num-examples": 10, "loss": 1e308},
    "eval-examples-huge": {"num-examples": 10**9, "loss": -1e6},
}


def evaluate_case(bad: dict[str, Any]) -> dict[str, Any]:
    strategy = SecflStrategy("median", {}, fraction_evaluate=1.0, min_evaluate_nodes=4,
                             min_available_nodes=4)  # fmt: skip
    messages = strategy.configure_evaluate(1, _record({"w": np.zeros(4)}), ConfigRecord({}),
                                           Grid([101, 102, 103, 104]))  # type: ignore[arg-type]  # fmt: skip
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        metrics = bad if node == 104 else {"num-examples": 10, "loss": 0.5 + (node - 100) / 1000}
        replies.append(Message(content=RecordDict({"metrics": MetricRecord(metrics)}),
                               reply_to=msg))  # fmt: skip
    try:
        return {"metrics": dict(strategy.aggregate_evaluate(1, replies) or {})}
    except BaseException as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}


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
