"""Self-authenticating attestation nonces.

A nonce is ``random (12) || expiry (8, µs since the epoch) || HMAC (12)`` under a
key derived from the SPM's master key. Issuing one writes nothing; the SPM can
tell its own unexpired nonces from any other bytes by the MAC, and records a
nonce only when it is spent, so each is used at most once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Literal

__all__ = ["SIZE", "NonceIssuer", "State"]

SIZE = 32
#: Spent nonces kept in memory before the expired ones are first dropped.
PRUNE_FROM = 10_000
_DOMAIN = b"secfl/nonce/v1\n"

State = Literal["ok", "unknown", "expired"]


class NonceIssuer:
    """Issues and checks nonces that live ``ttl`` seconds."""

    def __init__(self, key: bytes, ttl: float) -> None:
        self._key = key
        self.ttl = ttl
        #: nonce -> its expiry: the nonces this process saw spent (until they expire).
        self._spent: dict[bytes, datetime] = {}
        #: Expired ones are dropped when there are this many: twice those left at the
        #: last pruning, so that pruning costs each nonce O(1) (past 10,000 unexpired
        #: ones it rebuilt the whole table on every attestation: a review).
        self._prune_at = PRUNE_FROM
        self._lock = threading.Lock()

    def seen(self, nonce: bytes, now: datetime) -> bool:
        """Whether this process saw ``nonce`` spent before; records it otherwise. Kept
        in memory (in the TEE) beside the database's record, which it does not trust."""
        with self._lock:
            if len(self._spent) > self._prune_at:
                self._spent = {n: t for n, t in self._spent.items() if t > now}
                self._prune_at = max(PRUNE_FROM, 2 * len(self._spent))
            if nonce in self._spent:
                return True
            expires = datetime.fromtimestamp(int.from_bytes(nonce[12:20], "big") / 1e6, UTC)
            self._spent[bytes(nonce)] = expires
            return False

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, _DOMAIN + body, hashlib.sha256).digest()[:12]

    def issue(self, now: datetime | None = None) -> tuple[bytes, datetime]:
        """A fresh nonce and its expiry: random bytes, the expiry, and their MAC."""
        expires = (now or datetime.now(UTC)) + timedelta(seconds=self.ttl)
        micros = int(expires.timestamp() * 1_000_000)
        body = os.urandom(12) + max(micros, 0).to_bytes(8, "big")
        return body + self._mac(body), expires

    def check(self, nonce: bytes, now: datetime) -> tuple[State, datetime | None]:
        """("ok", expiry), ("expired", expiry), or ("unknown", None) for bytes this
        SPM did not issue."""
        if len(nonce) != SIZE or not hmac.compare_digest(self._mac(nonce[:20]), nonce[20:]):
            return "unknown", None
        expires = datetime.fromtimestamp(int.from_bytes(nonce[12:20], "big") / 1_000_000, UTC)
        return ("ok" if now < expires else "expired"), expires
