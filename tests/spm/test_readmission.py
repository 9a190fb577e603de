"""A readmission lifts a revocation, not what the revocation ended.

Found by a review: the board revokes a service, a build or a machine ("its sessions
end", and the SPM refuses their tokens saying "this session is over"); once it readmits
it, every session the revocation had stopped (a machine's, from while it was
compromised, too) moved counters again, and their certificates left the revocation
list, so peers took them again. Now the revocation ends those sessions for good, in
its own commit (``session.ended``, by certificate serial: the index of issued
certificates names them all), the revocation list keeps naming their certificates, and
the workload attests again; across a restart too. Real processes: `secfl spm serve`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from secfl.policy._signatures import sign_statement
from secfl.spm._masterkey import load_or_create_master_key
from secfl.spm._server import open_store
from secfl.spm._service import REVOCATION_DOMAIN, revocation_digest, revocation_doc
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, REFRESH_WAIT, Board, spm_with_policy

pytestmark = pytest.mark.timeout(120)

ENDED = "session: this session was ended by a revocation of the board"


def _signed(board: Board, statement: dict[str, str]) -> list[object]:
    digest = _digest(statement)
    return [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m) for m in ("alice", "bob")]


def _digest(statement: dict[str, str]) -> str:
    """A statement's digest: what members sign, and what a readmission of it names."""
    return revocation_digest(revocation_doc("fed", statement))


def test_a_readmission_does_not_bring_back_what_the_revocation_ended(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    with spm_with_policy(tmp_path / "data", sim, board, "aggregator") as (proc, enrolled):
        old = enrolled["aggregator"]
        serial = format(x509.load_pem_x509_certificate(old.certificate.encode()).serial_number, "x")
        with SpmClient(proc.url, pin=proc.pin) as client:
            assert client.increment("fed", "round", old.session_token) == 1
            revoked = {"kind": "service", "subject": "aggregator", "reason": "poisoning"}
            client.revoke("fed", revoked, _signed(board, revoked))
            time.sleep(REFRESH_WAIT)
            with pytest.raises(SpmRefused, match="^revoked: service 'aggregator'"):
                client.increment("fed", "round", old.session_token)
            readmit = {
                **revoked,
                "reason": "cleared",
                "action": "readmit",
                "lifts": _digest(revoked),
            }
            client.revoke("fed", readmit, _signed(board, readmit))
            time.sleep(REFRESH_WAIT)
            with pytest.raises(SpmRefused, match=f"^{ENDED}"):
                client.increment("fed", "round", old.session_token)
            listed = {r["subject"]: r for r in client.revocations("fed")}
            assert serial in listed  # peers keep refusing its certificate
            platform = simulated.SimulatedPlatform(sim[0])
            new = enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR)
            assert client.increment("fed", "round", new.session_token) == 2
        proc.stop()
        proc.start()  # rebuilt from the log
        with SpmClient(proc.url, pin=proc.pin) as client:
            with pytest.raises(SpmRefused, match=f"^{ENDED}"):
                client.increment("fed", "round", old.session_token)
            assert serial in {r["subject"] for r in client.revocations("fed")}
            assert client.increment("fed", "round", new.session_token) == 3


def _recorded_before_this_change(data: Path, statement: dict[str, str]) -> None:
    """Commit ``statement`` as an SPM before revocations ended sessions did: the revocation's
    row and its ``revocation.added`` entry, and no ``session.ended``."""
    doc = revocation_doc("fed", statement)
    store = open_store(data, load_or_create_master_key(data))
    try:
        with store.transaction() as tx:
            tx.revocations.add("fed", None, "", statement["reason"], datetime.now(UTC),
                               kind=statement["kind"], subject=statement["subject"])  # fmt: skip
            detail = {**doc, "approvers": ["alice", "bob"], "digest": revocation_digest(doc)}
            tx.audit.append("revocation.added", "fed", detail)
    finally:
        store.close()


