"""A counter increment the SPM refuses because the aggregator's renewal (in the thread
that re-reads the revocation list) ended its session is sent again with the new token,
even when the refusal comes back before the renewal's answer did. Found by a hostile
review: the refusal was compared with the token held at that moment, still the old one
while the enrollment's answer was on its way, so the round's commit failed and the run
stopped; the token is now read once a renewal under way is over."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from secfl.errors import SpmRefused
from secfl.fl._ledger import SpmLedger
from secfl.fl._wire import Credentials
from secfl.fl._workload_identity import WorkloadIdentity

pytestmark = pytest.mark.timeout(30)


def _ident() -> WorkloadIdentity:
    return WorkloadIdentity(
        policy="demo", service="aggregator", spm_url="https://127.0.0.1:1", spm_pin="00",
        policy_digest="d", platform="simulated", sim_dir=Path("."), measurement=None,
        creds=Credentials(b"", b"", b""), session_token="old",
    )  # fmt: skip


class _Spm:
    """Ends the old session as a renewal's commit would, answering the renewal late."""

    def __init__(self, ident: WorkloadIdentity) -> None:
        self.ident, self.sent = ident, []  # type: list[str]

    def _renewal(self, holding: threading.Event) -> None:
        with self.ident._lock:  # renew(): the enrollment's answer still on its way
            holding.set()
            time.sleep(0.5)
            self.ident.session_token = "new"

    def increment(self, policy: str, counter: str, token: str, *_: Any, **__: Any) -> int:
        self.sent.append(token)
        if token == "old":
            holding = threading.Event()
            threading.Thread(target=self._renewal, args=(holding,)).start()
            holding.wait(5)
            raise SpmRefused("session: ended (renewed)", 401)
        return 8


def test_a_refusal_met_while_renewing_is_sent_again_with_the_new_token() -> None:
    ident = _ident()
    spm = _Spm(ident)
    ledger = SpmLedger(lambda: spm, "demo", "rounds", ident.token)
    assert ledger.increment(7) == 8
    assert spm.sent == ["old", "new"]


def test_with_session_too() -> None:
    ident = _ident()
    spm = _Spm(ident)
    assert ident.with_session(lambda token: spm.increment("demo", "rounds", token)) == 8
    assert spm.sent == ["old", "new"]
