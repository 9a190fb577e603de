"""A board that names keys nobody holds: refused by a real `secfl spm serve`.

Found by a review: Ed25519 points of small order were accepted as board keys, and for
them OpenSSL verifies the signature (R = identity, S = 0) over any message; two
spellings of the identity point (y = 1, y = p + 1) passed as two members. A proposer
who slipped two such "members" into one version approved every later one, with no
private key: policies, revocations, readmissions and resets alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from secfl.spm.client import SpmClient, SpmRefused
from tests.spm.harness import Board, SpmProcess, policy_document

pytestmark = pytest.mark.timeout(120)

P25519 = 2**255 - 19


def _pem(raw: bytes) -> str:
    return (
        ed25519.Ed25519PublicKey.from_public_bytes(raw)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_a_version_naming_keys_nobody_holds_is_refused(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    honest = policy_document("fed", board, sim[1])
    doc = yaml.safe_load(honest)
    doc["board"]["members"] = [
        *doc["board"]["members"][:2],
        {"name": "dave", "public_key": _pem((1).to_bytes(32, "little"))},
        {"name": "erin", "public_key": _pem((P25519 + 1).to_bytes(32, "little"))},
    ]
    text = yaml.safe_dump(doc, sort_keys=False)
    proc = SpmProcess(tmp_path / "data", sim[0], None).start()
    try:
        with SpmClient(proc.url, pin=proc.pin) as client:
            # (secfl's own tools refuse to sign it: alice's and bob's signatures of the
            # honest version stand in; the keys are refused before any is checked)
            small = r"public_key: an Ed25519 point of small order"
            with pytest.raises(SpmRefused, match=small) as refused:
                client.submit_policy(text, board.sign(honest, "alice", "bob"))
            assert "\n" not in str(refused.value)
            with pytest.raises(SpmRefused, match="no policy named 'fed'"):
                client.policy("fed")
    finally:
        proc.stop()
