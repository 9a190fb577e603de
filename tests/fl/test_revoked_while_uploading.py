"""An update whose sender the board revoked while it was coming in is refused when it
arrives, not counted. Found by a hostile review: revocation was checked when a call
began, and the update's acceptance (the streamed fold's end, or a whole update's
fold) did not look at the list again, so a site revoked mid-upload (or one that
trickled its update in for the whole round) still had it aggregated, though the
aggregator had read the revocation meanwhile.

In-process: real gRPC over mutual TLS; the revocation list is set as the aggregator's
reading thread sets it."""

from __future__ import annotations

import pytest

from secfl.errors import TransportError
from secfl.fl._tensors import to_bytes

from .fedkit import (
    UPDATE_PATH_NAMES,
    UPDATE_PATHS,
    Federation,
    RawClient,
    digits_federation,
    revocable,
    serving,
    site,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return digits_federation(tmp_path_factory)


@pytest.mark.parametrize("rule", UPDATE_PATHS, ids=UPDATE_PATH_NAMES)
def test_an_update_whose_sender_was_revoked_while_it_came_in_is_refused(
    fed: Federation, rule: dict[str, str]
) -> None:
    settings = {"rounds": 1, "min_clients": 2, "quorum": 1, "max_attempts": 1,
                "round_timeout": 30, "heartbeat": 0.5, "dead_after": 5.0,
                "join_timeout": 30, "seed": 3, **rule}  # fmt: skip
    agg = fed.aggregator(settings, services=[site(0), site(1)])
    revoked, serial = revocable(fed, agg.port, site(0))
    honest = RawClient(fed, agg.port, site(1))
    with serving(agg, revoked, honest) as run:
        header, params, _ = revoked.train()
        h2, p2, _ = honest.train()
        # the upload is let in (its call checked) and its header read, half of it sent
        upload, release = revoked.submit_held(agg, header, params)
        # the aggregator's thread reads the board's revocation of site-1 meanwhile
        agg.server.peers.revoked = {serial}
        release.set()
        with pytest.raises(TransportError, match="revoked"):
            upload.outcome()
        assert honest.submit(h2["round"], h2["attempt"], to_bytes(p2))["kind"] == "accepted"
        run.outcome()
        entry = agg.history[-1]
        assert entry["participants"] == [site(1)], entry
        assert entry["refused"] == [site(0)], entry
