"""A board-signed revocation or readmission may carry ``expires``: not applied after.

Found by a review: signed statements never expired. A revocation or readmission that
some members signed and the board then abandoned (or that one member held back) could
be submitted months later, when no one meant it any more, and was applied. A statement
now may name when it expires (``secfl policy sign-revocation --expires``; what
`secfl revocations` prints for a clone-audit request expires a week after it), and the
SPM refuses it after that time; a statement without ``expires`` is applied as before.
Real processes: `secfl spm serve`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from secfl.errors import SpmError
from secfl.policy._signatures import sign_statement
from secfl.spm._service import REVOCATION_DOMAIN, revocation_digest, revocation_doc
from secfl.spm.client import SpmClient, SpmRefused
from tests.spm.harness import Board, spm_with_policy

pytestmark = pytest.mark.timeout(120)


def _signed(board: Board, statement: dict[str, str]) -> list[object]:
    digest = revocation_digest(revocation_doc("fed", statement))
    return [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m) for m in ("alice", "bob")]


def _at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_statement_past_its_expiry_is_not_applied(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    with spm_with_policy(tmp_path / "data", sim, board, "aggregator") as (proc, enrolled):
        token = enrolled["aggregator"].session_token
        with SpmClient(proc.url, pin=proc.pin) as client:
            abandoned = {"kind": "service", "subject": "aggregator", "reason": "suspended",
                         "expires": _at(-timedelta(days=30))}  # fmt: skip
            with pytest.raises(SpmRefused, match="^revocation: this statement expired at"):
                client.revoke("fed", abandoned, _signed(board, abandoned))
            assert client.revocations("fed") == []
            assert client.increment("fed", "round", token) == 1  # not revoked
            meant = {**abandoned, "expires": _at(timedelta(days=7))}
            client.revoke("fed", meant, _signed(board, meant))
            assert client.revocations("fed")[0]["subject"] == "aggregator"
            readmit = {"kind": "service", "subject": "aggregator", "reason": "cleared",
                       "action": "readmit", "lifts": revocation_digest(
                           revocation_doc("fed", meant)),
                       "expires": _at(-timedelta(seconds=1))}  # fmt: skip
            with pytest.raises(SpmRefused, match="^revocation: this statement expired at"):
                client.revoke("fed", readmit, _signed(board, readmit))
            assert client.revocations("fed")[0]["subject"] == "aggregator"
            # kept: the same readmission without an expiry is still good
            del readmit["expires"]
            client.revoke("fed", readmit, _signed(board, readmit))


@pytest.mark.parametrize(
    "expires",
    [
        "2026-12-14",
        "2026-12-14T10:00Z",
        "2026-02-30T00:00:00Z",
        "2026-12-14T10:00:00+00:00",
        "\u0662\u0660\u0662\u0666-12-14T23:59:59Z",  # Arabic-Indic digits: another spelling
    ],
)
def test_expires_has_one_spelling(expires: str) -> None:
    with pytest.raises(SpmError, match="'expires' is a UTC time written YYYY-MM-DDTHH:MM:SSZ"):
        revocation_doc("fed", {"kind": "service", "subject": "a", "expires": expires})


def test_expires_is_signed() -> None:
    base = {"kind": "service", "subject": "a"}
    plain = revocation_digest(revocation_doc("fed", base))
    bounded = revocation_doc("fed", {**base, "expires": "2026-12-14T23:59:59Z"})
    assert bounded["expires"] == "2026-12-14T23:59:59Z" and revocation_digest(bounded) != plain
