"""FLTrust (Cao, Fang, Liu and Gong, "FLTrust: Byzantine-robust Federated Learning
via Trust Bootstrapping", NDSS 2021).

The server holds a small clean root data set. Each round it trains the global
model on it (the hook :attr:`FLTrust.root_update`, set by the aggregator), on a
sample the size of the median participant's, so with as many local steps as the
participants take, and takes that model's delta ``g0`` as the reference
direction. Each update's delta ``g_i`` gets the trust score
``TS_i = ReLU(cos(g_i, g0))``, is rescaled to ``g0``'s norm, and the new model is::

    global + sum_i TS_i * (||g0|| / ||g_i||) * g_i / sum_i TS_i

(the paper's global learning rate is 1). Cosines and norms are over all
floating-point tensors together; an update with a zero delta scores 0. If every
score is 0 (all updates point away from the root update, or the root update is
zero) the global model is kept. Sample counts are ignored. Integer and bool
tensors have no direction: they take the (rounded) coordinate-wise median of the
updates' values. :attr:`FLTrust.trust` holds the last round's scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from secfl.errors import FlError
from secfl.fl._tensors import check_like
from secfl.fl.strategies import _robust
from secfl.fl.strategies._base import Params, Strategy, Update
from secfl.fl.strategies._registry import register_strategy

__all__ = ["FLTrust", "RootUpdate"]

log = logging.getLogger("secfl.fl.strategies._fltrust")

#: ``root_update(round, global_params, samples)``: the global model trained on (at most
#: ``samples`` examples of) the root data set.
RootUpdate = Callable[[int, Params, int], Params]


@register_strategy
class FLTrust(Strategy):
    """Trust-weighted, norm-matched averaging against a root update (module docstring)."""

    name = "fltrust"

    def __init__(
        self,
        *,
        root_update: RootUpdate | None = None,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(client_config=client_config)
        if root_update is not None and not callable(root_update):
            raise FlError(f"{self.name}: root_update must be callable, not {root_update!r}")
        #: Trains the global model on the root data set; set by the aggregator.
        self.root_update: RootUpdate | None = root_update
        #: The last round's trust scores, by sender.
        self.trust: dict[str, float] = {}

    def aggregate(self, round: int, global_params: Params, updates: Sequence[Update]) -> Params:
        _robust.check_inputs(self.name, global_params, updates)
        if self.root_update is None:
            raise FlError(
                f"{self.name}: no root dataset (the policy must give the aggregator a "
                "validation volume)"
            )
        # as many examples as a typical participant, so the root update takes as many
        # local steps as theirs (the paper's "same local iterations"): its norm is the
        # step every update is rescaled to, and a larger root set would inflate it
        samples = int(np.median([u.num_samples for u in updates]))
        server = self.root_update(round, global_params, max(samples, 1))
        check_like(server, global_params, what=f"{self.name}: the root update")
        names = _robust.float_names(global_params)
        n = len(updates)
        deltas = {name: _robust.stack(name, global_params, updates, delta=True) for name in names}
        root = {
            name: server[name].reshape(-1).astype(np.float64)
            - global_params[name].reshape(-1).astype(np.float64)
            for name in names
        }
        dots = np.zeros(n, dtype=np.float64)
        norms_sq = np.zeros(n, dtype=np.float64)
        root_sq = 0.0
        for name in names:
            dots += deltas[name] @ root[name]
            norms_sq += np.einsum("ij,ij->i", deltas[name], deltas[name])
            root_sq += float(root[name] @ root[name])
        norms, root_norm = np.sqrt(norms_sq), float(np.sqrt(root_sq))
        if not (np.isfinite(dots).all() and np.isfinite(norms).all() and np.isfinite(root_norm)):
            raise FlError(f"{self.name}: the norms of the deltas overflow float64")
        trust = np.zeros(n, dtype=np.float64)
        live = norms > 0
        if root_norm > 0:
            trust[live] = np.maximum(dots[live] / (norms[live] * root_norm), 0.0)
        self.trust = {u.sender: float(t) for u, t in zip(updates, trust, strict=True)}
        total = float(trust.sum())
        if total <= 0:
            log.warning("round %d: fltrust trusts no update; the global model is kept", round)
            return {name: value.copy() for name, value in global_params.items()}
        weights = np.zeros(n, dtype=np.float64)
        weights[live] = trust[live] * (root_norm / norms[live]) / total
        aggregated = {name: weights @ deltas[name] for name in names}
        others = [name for name in global_params if name not in aggregated]
        result = _robust.combine(self.name, global_params, updates, _robust.median, others)
        result.update(_robust.apply_delta(self.name, global_params, aggregated))
        return {name: result[name] for name in global_params}
