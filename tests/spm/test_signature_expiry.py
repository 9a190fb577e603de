"""A member's signature may say until when it counts; the SPM refuses it after.

Found by a review: signatures never expired. A policy version that some members signed
and the board then abandoned (never submitted, never superseded) could be submitted
with their signatures months later, by any member or whoever kept the files, while the
version it replaces was still current. A signature now may carry ``expires`` (signed
with it; `secfl policy sign` gives 30 days unless told otherwise) and the SPM refuses
an approval with one past it, for a policy version or a revocation. Real processes:
`secfl spm serve`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from secfl.errors import PolicyError
from secfl.policy._document import load_policy
from secfl.policy._signatures import (
    REVOCATION_DOMAIN,
    Signature,
    check_approval,
    sign_policy,
    sign_statement,
)
from secfl.spm._service import revocation_digest, revocation_doc
from secfl.spm.client import SpmClient, SpmRefused
from tests.spm.harness import Board, policy_document, spm_with_policy

pytestmark = pytest.mark.timeout(120)


def _at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_an_abandoned_version_is_not_approved_by_expired_signatures(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    with (
        spm_with_policy(tmp_path / "data", sim, board) as (proc, _enrolled),
        SpmClient(proc.url, pin=proc.pin) as client,
    ):
        digest = client.policy("fed")["digest"]
        document = policy_document("fed", board, sim[1], version=2, predecessor=digest)
        version = load_policy(document)
        old = _at(-timedelta(days=60))
        stale = [sign_policy(version, board.keys[m], m, old) for m in ("alice", "bob")]
        with pytest.raises(SpmRefused, match="^approval: the signature by 'alice' expired"):
            client.submit_policy(document, stale)
        assert client.policy("fed")["version"] == 1
        # one member's fresh signature does not carry another's expired one
        mixed = [sign_policy(version, board.keys["alice"], "alice", _at(timedelta(days=1))),
                 stale[1]]  # fmt: skip
        with pytest.raises(SpmRefused, match="^approval: the signature by 'bob' expired"):
            client.submit_policy(document, mixed)
        fresh = [mixed[0], sign_policy(version, board.keys["bob"], "bob", _at(timedelta(1)))]
        client.submit_policy(document, fresh)
        assert client.policy("fed")["version"] == 2
        # a revocation's signatures alike
        statement = {"kind": "service", "subject": "collaborator", "reason": "r"}
        rev = revocation_digest(revocation_doc("fed", statement))
        sigs = [sign_statement(REVOCATION_DOMAIN, rev, board.keys[m], m, old)
                for m in ("alice", "bob")]  # fmt: skip
        with pytest.raises(SpmRefused, match="^approval: the signature by 'alice' expired"):
            client.revoke("fed", statement, sigs)
        assert client.revocations("fed") == []


def test_expires_is_signed(board: Board) -> None:
    """A signature's expiry cannot be moved or removed: it is part of what is signed."""
    digest = "ab" * 32
    sig = sign_statement(
        REVOCATION_DOMAIN, digest, board.keys["alice"], "alice", _at(-timedelta(1))
    )
    for changed in ({"expires": _at(timedelta(days=365))}, {"expires": None}):
        moved = Signature.model_validate({**sig.model_dump(mode="json"), **changed})
        with pytest.raises(PolicyError, match="invalid signature by 'alice'"):
            check_approval(_one(board), digest, [moved], domain=REVOCATION_DOMAIN)
    # checked without a time (what was applied, shown again), it still counts
    assert check_approval(_one(board), digest, [sig], domain=REVOCATION_DOMAIN) == ["alice"]
    other = {**sig.model_dump(mode="json"), "expires": "\u0662\u0660\u0662\u0666-12-14T23:59:59Z"}
    with pytest.raises(ValueError, match="expires"):  # one spelling: ASCII digits
        Signature.model_validate(other)
    never = sign_statement(REVOCATION_DOMAIN, digest, board.keys["alice"], "alice")
    assert "expires" not in never.model_dump(mode="json")


def _one(board: Board) -> object:
    from secfl.policy._model import Board as Rule

    return Rule.model_validate({"members": board.members()[:1], "threshold": 1})
