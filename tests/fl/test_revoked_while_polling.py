"""A site revoked while its long poll (``Next``) waits for the next round is not sent
the global model when the round opens. Found by a hostile review: revocation was
checked when the call began, and a poll that had begun before the aggregator read the
revocation was answered with the next round's model (a poll lasts up to POLL_SECONDS;
``SubmitNext`` polls once its update is taken in).

In-process: real gRPC over mutual TLS; the revocation list is set as the aggregator's
reading thread sets it."""

from __future__ import annotations

import pytest

from secfl.errors import TransportError
from secfl.fl import _messages as msg

from .fedkit import Federation, RawClient, digits_federation, revocable, serving, site, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return digits_federation(tmp_path_factory)


def test_a_poll_of_a_site_revoked_meanwhile_gets_no_model(fed: Federation) -> None:
    settings = {"rounds": 1, "min_clients": 2, "quorum": 1, "max_attempts": 1,
                "round_timeout": 10, "heartbeat": 0.5, "dead_after": 3.0,
                "join_timeout": 30, "seed": 3}  # fmt: skip
    agg = fed.aggregator(settings, services=[site(0), site(1)])
    revoked, serial = revocable(fed, agg.port, site(0))
    honest = RawClient(fed, agg.port, site(1))
    with serving(agg, revoked, honest, joined=[revoked]):  # waits for a second collaborator
        poll = revoked.poll_held(agg)  # let in (its call checked), it waits for the round
        agg.server.peers.revoked = {serial}  # the reading thread read the revocation
        honest.join()  # the round opens while the poll waits
        try:
            header, _ = msg.decode(poll.outcome())
        except TransportError as exc:
            assert "revoked" in str(exc), exc
        else:
            assert header["kind"] != msg.TRAIN, "a revoked site was sent the global model"
        wait_for(lambda: agg.rounds.attempt is not None, "the round")
        attempt = agg.rounds.attempt
        assert attempt is not None
        assert site(0) not in attempt.fetched
        assert "revoked" in attempt.refused.get(site(0), ""), attempt.refused  # owes none
