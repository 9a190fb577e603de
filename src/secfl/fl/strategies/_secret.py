"""A secret of the aggregator's for a rule's random draws.

The rules that draw at random (the clone audit's clones, validation rows and detector
coordinates; the coordinates DnC, FLAME and SignGuard look at) are seeded from the
policy's ``seed`` and the round, so that a run can be reproduced. But every site reads
the policy: from the seed alone it could draw the coordinates a rule will look at and
put its poison in the others (found by a hostile review). So the aggregator draws a
secret inside its TEE (:func:`keep_secret`) and the rule mixes it into every draw; the
secret goes into the rule's state, which only the sealed checkpoint holds, so a resumed
run draws as before. Simulations and tests that draw none stay reproducible from the
seed alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from secfl.errors import FlError

__all__ = ["SECRET_BYTES", "SecretDraws", "keep_secret", "secret_from_state", "secret_words"]

SECRET_BYTES = 32


def keep_secret(strategy: Any) -> None:
    """Give ``strategy``, if it draws at random, a secret drawn here (inside the
    aggregator's TEE, or the Flower ServerApp's)."""
    keep = getattr(strategy, "keep_secret", None)
    if callable(keep):
        keep(secrets.token_bytes(SECRET_BYTES))


def secret_words(secret: bytes, rule: str) -> tuple[int, ...]:
    """``secret`` as the words a numpy seed sequence takes."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise FlError(f"{rule}: the secret must be {SECRET_BYTES} bytes")
    return tuple(int(w) for w in np.frombuffer(secret, dtype="<u4"))


def secret_from_state(value: Any, rule: str) -> bytes:
    """The secret a checkpoint's state holds (hex), checked."""
    try:
        secret = bytes.fromhex(value) if isinstance(value, str) else b""
        secret_words(secret, rule)
    except (ValueError, FlError):
        raise FlError(f"{rule}: the checkpoint's secret is malformed") from None
    return secret


class SecretDraws:
    """For a rule whose only state is its secret: ``self.key`` (empty until a secret
    is kept) goes first into every seed sequence the rule draws from."""

    name: ClassVar[str]
    secret: bytes | None = None
    key: tuple[int, ...] = ()

    def keep_secret(self, secret: bytes) -> None:
        self.key = secret_words(secret, self.name)
        self.secret = secret

    def state(self) -> dict[str, Any]:
        return {} if self.secret is None else {"secret": self.secret.hex()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        extra = sorted(set(state) - {"secret"})
        if extra:
            raise FlError(f"{self.name}: keeps no state but its secret, got keys {extra[:3]}")
        if "secret" in state:
            self.keep_secret(secret_from_state(state["secret"], self.name))
