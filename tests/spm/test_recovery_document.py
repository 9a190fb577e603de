"""Offline recovery checks the shares document against the board, and the audit log.

Found by a review: recovery took the shares document's threshold, required members and
check value as the database gave them, and the database lies outside the TEE. A host
that wrote its own document (a key of its own, split with threshold 1, sealed to the
members' public recovery keys, its own check value) had one member recover the host's
key as the policy's, alone. Now recovery takes the policy version the board signed and
the document's digest from the SPM's audit log (``policy.data-key``), and refuses a
document that is not that board's split, or not the one the SPM logged. A real SPM, on
a real SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secfl.errors import SpmError
from secfl.policy._document import load_policy
from secfl.spm._masterkey import new_policy_key, open_secret
from secfl.spm._recovery import open_share, recover_policy_key, seal_shares, shares_sha256
from secfl.spm._server import open_spm
from secfl.spm._service import Spm
from tests.spm.harness import Board, make_sim, policy_document


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Board, str, str, str, bytes]:
    """A policy accepted by a real SPM: (board, its document, the shares document, the
    digest its audit log names, a secret's ciphertext)."""
    root = make_sim(tmp_path / "sim")
    spm: Spm = open_spm(tmp_path / "data", platform="simulated", sim_dir=tmp_path / "sim")
    board = Board.create()
    document = policy_document("p", board, root)
    spm.submit_policy(document, [s.model_dump() for s in board.sign(document, "alice", "bob")])
    with spm.store.transaction() as tx:
        shares_json = tx.data_keys.shares("p")
        record = tx.secrets.get("p", "model-key")
        logged = [e for e in tx.audit.since(0) if e.event == "policy.data-key"]
    spm.store.close()
    assert shares_json and record is not None and len(logged) == 1
    return board, document, shares_json, logged[0].detail["shares_sha256"], record.ciphertext


def test_the_board_recovers_with_the_logged_document(
    stored: tuple[Board, str, str, str, bytes],
) -> None:
    board, document, shares_json, audited, ciphertext = stored
    assert audited == shares_sha256(shares_json)
    policy = load_policy(document)
    opened = [open_share(shares_json, m, board.recovery[m]) for m in ("alice", "carol")]
    key = recover_policy_key(opened, shares_json, policy, audited=audited)
    assert json.loads(open_secret(key, "p", "model-key", ciphertext))
    with pytest.raises(SpmError, match="give the policy version the board signed"):
        recover_policy_key(opened, shares_json)


def test_a_document_the_host_made_is_refused(
    stored: tuple[Board, str, str, str, bytes],
) -> None:
    board, document, _shares_json, audited, _ciphertext = stored
    policy = load_policy(document)
    public = {m: board.recovery_public[m] for m in board.keys}
    # the host's own key, split so that alice alone recovers it
    lowered = seal_shares(new_policy_key(), "p", public, 1)
    alice = [open_share(lowered, "alice", board.recovery["alice"])]
    with pytest.raises(SpmError, match="threshold is 1, the board's .* is 2"):
        recover_policy_key(alice, lowered, policy, audited="")
    with pytest.raises(SpmError, match="not the one the SPM's audit log names"):
        recover_policy_key(alice, lowered, policy, audited=audited)
    # the board's threshold kept, still the host's key: the log tells
    forged = seal_shares(new_policy_key(), "p", public, 2)
    pair = [open_share(forged, m, board.recovery[m]) for m in ("alice", "bob")]
    with pytest.raises(SpmError, match="not the one the SPM's audit log names"):
        recover_policy_key(pair, forged, policy, audited=audited)
    # a member left out, or a share sealed to another key than the member's
    two = seal_shares(new_policy_key(), "p", {m: public[m] for m in ("alice", "bob")}, 2)
    with pytest.raises(SpmError, match="members are not the board members with a recovery"):
        recover_policy_key(pair, two, policy, audited="")
    other = {**public, "carol": board.recovery_public["alice"]}
    swapped = seal_shares(new_policy_key(), "p", other, 2)
    with pytest.raises(SpmError, match="share of 'carol' is not sealed to their recovery key"):
        recover_policy_key(pair, swapped, policy, audited="")
    # required members dropped from a board that has them
    required = policy.model_copy(
        update={"board": policy.board.model_copy(update={"required": ["bob"]})}
    )
    with pytest.raises(SpmError, match="required members are not the board's"):
        recover_policy_key(pair, forged, required, audited="")
