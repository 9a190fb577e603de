"""A revocation list that went stale (the SPM unreachable for STALE_SECONDS) while an
update came in, or while a long poll waited, refuses nothing for the round: the call
is answered UNAVAILABLE (or the poll "wait"), as a call that begins then is, and the
site sends its update again, or polls again, once the list is read. Found by a
hostile review of the checks made as an update is taken in: a stale list there
refused the update for the round (INVALID_ARGUMENT, the sender marked as done), so a
slow SPM at a round's end lost every update still coming in, and a poll answered
INVALID_ARGUMENT stopped its collaborator for good.

In-process: real gRPC over mutual TLS; the list's age is set as the reading thread
leaves it when its reads fail."""

from __future__ import annotations

import time

import pytest

from secfl.errors import TransportError
from secfl.fl import _messages as msg
from secfl.fl._peers import STALE_SECONDS
from secfl.fl._tensors import to_bytes
from secfl.fl._transport import Peer

from .fedkit import (
    UPDATE_PATH_NAMES,
    UPDATE_PATHS,
    Federation,
    RawClient,
    digits_federation,
    serving,
    site,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

SETTINGS = {"rounds": 1, "min_clients": 2, "quorum": 2, "max_attempts": 1,
            "round_timeout": 30, "heartbeat": 0.5, "dead_after": 10.0,
            "join_timeout": 30, "seed": 3, "strategy": "fedavg"}  # fmt: skip


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return digits_federation(tmp_path_factory)


def _stale(agg: object) -> None:
    agg.server.peers.read_at = time.monotonic() - STALE_SECONDS - 1  # type: ignore[attr-defined]


def _fresh(agg: object) -> None:
    agg.server.peers.read_at = time.monotonic()  # type: ignore[attr-defined]


@pytest.mark.parametrize("rule", UPDATE_PATHS, ids=UPDATE_PATH_NAMES)
def test_an_update_that_met_a_stale_list_is_sent_again_not_refused(
    fed: Federation, rule: dict[str, str]
) -> None:
    agg = fed.aggregator({**SETTINGS, **rule}, services=[site(0), site(1)])
    slow, other = RawClient(fed, agg.port, site(0)), RawClient(fed, agg.port, site(1))
    with serving(agg, slow, other) as run:
        header, params, _ = slow.train()
        h2, p2, _ = other.train()
        upload, release = slow.submit_held(agg, header, params)
        _stale(agg)  # the SPM did not answer for STALE_SECONDS meanwhile
        release.set()
        with pytest.raises(TransportError, match="UNAVAILABLE"):
            upload.outcome()
        attempt = agg.rounds.attempt
        assert attempt is not None
        assert site(0) not in attempt.refused, attempt.refused  # it may send it again
        _fresh(agg)  # the SPM answers again
        resent = slow.submit(header["round"], header["attempt"], to_bytes(params))
        assert resent["kind"] == "accepted", resent
        assert other.submit(h2["round"], h2["attempt"], to_bytes(p2))["kind"] == "accepted"
        run.outcome()
        entry = agg.history[-1]
        assert entry["participants"] == [site(0), site(1)], entry


def test_a_poll_that_met_a_stale_list_is_told_to_wait_not_refused(fed: Federation) -> None:
    agg = fed.aggregator(SETTINGS, services=[site(0), site(1)])
    polling = RawClient(fed, agg.port, site(0))
    with serving(agg, polling):  # waits for a second collaborator
        poll = polling.poll_held(agg)
        _stale(agg)  # the SPM did not answer for STALE_SECONDS meanwhile
        # the second site joined before (its call checked while the list was fresh)
        agg.rounds.join(
            msg.encode({"kind": "join", "samples": 10}), Peer(agg.server.peers.policy, site(1), "")
        )
        header, _ = msg.decode(poll.outcome())  # not a refusal that stops the collaborator
        assert header["kind"] == msg.WAIT, header
        wait_for(lambda: agg.rounds.attempt is not None, "the round")
        attempt = agg.rounds.attempt
        assert attempt is not None
        assert site(0) not in attempt.refused, attempt.refused  # still owes its update
        assert site(0) not in attempt.fetched
        _fresh(agg)  # the SPM answers again: the next poll is sent the model
        header, _ = polling.next()
        assert header["kind"] == msg.TRAIN, header
