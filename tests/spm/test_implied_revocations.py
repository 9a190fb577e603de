"""The revocation list's implied entries do not rest on rows the database's host can
delete. Found by a hostile review: the list named a dropped build's certificate only
while the build's session row was stored, and session rows have no floor, so a host
that deleted the row took a certificate the board's new version no longer accepts off
the list, for the rest of its lifetime (a day by default), and nothing noticed. The SPM
now keeps an index of the certificates it issued, with what each was attested as, from
its verified audit log. Real processes: `secfl spm serve` on SQLite, restarted."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from secfl.spm._issued import IssuedIndex, issued_change, issued_detail
from secfl.spm._revoker import ANSWER_SECONDS
from secfl.spm.client import SpmClient
from tests.spm.harness import Board, policy_document, spm_with_policy, sql

pytestmark = pytest.mark.timeout(120)


def _serial(enrolled: Any) -> str:
    cert = x509.load_pem_x509_certificate(enrolled.certificate.encode())
    return format(cert.serial_number, "x")


def _implied(client: SpmClient) -> dict[str, str]:
    return {str(r["serial"]): str(r["reason"]) for r in client.revocations("fed") if r["serial"]}


def test_a_dropped_builds_certificate_stays_listed_when_its_session_row_is_deleted(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    data = tmp_path / "data"
    with spm_with_policy(data, sim, board, "aggregator", "collaborator") as (proc, enrolled):
        dropped, kept = _serial(enrolled["collaborator"]), _serial(enrolled["aggregator"])
        with SpmClient(proc.url, pin=proc.pin) as client:
            first = client.policy("fed")["digest"]
            doc = yaml.safe_load(
                policy_document("fed", board, sim[1], version=2, predecessor=first)
            )
            (collaborator,) = [s for s in doc["services"] if s["name"] == "collaborator"]
            collaborator["measurements"] = {"simulated": ["ab" * 48]}  # another build
            v2 = yaml.safe_dump(doc, sort_keys=False)
            client.submit_policy(v2, board.sign(v2, "alice", "bob"))
            implied = _implied(client)
        why = "implied: what 'collaborator' was attested as is no longer accepted by version 2"
        assert implied[dropped].startswith(why) and kept not in implied

        sql(data, "DELETE FROM sessions")  # the database's host
        time.sleep(ANSWER_SECONDS + 0.2)  # the list answered before is not served again
        with SpmClient(proc.url, pin=proc.pin) as client:
            implied = _implied(client)
        assert implied.get(dropped, "").startswith(why), implied
        assert kept not in implied

        proc.stop()  # the index is rebuilt from the verified audit log at start
        proc.start()
        with SpmClient(proc.url, pin=proc.pin) as client:
            implied = _implied(client)
        assert implied.get(dropped, "").startswith(why), implied
        assert kept not in implied


def test_the_index_keeps_live_certificates_and_drops_expired_ones_as_it_grows() -> None:
    """Memory stays bounded by the live certificates: a policy that issues day-long
    certificates to every attestation for a year keeps only a day's."""
    now = datetime.now(UTC)
    index = IssuedIndex()
    for n in range(3000):  # past the first prune: expired ones go
        gone = now - timedelta(seconds=1) if n % 3 else now + timedelta(hours=1)
        detail = issued_detail("site", format(n + 1, "x"), gone, 1, {"kind": "simulated"})
        change = issued_change("fed", detail)
        assert change is not None
        index.add(change[1], change[2])
    live = index.live("fed", now)
    assert len(live) == 1000 and all(i.not_after > now for i in live)
    assert all(i.identity is live[0].identity for i in live)  # one copy of what repeats
    assert sum(len(k) for k in index.by_policy.values()) < 2048


@pytest.mark.parametrize(
    "change",
    [
        {"serial": 5},
        {"policy_version": True},
        {"identity": "{}"},
        {"not_after": "tomorrow"},
        {"not_after": "2026-12-06T10:00:00"},  # no time zone
    ],
)
def test_an_entry_the_index_cannot_read_adds_nothing(change: dict[str, Any]) -> None:
    """Entries written before they carried the identity, or any other shape, leave the
    certificate to its session row."""
    detail = issued_detail("site", "ab", datetime.now(UTC), 1, {"kind": "simulated"})
    assert issued_change("fed", detail) is not None
    assert issued_change("fed", {**detail, **change}) is None
    assert issued_change(None, detail) is None
