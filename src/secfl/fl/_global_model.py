"""The global model between rounds: kept once, as read-only views of its serialized
(signed, sent, checkpointed) bytes, and the next one written straight into its own
bytes where the aggregation rule allows."""

from __future__ import annotations

from secfl._internal.buffers import Frozen
from secfl.fl._tensors import from_bytes, to_bytes
from secfl.fl.strategies._base import Accumulator, Params
from secfl.fl.strategies._fedavg import FedAvgAccumulator

__all__ = ["model_views", "next_model"]


def next_model(acc: Accumulator, previous: Frozen) -> Frozen:
    """The round's new model, serialized: written straight into its bytes where the
    rule allows (FedAvg, FedProx: see ``FedAvgAccumulator.finish_into``), else
    aggregated, then serialized."""
    if isinstance(acc, FedAvgAccumulator):
        serialized = acc.finish_into(previous)
        if serialized is not None:
            return serialized  # read-only: nothing writes through it
    return to_bytes(acc.finish())


def model_views(model_bytes: Frozen) -> Params:
    """The model as read-only views into its serialized bytes, which are kept anyway
    (sealed and sent to every collaborator): the aggregator holds one copy, not two."""
    params, _ = from_bytes(model_bytes, copy=False)
    return params
