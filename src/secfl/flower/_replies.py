"""A Flower reply, checked on its own before :class:`~secfl.flower.SecflStrategy` uses it.

Flower's ``FedAvg`` checks the round's replies *together*
(``validate_message_reply_consistency``): one reply with an extra metric, a missing
tensor or a second ``ArrayRecord`` raises ``InconsistentMessageReplies``, which ends
the ServerApp, and so does an ``Array`` whose ``.npy`` bytes are empty, or whose
header claims a shape of 2^40 (``np.load`` allocates it before reading). So one
SuperNode could end any run. Here each reply is read alone, against what the server
sent: exactly one ``ArrayRecord`` holding the global model's tensor names, each of
its dtype and shape with exactly its bytes behind the header; exactly one
``MetricRecord``, its sample count an integer from 1 to :data:`MAX_SAMPLES` and its
metrics finite numbers. A reply that fails is left out with a one-line reason.

Under a robust rule, the metrics a round reports are the kept replies' median
(:func:`median_metrics`): one node's report, like its update, must not set them.
"""

from __future__ import annotations

import io
import math
import statistics
from collections import Counter
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from secfl._internal.values import quoted
from secfl.errors import FlError
from secfl.fl.strategies import Params

__all__ = ["MAX_SAMPLES", "check_metrics", "median_metrics", "reply_params", "sample_count"]

#: The most samples one reply may report (secfl's own default ``max_samples``).
MAX_SAMPLES = 10**9
#: The largest ``.npy`` header read (NumPy's own default bound).
MAX_NPY_HEADER = 10_000


def reply_params(msg: Message, key: str, like: Params) -> Params:
    """The reply's model: its one ``ArrayRecord`` (named ``key``) with exactly the
    tensors of ``like`` (the global model sent), each of the same dtype and shape."""
    records = msg.content.array_records
    if len(records) != 1 or key not in records:
        raise FlError(f"arrays: the reply holds {len(records)} ArrayRecords, not one '{key}'")
    record: ArrayRecord = records[key]
    if set(record.keys()) != set(like):
        extra, missing = sorted(set(record.keys()) - set(like)), sorted(set(like) - set(record))
        raise FlError(f"arrays: tensors {extra[:3]} are not the model's, {missing[:3]} missing")
    return {name: _array(name, record[name], like[name]) for name in like}


def _array(name: str, array: Array, like: np.ndarray) -> np.ndarray:
    """``array``'s values, read only after its ``.npy`` header matched ``like``."""
    what = f"arrays: tensor {quoted(name)}"
    if array.stype != "numpy.ndarray" or not isinstance(array.data, bytes):
        raise FlError(f"{what} is not a serialised NumPy array")
    data = array.data
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(fp, max_header_size=MAX_NPY_HEADER)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(fp, max_header_size=MAX_NPY_HEADER)
        else:
            raise ValueError(f"format version {version}")
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise FlError(f"{what} has no readable .npy header ({type(exc).__name__})") from None
    shape, fortran, dtype = header
    if dtype != like.dtype or tuple(shape) != like.shape:
        raise FlError(f"{what} is {dtype} {tuple(shape)}, the model's is {like.dtype} {like.shape}")
    if len(data) - fp.tell() != like.nbytes:
        raise FlError(f"{what} holds {len(data) - fp.tell()} bytes, its shape needs {like.nbytes}")
    flat = np.frombuffer(data, dtype=like.dtype, offset=fp.tell())  # np.save writes an
    # F-contiguous array (a transpose) in Fortran order
    return np.ascontiguousarray(flat.reshape(like.shape, order="F" if fortran else "C"))


def only_metrics(msg: Message) -> MetricRecord:
    """The reply's one ``MetricRecord``."""
    records = msg.content.metric_records
    if len(records) != 1:
        raise FlError(f"metrics: the reply holds {len(records)} MetricRecords, not one")
    return next(iter(records.values()))


def sample_count(msg: Message, key: str) -> int:
    """The reply's ``key`` (``num-examples``): an integer from 1 to :data:`MAX_SAMPLES`."""
    record = only_metrics(msg)
    if key not in record:
        raise FlError(f"metrics: the reply has no '{key}'")
    value = record[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value != int(value)
        or not 1 <= value <= MAX_SAMPLES
    ):
        raise FlError(f"metrics: '{key}' is not an integer from 1 to {MAX_SAMPLES}")
    return int(value)


def check_metrics(msg: Message) -> None:
    """Metrics any averaging can read: finite numbers (a list, or NaN, failed the
    round's metric aggregation, and the ServerApp with it)."""
    for name, value in only_metrics(msg).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FlError(f"metrics: {quoted(name)} is not a number")
        if not math.isfinite(value):
            raise FlError(f"metrics: {quoted(name)} is not finite")


def median_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Each metric that most of ``records`` report: the median of their values, each
    node one vote (its sample count, self-reported, does not weigh in). A metric only
    a few nodes report is left out: they alone would set it."""
    metrics: list[Mapping[str, object]] = [
        next(iter(r.metric_records.values()), MetricRecord()) for r in records
    ]
    counts = Counter(name for m in metrics for name in m if name != weighted_by_key)
    out = MetricRecord()
    for name in sorted(counts):
        numbers = [
            float(v)
            for m in metrics  # bool is no number; NaN was refused before
            if isinstance(v := m.get(name), int | float) and type(v) is not bool
        ]
        if 2 * len(numbers) > len(metrics):
            out[name] = statistics.median(numbers)
    return out
