"""The SPM's memory of spent nonces: each nonce is seen once, expired ones are dropped,
and dropping them costs each nonce O(1). Found by a hostile review: past 10,000
unexpired spent nonces (anyone may spend one: a nonce is free, and spent whatever the
attestation's outcome) the whole table was rebuilt on every attestation."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from secfl.spm._nonces import PRUNE_FROM, NonceIssuer


def test_a_nonce_is_seen_once_and_forgotten_once_expired() -> None:
    issuer = NonceIssuer(os.urandom(32), ttl=60)
    now = datetime.now(UTC)
    nonce, _ = issuer.issue(now)
    assert issuer.check(nonce, now)[0] == "ok"
    assert issuer.seen(nonce, now) is False
    assert issuer.seen(nonce, now) is True
    later = now + timedelta(seconds=120)
    for _ in range(PRUNE_FROM + 1):
        issuer.seen(issuer.issue(later)[0], later)
    assert nonce not in issuer._spent  # expired: dropped at the first pruning


def test_pruning_a_table_of_unexpired_nonces_is_not_repeated_each_time() -> None:
    issuer = NonceIssuer(os.urandom(32), ttl=600)
    now = datetime.now(UTC)
    for _ in range(PRUNE_FROM + 1):
        issuer.seen(issuer.issue(now)[0], now)
    tables = [issuer._spent]  # each table the pruning built (held: no id reused)
    for _ in range(2000):
        issuer.seen(issuer.issue(now)[0], now)
        if issuer._spent is not tables[-1]:
            tables.append(issuer._spent)
    assert len(tables) <= 2, f"the table was rebuilt {len(tables) - 1} times in 2,000 spends"
