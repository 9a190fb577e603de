"""A revocation statement carries what its form can carry, or is refused.

Found by a review: the older form of a statement (a certificate ``serial``, no
``kind``) kept only ``serial``, ``service`` and ``reason``, and signatures are over
what is kept: a readmission written in that form (``action: readmit``, ``lifts``)
was signed, and applied, as a revocation of that certificate. Its member signed what
they took for a readmission and revoked. Now a field the form cannot carry is refused
(naming it), at the SPM and before anyone signs. Real processes: `secfl spm serve`."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from secfl.errors import SpmError
from secfl.policy._signatures import sign_statement
from secfl.spm._service import REVOCATION_DOMAIN, revocation_digest, revocation_doc
from secfl.spm.client import SpmClient, SpmRefused
from tests.spm.harness import Board, spm_with_policy

pytestmark = pytest.mark.timeout(120)


def _signed(board: Board, doc: dict[str, str]) -> list[object]:
    digest = revocation_digest(doc)
    return [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m) for m in ("alice", "bob")]


def test_a_readmission_in_the_older_form_revokes_nothing(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    with spm_with_policy(tmp_path / "data", sim, board, "aggregator") as (proc, enrolled):
        token = enrolled["aggregator"].session_token
        cert = x509.load_pem_x509_certificate(enrolled["aggregator"].certificate.encode())
        serial = format(cert.serial_number, "x")
        lifts = "ab" * 32
        readmit = {"serial": serial, "reason": "cleared", "action": "readmit", "lifts": lifts}
        # what the members signed: the digest of what the older form kept of it (before
        # this change, the revocation {"policy", "serial", "service", "reason"})
        kept = {"policy": "fed", "serial": serial, "service": "", "reason": "cleared"}
        with SpmClient(proc.url, pin=proc.pin) as client:
            assert client.increment("fed", "round", token) == 1
            with pytest.raises(SpmRefused, match="older form .* carries no 'action'"):
                client.revoke("fed", readmit, _signed(board, kept))
            # a field no form knows is refused too, not dropped from what is signed
            unknown = {"kind": "certificate", "subject": serial, "reason": "x", "until": "y"}
            with pytest.raises(SpmRefused, match="until"):
                client.revoke("fed", unknown, _signed(board, kept))
            assert client.increment("fed", "round", token) == 2  # not revoked
            assert client.revocations("fed") == []


@pytest.mark.parametrize(
    ("statement", "refused"),
    [
        ({"serial": "ab", "action": "readmit", "lifts": "cd" * 32}, "carries no 'action'"),
        ({"serial": "ab", "lifts": "cd" * 32}, "carries no 'lifts'"),
        ({"serial": "ab", "subject": "cd"}, "carries no 'subject'"),
        ({"serial": "ab", "action": "revoke"}, "carries no 'action'"),
        ({"kind": "service", "subject": "a", "serial": "ab"}, "'serial' goes with the older"),
        ({"kind": "service", "subject": "a", "note\n": "x"}, r"'note\\n' is not a field"),
    ],
)
def test_a_field_the_form_cannot_carry_is_refused_naming_it(
    statement: dict[str, str], refused: str
) -> None:
    with pytest.raises(SpmError, match=refused):
        revocation_doc("fed", statement)


def test_the_older_form_still_revokes_a_certificate() -> None:
    doc = revocation_doc("fed", {"serial": "AB", "service": "s", "reason": "r"})
    assert doc["kind"] == "certificate" and doc["subject"] == "ab"
    assert revocation_digest(doc) == revocation_digest(
        {"policy": "fed", "serial": "ab", "service": "s", "reason": "r"}
    )
