"""The aggregator's SPM hooks: the reading thread's ``reread`` and the round path's
``refresh``, with a fake SPM that stages what real timing cannot (each test says which
review found what)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from secfl.errors import FlError, SecflError

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


def test_a_renewal_under_a_new_version_says_so_at_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile review: the board approved a new version while the reading
    thread renewed the aggregator's certificate (after its check of the version, before
    the SPM's answer); the attestation, under the new version, ended the session it
    replaced, and its answer was refused (another version's digest) with the old token
    kept. The round's commit then met the ended session, and the run stopped with the
    SPM's 'session ended ... use the new session's token', not the new version's line."""
    from secfl.errors import SpmRefused
    from secfl.spm import enroll as enrollment
    from secfl.tee import _platforms

    agg, ident, spm = secure_aggregator(tmp_path, monkeypatch)
    ended: set[str] = set()

    def enroll(client: Any, tee: Any, policy: str, service: str, **kw: Any) -> Any:
        spm.digest = "f" * 64  # the board's version 2, approved meanwhile
        ended.add(kw["replaces"])  # in the commit that opens the new session
        return SimpleNamespace(policy_digest=spm.digest, policy_version=2,
                               session_token="token-2")  # fmt: skip

    def increment(policy: str, counter: str, token: str, *_: Any, **__: Any) -> int:
        if token in ended:
            raise SpmRefused(
                "session: this session ended when its workload attested again; use the new "
                "session's token", 401,
            )  # fmt: skip
        raise AssertionError(f"sent with {token}")

    monkeypatch.setattr(enrollment, "enroll", enroll)
    monkeypatch.setattr(_platforms, "platform_by_name", lambda *a, **kw: None)
    monkeypatch.setattr(ident, "due", lambda now=None: True)
    spm.increment = increment  # type: ignore[attr-defined]
    assert agg.reread is not None
    with pytest.raises(FlError, match="policy"):
        agg.reread()  # the thread logs it and reads on
    assert ended == {"token-1"}
    with pytest.raises(SecflError) as stop:
        agg.commit.ledger.increment(0, request="r")
    assert "new version" in str(stop.value), str(stop.value)


def test_a_failed_read_does_not_skip_a_renewal_that_is_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile review: the reading thread renewed only after a read that
    succeeded, so under a policy with 60 s certificates (renewed 40 s in, read every
    10 s) two reads that failed while the SPM took attestations let the certificate
    expire: every collaborator then failed the TLS handshake until the next round
    attempt renewed it."""
    from secfl.errors import SpmError

    agg, ident, spm = secure_aggregator(tmp_path, monkeypatch)
    renewals: list[bool] = []

    def revocations(n: int) -> list[dict[str, Any]]:
        raise SpmError("spm: the SPM's list of revocations is malformed")

    def renew(*, force: bool = False) -> bool:
        renewals.append(force)
        return False

    spm.revocations_of = revocations
    monkeypatch.setattr(ident, "due", lambda now=None: True)
    monkeypatch.setattr(ident, "renew", renew)
    assert agg.reread is not None
    with pytest.raises(SpmError, match="revocations"):  # the thread logs it
        agg.reread()
    assert renewals == [False], "the renewal due was skipped"


def test_a_failed_read_is_the_error_said_when_the_renewal_fails_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a review: with the renewal in a ``finally``, a renewal failing after a
    failed read raised its own error in the read's place, so the thread's log named the
    renewal and never the read that makes the list stale (and every site refused)."""
    from secfl.errors import SpmError

    agg, ident, spm = secure_aggregator(tmp_path, monkeypatch)

    def revocations(n: int) -> list[dict[str, Any]]:
        raise SpmError("spm: the SPM's list of revocations is malformed")

    def renew(*, force: bool = False) -> bool:
        raise SpmError("enroll: the SPM refused the attestation")

    spm.revocations_of = revocations
    monkeypatch.setattr(ident, "due", lambda now=None: True)
    monkeypatch.setattr(ident, "renew", renew)
    assert agg.reread is not None
    with caplog.at_level("WARNING", logger="secfl.fl"), pytest.raises(SpmError, match="revoc"):
        agg.reread()
    assert "refused the attestation" in caplog.text  # the renewal's failure is said too


def test_a_workload_superseded_by_a_new_version_does_not_attest_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile review of the fix above: the identity remembered that a new
    version had ended its session, yet its next renewal (still due: its certificate was
    not replaced) attested again, and so on at every refresh (a Flower workload's, every
    10 s, logs the failure and goes on): each attestation under the new version had the
    SPM issue a certificate and a session nobody took, and log them with the replaced
    session's end again, until the workload stopped."""
    from secfl.spm import enroll as enrollment
    from secfl.tee import _platforms

    _, ident, _ = secure_aggregator(tmp_path, monkeypatch)
    attested: list[str] = []

    def enroll(client: Any, tee: Any, policy: str, service: str, **kw: Any) -> Any:
        attested.append(kw["replaces"])
        return SimpleNamespace(policy_digest="f" * 64, policy_version=2,
                               session_token=f"token-{len(attested) + 1}")  # fmt: skip

    monkeypatch.setattr(enrollment, "enroll", enroll)
    monkeypatch.setattr(_platforms, "platform_by_name", lambda *a, **kw: None)
    monkeypatch.setattr(ident, "due", lambda now=None: True)
    for _ in range(3):  # the refreshes that follow
        with pytest.raises(FlError, match="new version"):
            ident.renew()
    assert attested == ["token-1"], "attested again under the version that replaced it"


def test_an_spm_that_does_not_answer_at_a_rounds_start_stops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a review: the round path's refresh raised whatever the SPM did, so an
    SPM restarting (or a host dropping its packets) for the second a round attempt began
    stopped a run of months, although the reading thread would have read the list again
    10 s later. An unanswered SPM is logged and the list read still tried; an SPM that
    refuses, or a new policy version, still stops the run."""
    from secfl.errors import SpmError, SpmRefused

    agg, _, spm = secure_aggregator(tmp_path, monkeypatch)
    answers: list[BaseException | None] = []

    def policy(name: str) -> dict[str, Any]:
        failure = answers.pop(0)
        if failure is not None:
            raise failure
        return {"digest": spm.digest}

    spm.policy = policy  # type: ignore[method-assign]
    for failure in (
        SpmError("spm: GET /policies/fed failed: [Errno 111] Connection refused"),
        SpmRefused("spm: HTTP 503 for /policies/fed", 503),
    ):
        answers.append(failure)
        reads = spm.reads
        with caplog.at_level("WARNING", logger="secfl.fl"):
            agg.refresh()
        assert spm.reads == reads + 1, "the list was not read"
        assert f"could not refresh from the SPM at a round's start ({failure})" in caplog.text
    spm.revocations_of = lambda n: (_ for _ in ()).throw(SpmError("spm: read timed out"))
    answers.append(None)
    agg.refresh()  # a read that fails: the list ages, and refuses peers once stale
    answers.append(SpmRefused("session: this session ended", 401))
    with pytest.raises(SpmRefused, match="session ended"):
        agg.refresh()
    spm.digest, answers[:] = "f" * 64, [None]
    with pytest.raises(FlError, match="new version"):
        agg.refresh()
