"""Refusals anyone can cause, without a genuine quote or a board signature, are written
to the audit log within a budget; the rest are counted. Found by a hostile review: one
client on loopback wrote 2,000 ``attestation.refused`` entries in 5 s into a log that
is kept for ever and replayed at every start (a day of it: gigabytes, minutes of
start-up). Against a real `secfl spm serve`; the budget's windows with a fake clock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from secfl.spm._refusals import LANES, PER_WINDOW, RefusalBudget
from secfl.spm.client import SpmClient, SpmRefused
from tests.spm.harness import COLLABORATOR_MR, Board, SpmProcess, spm_with_policy
from tests.spm.test_e2e import _attest_raw

pytestmark = pytest.mark.timeout(120)


def _suppressed_after_restart(data: Path, sim: tuple[Path, bytes], after: int) -> list[Any]:
    """The SPM on ``data`` started again (it stopped with SIGTERM): the details of the
    ``audit.suppressed`` entries after entry ``after`` (what it left out is told)."""
    again = SpmProcess(data, sim[0], None).start()
    try:
        with SpmClient(again.url, pin=again.pin) as client:
            later = client.audit(after, 10000)["entries"]
    finally:
        again.stop()
    return [e["detail"] for e in later if e["event"] == "audit.suppressed"]


def test_a_flood_of_junk_attestations_is_counted_not_logged_but_genuine_ones_are(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    with (
        spm_with_policy(tmp_path / "data", sim, board) as (proc, _),
        SpmClient(proc.url, pin=proc.pin) as client,
    ):
        before = client.audit(0, 10000)["entries"][-1]["seq"]
        for _ in range(PER_WINDOW + 20):  # a nonce this SPM never issued
            with pytest.raises(SpmRefused, match="^nonce: the nonce is unknown"):
                _attest_raw(client, "fed", "aggregator", sim, nonce=os.urandom(32))
        # a genuine quote of the wrong code is still audited, budget spent or not
        with pytest.raises(SpmRefused, match="^measurement: "):
            _attest_raw(client, "fed", "aggregator", sim, measurement=COLLABORATOR_MR)
        entries = client.audit(before, 10000)["entries"]
    refused = [e for e in entries if e["event"] == "attestation.refused"]
    reasons = [e["detail"]["reason"] for e in refused]
    assert len(refused) == PER_WINDOW + 1
    assert all(r.startswith("nonce: the nonce is unknown") for r in reasons[:PER_WINDOW])
    assert reasons[-1].startswith("measurement: ")
    told = _suppressed_after_restart(tmp_path / "data", sim, entries[-1]["seq"])
    assert told == [
        {"event": "attestation.refused", "count": 20, "reason": "unverified refusals over budget"}
    ]


def test_one_quote_replayed_with_fresh_nonces_is_counted_not_logged(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a hostile review: evidence that merely verified counted as genuine, so
    one quote (of other code, or of the policy's code bound to another nonce), sent
    again with a fresh nonce each time, wrote one permanent entry per request. Such
    refusals now have a budget of their own: a junk flood does not hide them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, x25519

    from secfl.spm._report_data import spki_sha256, workload_report_data
    from secfl.spm.enroll import make_csr
    from tests.spm.harness import AGGREGATOR_MR
    from tests.spm.test_e2e import platform

    hpke = x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, "aggregator")
    bound = workload_report_data(os.urandom(32), hpke, spki_sha256(key.public_key()))
    other_code = platform(sim).get_evidence(bound, measurement=COLLABORATOR_MR)
    elsewhere = platform(sim).get_evidence(bound, measurement=AGGREGATOR_MR)
    with (
        spm_with_policy(tmp_path / "data", sim, board) as (proc, _),
        SpmClient(proc.url, pin=proc.pin) as client,
    ):
        before = client.audit(0, 10000)["entries"][-1]["seq"]
        for evidence, said in [(other_code, "^measurement: "), (elsewhere, "^report_data: ")]:
            for _ in range(PER_WINDOW // 2 + 5):
                with pytest.raises(SpmRefused, match=said):
                    client.attest("fed", "aggregator", nonce=client.nonce(), evidence=evidence,
                                  hpke_public_key=hpke, csr_pem=csr)  # fmt: skip
        entries = client.audit(before, 10000)["entries"]
    refused = [e for e in entries if e["event"] == "attestation.refused"]
    assert len(refused) == PER_WINDOW
    told = _suppressed_after_restart(tmp_path / "data", sim, entries[-1]["seq"])
    assert told == [{"event": "attestation.refused", "count": 10, "reason": LANES["evidence"]}]


class _Log:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str | None, dict[str, Any]]] = []

    def append(self, event: str, policy: str | None, detail: dict[str, Any]) -> None:
        self.entries.append((event, policy, detail))


class _Tx:
    def __init__(self) -> None:
        self.audit = _Log()


def test_the_next_entry_let_in_says_how_many_were_left_out() -> None:
    now = [0.0]
    budget = RefusalBudget(per_window=2, window=60.0, clock=lambda: now[0])
    tx = _Tx()
    written = [budget.append(tx, "policy.refused", None, {"i": i}) for i in range(5)]  # type: ignore[arg-type]
    assert written == [True, True, False, False, False]
    now[0] = 61.0  # the next window
    assert budget.append(tx, "policy.refused", None, {"i": 5})  # type: ignore[arg-type]
    assert budget.append(tx, "attestation.refused", "p", {"i": 6})  # type: ignore[arg-type]
    assert [(e, d) for e, _, d in tx.audit.entries] == [
        ("policy.refused", {"i": 0}),
        ("policy.refused", {"i": 1}),
        ("audit.suppressed",
         {"event": "policy.refused", "count": 3, "reason": "unverified refusals over budget"}),
        ("policy.refused", {"i": 5}),
        ("attestation.refused", {"i": 6}),  # each kind has a budget of its own
    ]  # fmt: skip


def test_flush_tells_what_was_left_out_once() -> None:
    budget = RefusalBudget(per_window=1, window=60.0, clock=lambda: 0.0)
    tx = _Tx()
    for i in range(4):
        budget.append(tx, "revocation.refused", "p", {"i": i})  # type: ignore[arg-type]
    assert budget.flush(tx) == 1  # type: ignore[arg-type]
    assert budget.flush(tx) == 0  # type: ignore[arg-type]
    assert tx.audit.entries[-1][2] == {
        "event": "revocation.refused",
        "count": 3,
        "reason": "unverified refusals over budget",
    }


def test_a_refusal_keeps_no_more_than_a_line_of_the_senders_text(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a hostile review: a refusal repeated the sender's text whole (an unknown
    JSON key of the evidence, a certificate's name), so each of the budget's entries
    could hold 64 KiB: 2-3 GB of log a day. A reason is now one line of at most 1000
    characters, control characters escaped."""
    from secfl.spm._server import open_spm
    from tests.spm.harness import policy_document

    spm = open_spm(tmp_path / "data", platform="simulated", sim_dir=sim[0])
    try:
        document = policy_document("fed", board, sim[1])
        spm.submit_policy(document, [s.model_dump() for s in board.sign(document, "alice", "bob")])
        evidence = ('{"outblob": "AA", "' + "K\\n" * 30000 + '": 1}').encode()
        nonce, _ = spm.new_nonce()
        with pytest.raises(Exception, match="^evidence: "):
            spm.attest("fed", "aggregator", nonce=nonce, evidence=evidence,
                       hpke_public_key=bytes(32), csr_pem=b"")  # fmt: skip
        with spm.store.read() as tx:
            (entry,) = [e for e in tx.audit.since(0, 1000) if e.event == "attestation.refused"]
        reason = entry.detail["reason"]
        assert len(reason) < 6100 and "\n" not in reason  # 1000 characters, escaped
    finally:
        spm.close()
