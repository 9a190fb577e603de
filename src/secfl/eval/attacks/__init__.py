"""Model-poisoning attacks, to evaluate defences: no policy can enable one.

An in-process simulation gives some participants an :class:`Attack`:
``get_attack("min-max", direction="std")``. Each round such a participant trains on
``attack.poison_data(shard, task, rng)`` and sends
``attack.poison_delta(delta, benign=colluders_deltas, rng=rng)`` in place of its
honest delta (local model minus global model); ``benign`` matters only to the
``colluding`` attacks, and an ``omniscient`` attack is also given
``honest=honest_deltas``, every honest participant's delta of the round.

- on the data: ``label-flip``, ``backdoor`` (with :func:`add_trigger` and
  :func:`attack_success_rate`);
- on the delta: ``sign-flip``, ``scaling`` (model replacement), ``gaussian``;
- colluding: ``alie``, ``ipm``, ``min-max``, ``min-sum``, and Fang et al.'s attacks
  tailored to a rule, with partial knowledge: ``fang-krum``, ``fang-trimmed-mean``;
- omniscient: ``mimic`` (every attacker copies one honest participant's delta) and
  ``adaptive`` (knows the clone audit's detection signals and stays under them).
"""

from __future__ import annotations

from secfl.eval.attacks.adaptive import Adaptive
from secfl.eval.attacks.base import (
    Attack,
    Params,
    available_attacks,
    get_attack,
    register_attack,
)
from secfl.eval.attacks.data import Backdoor, LabelFlip, add_trigger, attack_success_rate
from secfl.eval.attacks.fang import FangKrum, FangTrimmedMean
from secfl.eval.attacks.mimic import Mimic
from secfl.eval.attacks.model import (
    DIRECTIONS,
    Alie,
    Gaussian,
    Ipm,
    MinMax,
    MinSum,
    ScalingAttack,
    SignFlip,
    alie_z,
    search_gamma,
)

__all__ = [
    "DIRECTIONS",
    "Adaptive",
    "Alie",
    "Attack",
    "Backdoor",
    "FangKrum",
    "FangTrimmedMean",
    "Gaussian",
    "Ipm",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "Params",
    "ScalingAttack",
    "SignFlip",
    "add_trigger",
    "alie_z",
    "attack_success_rate",
    "available_attacks",
    "get_attack",
    "register_attack",
    "search_gamma",
]
