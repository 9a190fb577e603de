"""The aggregator's SPM hooks: the reading thread's ``reread`` and the round path's
``refresh``, with a fake SPM that stages what real timing cannot (each test says which
review found what)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from .fedkit import Background
from .refresh_kit import secure_aggregator

pytestmark = pytest.mark.timeout(60)


def test_an_older_list_does_not_replace_a_newer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile review: the thread's read and the round path's could end out
    of order, and the list read first, answered last, replaced the newer one: a site
    revoked in between was accepted again until the next read (10 s)."""
    agg, _, spm = secure_aggregator(tmp_path, monkeypatch)
    slow, answered = threading.Event(), threading.Event()

    def revocations(n: int) -> list[dict[str, Any]]:
        if n == 1:  # the thread's read: the SPM answers it last, without the revocation
            slow.set()
            answered.wait(10)
            return []
        return [{"kind": "certificate", "subject": "abc", "serial": "ABC"}]

    spm.revocations_of = revocations
    assert agg.reread is not None
    thread = Background(agg.reread, "reading thread")
    thread.start()
    assert slow.wait(10)
    agg.refresh()  # the round path's read, begun after it: the revocation is in
    assert agg.server.peers.revoked == {"abc"}
    answered.set()
    thread.outcome()
    assert agg.server.peers.revoked == {"abc"}, "an older list replaced the newer one"
