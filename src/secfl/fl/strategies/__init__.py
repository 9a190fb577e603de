"""Aggregation strategies: the interface (:mod:`.base`), the registry and the built-ins.

``get_strategy("fedavg")``, ``get_strategy("fedprox", mu=0.1)``,
``get_strategy("fedadam", server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)``.
The robust rules: ``median``, ``trimmed-mean`` (``beta``), ``krum`` (``f``),
``multi-krum`` (``f``, ``m``), ``bulyan`` (``f``), ``centered-clipping`` (``tau``,
``iterations``) and ``fltrust`` (a ``root_update`` hook set by the aggregator).
The filtering rules: ``dnc`` (``f``, ``iterations``, ``dims``, ``c``, ``seed``;
spectral filtering on random coordinate subsets), ``signguard`` (``lower``,
``upper``, ``coordinates``, ``seed``; norm and sign-statistics filters, then
clipping) and ``flame`` (``lam``, ``seed``; cosine HDBSCAN admission, clipping and
noise), on the update-space primitives of :mod:`._signals`.
``clone-audit`` (:mod:`.clone_audit`) wraps any of them (``base``) and leaves out
the participants whose updates harm the model on the aggregator's validation data.
A new rule subclasses :class:`Strategy`, implements ``aggregate`` (it sees every
update of the round with its sender) and registers itself with
:func:`register_strategy`; importing its module here makes it available by name.
"""

from __future__ import annotations

from secfl.fl.strategies._audit_round import AuditRound
from secfl.fl.strategies._base import (
    Accumulator,
    BufferingAccumulator,
    Params,
    Strategy,
    Update,
    check_round,
    check_update,
)
from secfl.fl.strategies._bulyan import Bulyan
from secfl.fl.strategies._clipping import CenteredClipping
from secfl.fl.strategies._clone_audit import CloneAudit
from secfl.fl.strategies._dnc import DnC
from secfl.fl.strategies._fedadam import FedAdam
from secfl.fl.strategies._fedavg import FedAvg, FedAvgAccumulator, FedProx
from secfl.fl.strategies._flame import Flame
from secfl.fl.strategies._fltrust import FLTrust
from secfl.fl.strategies._krum import Krum, MultiKrum
from secfl.fl.strategies._median import Median
from secfl.fl.strategies._registry import available_strategies, get_strategy, register_strategy
from secfl.fl.strategies._signguard import SignGuard
from secfl.fl.strategies._trimmed import TrimmedMean

__all__ = [
    "Accumulator",
    "AuditRound",
    "BufferingAccumulator",
    "Bulyan",
    "CenteredClipping",
    "CloneAudit",
    "DnC",
    "FLTrust",
    "FedAdam",
    "FedAvg",
    "FedAvgAccumulator",
    "FedProx",
    "Flame",
    "Krum",
    "Median",
    "MultiKrum",
    "Params",
    "SignGuard",
    "Strategy",
    "TrimmedMean",
    "Update",
    "available_strategies",
    "check_round",
    "check_update",
    "get_strategy",
    "register_strategy",
]
