"""A revocation list is as old as its request, not as its answer: a host between a
workload and the SPM can hold an answer back (each piece trickled within the socket's
timeout) and deliver it long after; stamped as read when it arrived, an old list,
without a revocation made meanwhile, counted as fresh for STALE_SECONDS more, and the
revoked peer was accepted again. Found by a hostile review of the stale-list fixes
(the collaborator's pin, :mod:`secfl.fl._pin`, always stamped the request)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from secfl.errors import StaleRevocations, TransportError
from secfl.fl import _peers
from secfl.fl._transport import Peer
from secfl.flower import _attested

from .refresh_kit import secure_aggregator

pytestmark = pytest.mark.timeout(60)

HELD = 0.6  # how long the host holds the answer back


def test_an_answer_held_back_is_as_old_as_its_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agg, _, spm = secure_aggregator(tmp_path, monkeypatch)
    monkeypatch.setattr(_peers, "STALE_SECONDS", HELD / 2)

    def held(n: int) -> list[dict[str, Any]]:  # the list as the SPM sent it, late
        time.sleep(HELD)
        return []

    spm.revocations_of = held
    assert agg.reread is not None
    agg.reread()
    peers = agg.server.peers
    with pytest.raises(StaleRevocations):  # not a fresh list: no peer accepted on it
        peers.recheck(Peer(peers.policy, "site-1", "abc"))


def test_a_flower_workload_stamps_the_request_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_attested, "STALE_SECONDS", HELD / 2)

    def revoked() -> set[str]:
        time.sleep(HELD)
        return set()

    peers = SimpleNamespace(revoked=set(), check=lambda pem: "accepted")
    tls: Any = SimpleNamespace(ident=SimpleNamespace(revoked=revoked), peers=peers, checked=0.0)
    _attested.AttestedTls.read_revocations(tls)
    assert tls.checked, "the read succeeded"
    with pytest.raises(StaleRevocations):
        _attested.AttestedTls.check(tls, b"x")


def test_a_revocation_in_a_stale_list_still_refuses() -> None:
    """A site revoked in the list while its update came in, the list then gone stale:
    its update is refused for the round, not taken back to be sent again (a stale list
    refuses nothing, but this one already named the site)."""
    policy = _peers.PeerPolicy("p", {"site-1"}, revoked={"abc"})
    policy.read_at = time.monotonic() - _peers.STALE_SECONDS - 1
    with pytest.raises(TransportError, match="is revoked") as caught:
        policy.recheck(Peer("p", "site-1", "abc"))
    assert not isinstance(caught.value, StaleRevocations)
    with pytest.raises(StaleRevocations):  # a site it does not name: not refused
        policy.recheck(Peer("p", "site-1", "def"))