def test_a_readmission_ends_what_a_revocation_from_before_stopped(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a review: the board revoked a service before the SPM ended sessions for
    good (the revocation is still in force when the SPM is updated, and its log has no
    ``session.ended`` for it); the readmission brought back every session that revocation
    had stopped. The readmission now ends them itself, in its own commit."""
    data = tmp_path / "data"
    with spm_with_policy(data, sim, board, "aggregator") as (proc, enrolled):
        old = enrolled["aggregator"]
        with SpmClient(proc.url, pin=proc.pin) as client:
            assert client.increment("fed", "round", old.session_token) == 1
        proc.stop()
        revoked = {"kind": "service", "subject": "aggregator", "reason": "poisoning"}
        _recorded_before_this_change(data, revoked)
        proc.start()
        with SpmClient(proc.url, pin=proc.pin) as client:
            with pytest.raises(SpmRefused, match="^revoked: service 'aggregator'"):
                client.increment("fed", "round", old.session_token)
            readmit = {
                **revoked,
                "reason": "cleared",
                "action": "readmit",
                "lifts": _digest(revoked),
            }
            client.revoke("fed", readmit, _signed(board, readmit))
            time.sleep(REFRESH_WAIT)
            with pytest.raises(SpmRefused, match=f"^{ENDED}"):
                client.increment("fed", "round", old.session_token)
            platform = simulated.SimulatedPlatform(sim[0])
            new = enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR)
            assert client.increment("fed", "round", new.session_token) == 2
        proc.stop()
        proc.start()  # rebuilt from the log
        with SpmClient(proc.url, pin=proc.pin) as client:
            with pytest.raises(SpmRefused, match=f"^{ENDED}"):
                client.increment("fed", "round", old.session_token)
            assert client.increment("fed", "round", new.session_token) == 3


def test_a_readmission_held_back_does_not_lift_a_later_revocation(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a review: the board revoked a service, and signed a readmission that one
    member held back; the board readmitted with another statement, then revoked the
    service again. The held statement, never applied, lifted that later revocation: the
    service attested again. A readmission now names the revocation it lifts."""
    with spm_with_policy(tmp_path / "data", sim, board) as (proc, _):
        with SpmClient(proc.url, pin=proc.pin) as client:
            first = {"kind": "service", "subject": "aggregator", "reason": "poisoning"}
            client.revoke("fed", first, _signed(board, first))
            held = {**first, "reason": "cleared", "action": "readmit", "lifts": _digest(first)}
            held_sigs = _signed(board, held)  # signed, and held back
            sent = {**held, "reason": "cleared, really"}
            client.revoke("fed", sent, _signed(board, sent))
            again = {**first, "reason": "poisoning again"}
            client.revoke("fed", again, _signed(board, again))
            in_force = f"the revocation of service aggregator in force is {_digest(again)[:16]}"
            with pytest.raises(SpmRefused, match=f"^revocation: .*{in_force}") as refused:
                client.revoke("fed", held, held_sigs)
            assert refused.value.status == 409
            # the board learns that a statement held back surfaced (a review of the fix)
            last = client.audit(0, 10000)["entries"][-1]
            assert last["event"] == "revocation.spent", last
            assert last["detail"]["digest"] == _digest(held)
            assert "another revocation than the one in force" in last["detail"]["reason_refused"]
            listed = {r["reason"]: r["digest"] for r in client.revocations("fed")}
            assert listed["poisoning again"] == _digest(again)  # what a readmission names
            platform = simulated.SimulatedPlatform(sim[0])
            with pytest.raises(SpmRefused, match="^revoked: service 'aggregator'"):
                enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR)
        proc.stop()
        proc.start()  # what is in force is rebuilt from the log
        with SpmClient(proc.url, pin=proc.pin) as client:
            with pytest.raises(SpmRefused, match="^revocation: this statement .* already applied"):
                client.revoke("fed", held, held_sigs)  # used up: it never will lift anything
            lifting = {**again, "reason": "cleared", "action": "readmit", "lifts": _digest(again)}
            client.revoke("fed", lifting, _signed(board, lifting))
            time.sleep(REFRESH_WAIT)
            enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR)


def test_a_readmission_sent_before_its_revocation_is_kept(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a review of the readmission fixes: the board signed a revocation and the
    readmission that ends it (a suspension), and whoever held the readmission (a member,
    the host relaying it, or a second SPM's client racing the first) sent it before the
    revocation: refused as lifting nothing, it was used up, so the board, having revoked,
    could not readmit without signing again. It names the revocation it lifts, so it can
    lift no other: it is refused and kept until that revocation is applied."""
    with (
        spm_with_policy(tmp_path / "data", sim, board) as (proc, _),
        SpmClient(proc.url, pin=proc.pin) as client,
    ):
        revoked = {"kind": "service", "subject": "aggregator", "reason": "maintenance"}
        readmit = {
            **revoked, "reason": "maintained", "action": "readmit", "lifts": _digest(revoked),
        }  # fmt: skip
        readmit_sigs = _signed(board, readmit)
        with pytest.raises(SpmRefused, match="^revocation: .* has not applied") as refused:
            client.revoke("fed", readmit, readmit_sigs)
        assert refused.value.status == 409
        client.revoke("fed", revoked, _signed(board, revoked))
        time.sleep(REFRESH_WAIT)
        platform = simulated.SimulatedPlatform(sim[0])
        with pytest.raises(SpmRefused, match="^revoked: service 'aggregator'"):
            enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR)
        client.revoke("fed", readmit, readmit_sigs)  # kept: it lifts what it names
        time.sleep(REFRESH_WAIT)
        enroll(client, platform, "fed", "aggregator", measurement=AGGREGATOR_MR)
        with pytest.raises(SpmRefused, match="^revocation: this statement .* already applied"):
            client.revoke("fed", readmit, readmit_sigs)
