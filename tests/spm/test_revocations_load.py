"""The revocation list costs the SPM the same whatever the sessions it has stored.
Found by a hostile review: every request read every stored session of the policy, one
query and one MAC check each, expired ones too; sessions now last as long as their
certificates (a day by default), and the aggregator and every collaborator ask every
10 s. Counted in SQL statements against a real SQLite store, not timed."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from sqlalchemy import event

from secfl.policy._canonical import digest
from secfl.policy._document import load_policy
from secfl.policy._signatures import REVOCATION_DOMAIN, sign_statement
from secfl.spm._revocation import revocation_digest, revocation_doc
from secfl.spm._server import open_spm
from secfl.spm._service import Spm
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, COLLABORATOR_MR, Board, make_sim, policy_document
from tests.spm.test_service import LocalClient, submit


@pytest.fixture
def spm(tmp_path: Path) -> Iterator[tuple[Spm, Board, str]]:
    root = make_sim(tmp_path / "sim")
    spm = open_spm(tmp_path / "data", platform="simulated", sim_dir=tmp_path / "sim")
    board = Board.create()
    v1 = policy_document("fed", board, root)
    submit(spm, board, v1)
    try:
        yield spm, board, v1
    finally:
        spm.close()


def _statements(spm: Spm) -> list[str]:
    seen: list[str] = []
    event.listen(spm.store._engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: seen.append(statement))  # fmt: skip
    return seen


def test_the_list_reads_the_live_sessions_in_one_query(
    spm: tuple[Spm, Board, str], tmp_path: Path
) -> None:
    server, board, v1 = spm
    tee = simulated.SimulatedPlatform(tmp_path / "sim")
    old = enroll(LocalClient(server), tee, "fed", "aggregator", measurement=AGGREGATOR_MR)
    enroll(LocalClient(server), tee, "fed", "collaborator", measurement=COLLABORATOR_MR)
    with server.store.read() as tx:
        (identity,) = {
            s.identity
            for s in tx.sessions.live_of_policy("fed", datetime.now(UTC))
            if s.service == "collaborator"
        }
    now = datetime.now(UTC)
    with server.store.transaction() as tx:  # 300 more sessions, a third of them expired
        for i in range(300):
            tx.sessions.add(
                hashlib.sha256(secrets.token_bytes(32)).digest(), "fed", "collaborator", 1,
                now + (timedelta(days=1) if i % 3 else -timedelta(seconds=1)),
                serial=format(secrets.randbits(127), "x"), identity=identity,
            )  # fmt: skip
    # version 2 drops the aggregator's build: its certificate is implied
    doc = yaml.safe_load(v1)
    doc.update(version=2, predecessor=digest(load_policy(v1)))
    (agg,) = [s for s in doc["services"] if s["name"] == "aggregator"]
    agg["measurements"] = {"simulated": ["ab" * 48]}
    submit(server, board, yaml.safe_dump(doc))
    serial = format(x509.load_pem_x509_certificate(old.certificate.encode()).serial_number, "x")
    seen = _statements(server)
    listed = server.revocations("fed")
    kinds = [" ".join(s.split()[:4]) for s in seen]
    # before: one per stored session (302 and more); the head the list is numbered by
    # (and its MAC) are two of these
    assert len(seen) <= 14, kinds
    implied = [r for r in listed if r["reason"].startswith("implied:")]
    assert len(implied) == 1 and implied[0]["service"] == "aggregator"
    assert implied[0]["serial"] == serial
    seen.clear()
    assert server.revocations("fed") == listed  # asked again at once: the same answer
    assert seen == []  # without reading the store again


def test_a_list_read_before_a_revocation_is_not_kept_after_it(
    spm: tuple[Spm, Board, str], tmp_path: Path
) -> None:
    """Found by the third review: a request that read the store before a revocation
    committed, and stored its list after the revocation had cleared the cache, served
    the list without the revoked certificate for ANSWER_SECONDS after revoke returned."""
    server, board, _ = spm
    tee = simulated.SimulatedPlatform(tmp_path / "sim")
    agg = enroll(LocalClient(server), tee, "fed", "aggregator", measurement=AGGREGATOR_MR)
    serial = format(x509.load_pem_x509_certificate(agg.certificate.encode()).serial_number, "x")
    read, go_on = threading.Event(), threading.Event()
    real = type(server.revoker)._list

    def slow(self: Any, *args: Any) -> Any:
        out = real(self, *args)  # read from the store before the revocation
        read.set()
        go_on.wait(5)  # ... a slow request, still answering
        return out

    server.revoker._list = slow.__get__(server.revoker)  # type: ignore[method-assign]
    peer = threading.Thread(target=server.revocations, args=("fed",))
    peer.start()
    assert read.wait(5)
    server.revoker._list = real.__get__(server.revoker)  # type: ignore[method-assign]
    statement = {"kind": "certificate", "subject": serial, "reason": "key leaked"}
    digest = revocation_digest(revocation_doc("fed", statement))
    sigs = [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m).model_dump()
            for m in ("alice", "bob")]  # fmt: skip
    server.revoke("fed", statement, sigs)  # returns: the revocation is in force
    go_on.set()
    peer.join(5)
    assert serial in {r["serial"] for r in server.revocations("fed")}
