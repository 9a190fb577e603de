"""The mimic attack: every attacker sends a copy of one honest participant's delta.

Karimireddy, He and Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
Bucketing" (ICLR 2022), section 3. Nothing the attackers send is out of the honest
spread (it *is* an honest delta), so no outlier rule can tell; the harm is in the
weights: the victim's data counts ``1 + m`` times, the rest once, which skews the
model towards the victim's label distribution when the data is not IID. The attack
is ``omniscient``: it sees the honest deltas of the round.

The victim is the paper's: the honest participant with the largest projection on
the top principal direction of the honest deltas, so the one whose data pulls
hardest away from the others. The direction is learned in the first ``warmup``
rounds (default 1) and the victim is then fixed for the rest of the run.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from secfl.eval.attacks.base import (
    CraftedFromRows,
    integer,
    register_attack,
)

__all__ = ["Mimic", "choose_victim", "principal_direction"]


def principal_direction(centred: np.ndarray) -> np.ndarray:
    """The unit top principal direction of the ``centred`` rows (zeros if they are all
    zero), from the eigenvectors of their Gram matrix: ``rows × rows`` instead of
    ``d × d``, so cheap for a model of any size."""
    gram = centred @ centred.T
    values, vectors = np.linalg.eigh(gram)
    if values[-1] <= 0:
        return np.zeros(centred.shape[1])
    z = centred.T @ vectors[:, -1]
    return np.asarray(z / np.linalg.norm(z))


def choose_victim(rows: np.ndarray, z: np.ndarray) -> int:
    """The index of the row of ``rows`` farthest from their mean along ``z``, on
    either side (the first one on a tie)."""
    projections = np.abs((rows - rows.mean(axis=0)) @ z)
    return int(np.argmax(projections))


@register_attack
class Mimic(CraftedFromRows):
    """Send a copy of the victim's honest delta (module docstring).

    The attack object lives for the whole run and keeps its state: every attacker
    calls :meth:`poison_delta` with the same honest deltas in a round, and a round
    is told from the next by those deltas changing. In each of the first ``warmup``
    rounds, the principal direction is recomputed over the centred honest deltas of
    all the warm-up rounds so far, and the victim is chosen again in that round;
    afterwards :attr:`victim`, an index in the honest deltas in sorted sender order,
    stays fixed. If a later round has a different number of honest deltas (a site
    sent nothing), the index no longer names the same participant, so the victim is
    chosen again from that round with the learned direction.

    The reference code (epfml/byzantine-robust-noniid-optimizer, ``mimic.py``)
    takes the largest *signed* projection with the direction's sign set by a random
    start; the absolute value here removes that arbitrary choice.
    """

    name = "mimic"
    omniscient = True

    def __init__(self, *, warmup: int = 1) -> None:
        self.warmup = integer(warmup, "mimic: warmup", 1)
        #: The victim's index in the round's honest deltas, once chosen.
        self.victim: int | None = None
        #: The rounds seen so far.
        self.rounds = 0
        self._direction: np.ndarray | None = None
        self._warm: list[np.ndarray] = []
        self._digest = b""
        self._count = 0

    def _observe(self, rows: np.ndarray) -> None:
        """Count a new round when ``rows`` differ from the last call's, and (re)choose
        the victim when the warm-up or a change in the number of rows asks for it."""
        digest = hashlib.blake2b(rows.tobytes(), digest_size=16).digest()
        digest += repr(rows.shape).encode()
        if digest == self._digest:
            return
        self._digest = digest
        self.rounds += 1
        if self.rounds <= self.warmup:
            self._warm.append(rows - rows.mean(axis=0))
            self._direction = principal_direction(np.concatenate(self._warm))
        elif rows.shape[0] == self._count:
            return
        assert self._direction is not None  # set in round 1, as warmup >= 1
        self.victim = choose_victim(rows, self._direction)
        self._count = rows.shape[0]
        if self.rounds >= self.warmup:
            self._warm.clear()  # not needed any more: free the memory

    def _poison(self, rows: np.ndarray) -> np.ndarray:
        self._observe(rows)
        assert self.victim is not None
        return np.array(rows[self.victim], copy=True)

    def settings(self) -> dict[str, Any]:
        return {"warmup": self.warmup}
