"""Attacks on the SPM from a hostile review, each reproduced against a real `secfl spm
serve` process on SQLite and PostgreSQL: by a network attacker, by a workload's
operator, and by someone who can write the SPM's database (which lies outside its TEE)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import create_engine, text

from secfl._internal.canonical import canonical_sha256
from secfl.errors import CounterMoved, LaunchError, SpmError
from secfl.fl._commit import SpmLedger
from secfl.policy._document import load_policy
from secfl.policy._signatures import sign_statement
from secfl.spm import _sealing as sv
from secfl.spm._engine import normalise_url
from secfl.spm._recovery import open_share, recover_policy_key, shares_sha256
from secfl.spm._service import REVOCATION_DOMAIN, revocation_digest, revocation_doc
from secfl.spm._vault import VALUE_TTL
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import Enrollment, enroll
from secfl.tee import _simulated as simulated
from tests.spm.conftest import drop_pg_database, fresh_pg_database
from tests.spm.harness import (
    AGGREGATOR_MR,
    COLLABORATOR_MR,
    REFRESH_WAIT,
    Board,
    SpmProcess,
    policy_document,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.heavy(90)]

OTHER_MR = "b2" * 48
#: An attack on the SPM's rules, not on its storage: SQLite only (every attack through
#: the database, and every start that reads it back, runs on PostgreSQL too).
SERVICE_ONLY = pytest.mark.parametrize("spm", ["sqlite"], indirect=True)


#: An attack that neither restarts the SPM nor writes a row of another policy: it shares
#: one SPM per backend with the others like it (an SPM's start is most of such a test's
#: cost), under a policy name of its own (:func:`name`).
SHARED = pytest.mark.parametrize("spm", ["shared-sqlite"], indirect=True)
SHARED_BOTH = pytest.mark.parametrize("spm", ["shared-sqlite", "shared-postgresql"], indirect=True)
_POLICY_NUMBERS = itertools.count(1)


@contextmanager
def _serving(
    request: pytest.FixtureRequest, backend: str, data: Path, sim: tuple[Path, bytes]
) -> Iterator[SpmProcess]:
    """`secfl spm serve` on ``data`` with ``backend``'s database (a fresh PostgreSQL one)."""
    db, pg = None, None
    if backend == "postgresql":
        pg = request.getfixturevalue("pg_url")
        db, name = fresh_pg_database(pg)
    proc = SpmProcess(data, sim[0], db).start()
    try:
        yield proc
    finally:
        proc.stop()
        if pg is not None:
            drop_pg_database(pg, name)


@pytest.fixture(scope="module")
def shared_sqlite_spm(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sim: tuple[Path, bytes],
) -> Iterator[SpmProcess]:
    with _serving(request, "sqlite", tmp_path_factory.mktemp("shared") / "data", sim) as proc:
        yield proc


@pytest.fixture(scope="module")
def shared_postgresql_spm(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sim: tuple[Path, bytes],
) -> Iterator[SpmProcess]:
    with _serving(request, "postgresql", tmp_path_factory.mktemp("shared") / "data", sim) as proc:
        yield proc


@pytest.fixture(params=["sqlite", "postgresql"])
def spm(
    request: pytest.FixtureRequest, tmp_path: Path, sim: tuple[Path, bytes]
) -> Iterator[SpmProcess]:
    """An SPM of this test's own; with ``shared-sqlite`` or ``shared-postgresql``
    (:data:`SHARED`), the module's SPM on that backend, already running."""
    if request.param.startswith("shared-"):
        shared = request.getfixturevalue(request.param.replace("-", "_") + "_spm")
        assert shared.proc is not None and shared.proc.poll() is None, "a test stopped it"
        yield shared
        return
    with _serving(request, request.param, tmp_path / "data", sim) as proc:
        yield proc


@pytest.fixture
def name() -> str:
    """A policy name no other test of this module uses (they may share an SPM)."""
    return f"p{next(_POLICY_NUMBERS)}"


@pytest.fixture
def client(spm: SpmProcess) -> Iterator[SpmClient]:
    with SpmClient(spm.url, pin=spm.pin) as c:
        yield c


def platform(sim: tuple[Path, bytes]) -> simulated.SimulatedPlatform:
    return simulated.SimulatedPlatform(sim[0])


def submit(client: SpmClient, board: Board, document: str, *who: str) -> dict[str, Any]:
    return client.submit_policy(document, board.sign(document, *(who or ("alice", "bob"))))


def attest(client: SpmClient, sim: tuple[Path, bytes], policy: str, mr: str = AGGREGATOR_MR):
    return enroll(client, platform(sim), policy, "aggregator", measurement=mr)


def db(spm: SpmProcess, sql: str, **params: Any) -> list[Any]:
    """Run SQL straight against the SPM's database, as an attacker with write access."""
    url = normalise_url(spm.db or f"sqlite:///{spm.data / 'spm.db'}")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return list(result.fetchall()) if result.returns_rows else []
    finally:
        engine.dispose()


def restart_fails(spm: SpmProcess, *extra: str) -> str:
    """Stop the SPM and start it again (with ``extra`` options): it must refuse, in one
    line; return that line."""
    spm.stop()
    args = [
        sys.executable,
        "-m",
        "secfl.cli.main",
        "spm",
        "serve",
        "--data",
        str(spm.data),
        "--listen",
        "127.0.0.1:0",
        "--platform",
        "simulated",
        "--sim-dir",
        str(spm.sim_dir),
    ]
    if spm.db:
        args += ["--db", spm.db]
    args += extra
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def audit_verify_fails(spm: SpmProcess) -> str:
    spm.stop()
    args = [sys.executable, "-m", "secfl.cli.main", "audit", "verify", "--data", str(spm.data)]
    if spm.db:
        args += ["--db", spm.db]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr.strip()


def revoke(client: SpmClient, board: Board, policy: str, **statement: str) -> dict[str, Any]:
    digest = lifting(policy, **statement)
    sigs = [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m) for m in ("alice", "bob")]
    return client.revoke(policy, statement, sigs)


def lifting(policy: str, **revocation: str) -> str:
    """The digest of a revocation statement: what a readmission of it names (``lifts``)."""
    return revocation_digest(revocation_doc(policy, revocation))


# --- 1: a sealed key is bound to its owner's board -------------------------------------------


@SHARED
def test_registering_the_name_first_gains_nothing(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    real = yaml.safe_load(policy_document(name, board, sim[1]))
    binding = sv.board_binding(
        [m["public_key"] for m in real["board"]["members"]], real["board"]["threshold"]
    )
    sealed = sv.seal_imported(b"hospital-data-key", client.public_key(), name, "data", binding)
    # The attacker copies the sealed value into its own policy of that name, its own board.
    thief = Board.create()
    stolen = yaml.safe_load(policy_document(name, thief, sim[1]))
    stolen["secrets"].append({"name": "data", "kind": "imported", "sealed": sealed})
    stolen["services"][0]["inject"]["env"]["DATA_KEY"] = "$$SECFL::data:hex$$"
    text_ = yaml.safe_dump(stolen)
    refused = f"not sealed to this SPM for policy '{name}' under this board"
    with pytest.raises(SpmRefused, match=refused):
        client.submit_policy(text_, thief.sign(text_, "alice", "bob"))
    with pytest.raises(SpmRefused, match=f"no policy named '{name}'"):
        client.policy(name)
    # The owner's board registers it and its attested service gets the key.
    real["secrets"].append({"name": "data", "kind": "imported", "sealed": sealed})
    real["services"][0]["inject"]["env"]["DATA_KEY"] = "$$SECFL::data:hex$$"
    submit(client, board, yaml.safe_dump(real))
    assert attest(client, sim, name).render("data", "hex") == b"hospital-data-key".hex()


@SHARED
def test_a_later_version_naming_the_owners_board_gains_nothing(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    """Found by a review: the sealed value was opened for the board a version names, not
    the board that approved it. A squatter registered the name with its own board, then
    submitted version 2, signed by that board alone, naming the owner's board (public
    keys, public threshold) with the owner's sealed value injected into its workload."""
    from secfl.policy._canonical import digest as policy_digest
    from secfl.policy._document import load_policy

    real = yaml.safe_load(policy_document(name, board, sim[1]))
    binding = sv.board_binding(
        [m["public_key"] for m in real["board"]["members"]], real["board"]["threshold"]
    )
    sealed = sv.seal_imported(b"hospital-data-key", client.public_key(), name, "data", binding)
    thief = Board.create()
    first = policy_document(name, thief, sim[1])
    submit(client, thief, first)
    second = yaml.safe_load(
        policy_document(name, board, sim[1], version=2,
                        predecessor=policy_digest(load_policy(first)))
    )  # fmt: skip
    second["secrets"].append({"name": "data", "kind": "imported", "sealed": sealed})
    second["services"][0]["inject"]["env"]["DATA_KEY"] = "$$SECFL::data:hex$$"
    text_ = yaml.safe_dump(second)
    with pytest.raises(
        SpmRefused, match=f"not sealed to this SPM for policy '{name}' under this board"
    ):
        client.submit_policy(text_, thief.sign(text_, "alice", "bob"))
    assert client.policy(name)["version"] == 1


@SHARED
def test_members_who_drop_a_required_one_gain_nothing(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    """Found by a review: the binding covered the members' keys and the threshold, not
    who is required. Alice, whose approval every version needs, sealed her key for that
    board; bob and carol submitted the circulated draft without `required` first, with
    their two signatures alone, and their workload received her key."""
    real = yaml.safe_load(policy_document(name, board, sim[1]))
    real["board"]["required"] = ["alice"]
    keys = [m["public_key"] for m in real["board"]["members"]]
    alice = next(m["public_key"] for m in real["board"]["members"] if m["name"] == "alice")
    binding = sv.board_binding(keys, 2, [alice])
    assert binding != sv.board_binding(keys, 2)  # (and without required, as it always was)
    sealed = sv.seal_imported(b"hospital-data-key", client.public_key(), name, "data", binding)
    real["secrets"].append({"name": "data", "kind": "imported", "sealed": sealed})
    real["services"][0]["inject"]["env"]["DATA_KEY"] = "$$SECFL::data:hex$$"
    dropped = {**real, "board": {k: v for k, v in real["board"].items() if k != "required"}}
    text_ = yaml.safe_dump(dropped)
    with pytest.raises(
        SpmRefused, match=f"not sealed to this SPM for policy '{name}' under this board"
    ):
        client.submit_policy(text_, board.sign(text_, "bob", "carol"))
    text_ = yaml.safe_dump(real)
    submit(client, board, text_, "alice", "bob")
    assert attest(client, sim, name).render("data", "hex") == b"hospital-data-key".hex()


# --- 2: the database is untrusted storage ----------------------------------------------------


def test_an_unsigned_policy_written_to_the_database_is_refused(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    submit(client, board, policy_document("p", board, sim[1]))
    (row,) = db(spm, "SELECT * FROM policies WHERE name = 'p'")
    forged = row._mapping["document"].replace(AGGREGATOR_MR, OTHER_MR)
    db(spm, "INSERT INTO policies (name, version, digest, predecessor, document, signatures, "
            "created_at, mac) VALUES ('p', 2, :d, :pred, :doc, '[]', :at, NULL)",
       d="ab" * 32, pred=row._mapping["digest"], doc=forged,
       at=row._mapping["created_at"])  # fmt: skip
    time.sleep(REFRESH_WAIT)  # the SPM re-reads the current version after POLICY_REFRESH
    with pytest.raises(SpmRefused, match="^integrity: policy 'p' version 2 fails its MAC"):
        attest(client, sim, "p", OTHER_MR)
    assert "fails its MAC" in audit_verify_fails(spm)


def test_a_counter_rolled_back_in_the_database_is_refused(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    submit(client, board, policy_document("p", board, sim[1]))
    agg = attest(client, sim, "p")
    assert client.increment("p", "round", agg.session_token) == 1
    (old,) = db(spm, "SELECT value, mac FROM counters WHERE policy = 'p' AND name = 'round'")
    for want in (2, 3):
        assert client.increment("p", "round", agg.session_token) == want
    # Edited value: fails its MAC.
    db(spm, "UPDATE counters SET value = 0 WHERE policy = 'p' AND name = 'round'")
    with pytest.raises(SpmRefused, match="^integrity: counter 'round' of policy 'p' fails its MAC"):
        client.increment("p", "round", agg.session_token)
    # An older value with its own, valid MAC: a rollback.
    db(spm, "UPDATE counters SET value = :v, mac = :m WHERE policy = 'p' AND name = 'round'",
       v=old.value, m=old.mac)  # fmt: skip
    with pytest.raises(SpmRefused, match="^rollback: counter 'round' of 'p' is 1 in the database"):
        client.increment("p", "round", agg.session_token)
    with pytest.raises(SpmRefused, match="^rollback:"):
        client.counter("p", "round")
    # After a restart too: the floors come back from the audit log.
    assert restart_fails(spm).startswith("error: rollback: counter 'round' of 'p' is 1")


@SHARED_BOTH
def test_a_compare_and_increment_at_a_stale_value_burns_nothing(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    """Two aggregators of one policy: the one that lost the counter learns it from the
    increment itself, and the counter is not moved (no value burnt, nothing audited)."""
    submit(client, board, policy_document(name, board, sim[1]))
    first, second = attest(client, sim, name), attest(client, sim, name)
    assert client.increment(name, "round", first.session_token, expect=0) == 1
    assert client.increment(name, "round", second.session_token, expect=1) == 2
    entries = db(spm, "SELECT COUNT(*) AS n FROM audit")[0].n
    stale = f"^counter: 'round' of policy '{name}' is at 2, not 1: "
    with pytest.raises(SpmRefused, match=stale) as info:
        client.increment(name, "round", first.session_token, expect=1)
    assert info.value.status == 409
    assert client.counter(name, "round") == 2
    assert db(spm, "SELECT COUNT(*) AS n FROM audit")[0].n == entries
    # the ledger the aggregator uses turns it into CounterMoved with the value it saw
    ledger = SpmLedger(lambda: client, name, "round", lambda: first.session_token)
    with pytest.raises(CounterMoved) as moved:
        ledger.increment(expect=1)
    assert moved.value.seen == 2 and client.counter(name, "round") == 2
    assert ledger.increment(expect=2) == 3


@SHARED_BOTH
def test_a_forged_session_is_refused(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    submit(client, board, policy_document(name, board, sim[1]))
    agg = attest(client, sim, name)
    (row,) = db(spm, "SELECT * FROM sessions WHERE policy = :p", p=name)
    token = "forged-token-of-the-attacker"
    db(spm, "INSERT INTO sessions (token_sha256, policy, service, policy_version, expires_at, "
            "serial, identity, mac) VALUES (:t, :p, 'aggregator', 1, :e, '', :i, :m)",
       t=hashlib.sha256(token.encode()).digest(), p=name, e=row.expires_at, i=row.identity,
       m=row.mac)  # fmt: skip
    with pytest.raises(SpmRefused, match="^integrity: a session fails its MAC"):
        client.increment(name, "round", token)
    assert client.increment(name, "round", agg.session_token) == 1


def test_deleting_a_revocation_in_the_database_does_not_readmit(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    submit(client, board, policy_document("p", board, sim[1]))
    revoke(client, board, "p", kind="service", subject="aggregator", reason="poisoning")
    db(spm, "DELETE FROM revocations")
    with pytest.raises(SpmRefused, match="^revoked: service 'aggregator' is revoked"):
        attest(client, sim, "p")
    assert "revocation of service aggregator" in restart_fails(spm)


def test_deleting_the_audit_tail_and_restoring_an_old_head_is_detected(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    submit(client, board, policy_document("p", board, sim[1]))
    (head,) = db(spm, "SELECT seq, hash FROM audit_head")
    (mac,) = db(spm, "SELECT value FROM meta WHERE key = 'audit_head_mac'")
    agg = attest(client, sim, "p")
    client.increment("p", "round", agg.session_token)
    db(spm, "DELETE FROM audit WHERE seq > :s", s=head.seq)
    db(spm, "UPDATE audit_head SET seq = :s, hash = :h", s=head.seq, h=head.hash)
    db(spm, "UPDATE meta SET value = :v WHERE key = 'audit_head_mac'", v=mac.value)
    with pytest.raises(SpmRefused, match="^rollback: the database's audit log ends at entry"):
        client.increment("p", "round", agg.session_token)
    assert "rollback: the database's audit log ends at entry" in restart_fails(spm)


# --- 5 and 6: sessions follow the current policy and revocations -----------------------------


@SHARED
def test_a_session_loses_what_a_new_version_withdrew(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    v1 = policy_document(name, board, sim[1])
    first = submit(client, board, v1)
    agg = attest(client, sim, name)
    assert client.increment(name, "round", agg.session_token) == 1
    # Version 2 no longer accepts the code the aggregator was attested as.
    v2 = policy_document(name, board, sim[1], version=2, predecessor=first["digest"])
    v2 = v2.replace(AGGREGATOR_MR, OTHER_MR)
    submit(client, board, v2)
    time.sleep(REFRESH_WAIT)
    with pytest.raises(SpmRefused, match="no longer accepted by version 2") as exc:
        client.increment(name, "round", agg.session_token)
    assert exc.value.status == 401
    with pytest.raises(SpmRefused, match="no longer accepted by version 2"):
        client.report(name, "audit.excluded", {"round": 1, "excluded": []}, agg.session_token)
    # The new code attests and may count.
    new = attest(client, sim, name, OTHER_MR)
    assert client.increment(name, "round", new.session_token) == 2


@SHARED
def test_a_service_of_role_any_reports_no_aggregators_findings(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    """Found by a review: a service of role ``any`` (a Flower site, which runs no secfl
    aggregator and may log its own refusals) could post ``fl.audit.excluded``,
    ``fl.round`` or ``fl.model``: `secfl status` showed them as the aggregator's
    exclusions and rounds, and twenty pushed the real ones out. It may post
    ``flower.*`` events only, and commit no round."""
    doc = yaml.safe_load(policy_document(name, board, sim[1]))
    site = next(s for s in doc["services"] if s["name"] == "collaborator")
    site.update(role="any", counters=["site"])  # (never the round counter: only the aggregator's)
    doc["counters"].append({"name": "site"})
    submit(client, board, yaml.safe_dump(doc, sort_keys=False))
    token = enroll(client, platform(sim), name, "collaborator",
                   measurement=COLLABORATOR_MR).session_token  # fmt: skip
    for event in ("audit.excluded", "audit.revocation-requested", "scores"):
        with pytest.raises(SpmRefused, match=r"^report: service 'collaborator' \(role any\) "):
            client.report(name, event, {"round": 1, "excluded": ["site-2"]}, token)
    assert client.report(name, "flower.refusal", {"why": "a FAB not approved"}, token) > 0
    round = {
        "round": 1,
        "attempt": 1,
        "participants": 3,
        "dropped": 0,
        "excluded": 0,
        "duration_s": 0.25,
        "objective": {"metric": "loss", "mode": "min", "value": 0.5},
    }
    with pytest.raises(SpmRefused, match="^report: service 'collaborator' is not an aggregator"):
        client.increment(name, "site", token, round=round)  # fmt: skip
    assert client.increment(name, "site", token) == 1  # its counter it may move


@SHARED
def test_a_session_loses_a_counter_a_new_version_removed(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    first = submit(client, board, policy_document(name, board, sim[1]))
    agg = attest(client, sim, name)
    doc = yaml.safe_load(policy_document(name, board, sim[1], version=2,
                                         predecessor=first["digest"]))  # fmt: skip
    doc["services"][0]["counters"] = []
    submit(client, board, yaml.safe_dump(doc))
    time.sleep(REFRESH_WAIT)
    with pytest.raises(SpmRefused, match="^counter: service 'aggregator' may not increment"):
        client.increment(name, "round", agg.session_token)


def _serial(enrolled: Enrollment) -> str:
    cert = x509.load_pem_x509_certificate(enrolled.certificate.encode())
    return format(cert.serial_number, "x")


@SHARED
def test_revocation_ends_sessions_and_keeps_the_service_out(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    submit(client, board, policy_document(name, board, sim[1]))
    agg = attest(client, sim, name)
    client.increment(name, "round", agg.session_token)
    revoke(client, board, name, serial=_serial(agg), service="aggregator", reason="key leak")
    time.sleep(REFRESH_WAIT)
    with pytest.raises(SpmRefused, match=f"^revoked: certificate {_serial(agg)} is revoked"):
        client.increment(name, "round", agg.session_token)
    # A certificate revocation ends that certificate; the service may attest again...
    again = attest(client, sim, name)
    # ...unless the board revokes the service itself (the clone audit's request).
    revoke(client, board, name, kind="service", subject="aggregator", reason="poisoning")
    with pytest.raises(SpmRefused, match="^revoked: service 'aggregator' is revoked"):
        attest(client, sim, name)
    time.sleep(REFRESH_WAIT)
    with pytest.raises(SpmRefused, match="^revoked: service 'aggregator'"):
        client.increment(name, "round", again.session_token)
    listed = {(r["kind"], r["subject"]) for r in client.revocations(name)}
    assert ("service", "aggregator") in listed
    # The live certificate of the revoked service is listed too: peers refuse it now.
    assert ("certificate", _serial(again)) in listed
    # Readmitted by the board: it attests again.
    revoke(
        client,
        board,
        name,
        kind="service",
        subject="aggregator",
        action="readmit",
        lifts=lifting(name, kind="service", subject="aggregator", reason="poisoning"),
    )
    back = attest(client, sim, name)
    assert client.increment(name, "round", back.session_token) == 2


@SHARED
def test_a_revoked_measurement_or_platform_cannot_attest(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    doc = yaml.safe_load(policy_document(name, board, sim[1]))
    doc["platforms"]["require_platform_id"] = True  # the simulated platform names itself
    submit(client, board, yaml.safe_dump(doc, sort_keys=False))
    revoke(client, board, name, kind="measurement", subject=AGGREGATOR_MR, reason="bug")
    with pytest.raises(SpmRefused, match=f"^revoked: measurement {AGGREGATOR_MR}"):
        attest(client, sim, name)
    revoke(
        client,
        board,
        name,
        kind="measurement",
        subject=AGGREGATOR_MR,
        action="readmit",
        lifts=lifting(name, kind="measurement", subject=AGGREGATOR_MR, reason="bug"),
    )
    attest(client, sim, name)
    cert = x509.load_pem_x509_certificate((sim[0] / simulated.PLATFORM_CERT).read_bytes())
    chip = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    # the board finds the machine's ID in the audit log, where the attestation is
    accepted = [
        e for e in client.audit(0, 10000)["entries"] if e["event"] == "attestation.accepted"
    ]
    assert accepted[-1]["detail"]["platform"] == chip
    revoke(client, board, name, kind="platform", subject=chip, reason="stolen machine")
    with pytest.raises(SpmRefused, match="^revoked: platform"):
        attest(client, sim, name)


@SHARED
def test_a_platform_id_of_zeros_is_refused(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    """A masked (or VLEK-signed) SEV-SNP report's chip ID is zeros: revoking that
    "platform" revoked every masked machine at once. The SPM refuses it even when the
    board signed it (here sent past the client library's own check)."""
    submit(client, board, policy_document(name, board, sim[1]))
    with pytest.raises(SpmError, match="^revocation: a platform ID of zeros"):
        revocation_doc(name, {"kind": "platform", "subject": "00" * 64, "reason": "x"})
    doc = {"policy": name, "kind": "platform", "subject": "00" * 64, "service": "", "reason": "x"}
    digest = canonical_sha256(doc)
    sigs = [sign_statement(REVOCATION_DOMAIN, digest, board.keys[m], m) for m in ("alice", "bob")]
    statement = {k: v for k, v in doc.items() if k != "policy"}
    with pytest.raises(SpmRefused, match="^revocation: a platform ID of zeros"):
        client.revoke(name, statement, sigs)
    # nor a subject that could never match a machine's lowercase hex ID
    with pytest.raises(SpmError, match="^revocation: a platform subject is lowercase hex"):
        revocation_doc(name, {"kind": "platform", "subject": " " + "ab" * 16, "reason": "x"})
    for subject in ("0x" + "ab" * 16, "ab:" * 15 + "ab"):  # past the API's own pattern
        doc = {**doc, "subject": subject}
        sigs = [sign_statement(REVOCATION_DOMAIN, canonical_sha256(doc), board.keys[m], m)
                for m in ("alice", "bob")]  # fmt: skip
        statement = {k: v for k, v in doc.items() if k != "policy"}
        with pytest.raises(SpmRefused, match="^revocation: a platform subject is lowercase hex"):
            client.revoke(name, statement, sigs)


# --- 7: only the launcher that opened a volume records it ------------------------------------


def _kept_fresh_volume(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> tuple[Any, Any]:
    """Policy ``name`` with a data volume the SPM keeps fresh (counter ``data-release``)
    opened by the aggregator; the document and the aggregator's enrollment."""
    doc = yaml.safe_load(policy_document(name, board, sim[1]))
    doc["secrets"].append({"name": "data-key", "kind": "aes-256"})
    doc["counters"].append({"name": "data-release"})
    doc["volumes"] = [
        {"name": "data", "key": "data-key", "kind": "data", "counter": "data-release"}
    ]
    doc["services"][0]["volumes"] = ["data"]
    submit(client, board, yaml.safe_dump(doc))
    return doc, attest(client, sim, name)


@SHARED
def test_a_kept_fresh_volume_of_version_0_is_refused_saying_why(
    spm: SpmProcess,
    client: SpmClient,
    board: Board,
    sim: tuple[Path, bytes],
    tmp_path: Path,
    name: str,
) -> None:
    """Found by a review: `secfl shield encrypt --version 0` is accepted, and the
    launcher took the SPM's "nothing recorded yet" (version 0) for version 0 already
    recorded: the first release was refused as a rollback of itself. The SPM records
    versions from 1, so version 0 is refused as what it is, saying what to do."""
    from secfl.launcher._volumes import _check_fresh
    from secfl.shield import Volume, encrypt_files

    _, agg = _kept_fresh_volume(client, board, sim, name)
    key = base64.b64decode(agg.secrets["data-key"]["raw"])
    encrypt_files({"rows.csv": b"a,b\n"}, tmp_path / "v0.vol", key, version=0)
    refused = pytest.raises(LaunchError, match=r"^volume: 'data' is version 0, .*--version 1")
    with Volume.open(tmp_path / "v0.vol", key) as volume, refused:
        _check_fresh(client, name, "data", volume, agg, key)
    encrypt_files({"rows.csv": b"a,b\n"}, tmp_path / "v1.vol", key, version=1)
    with Volume.open(tmp_path / "v1.vol", key) as volume:
        _check_fresh(client, name, "data", volume, agg, key)  # the first release: recorded
    assert client.volume_state(name, "data")["version"] == 1


@SHARED
def test_a_session_token_alone_cannot_record_a_volume_version(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    doc, agg = _kept_fresh_volume(client, board, sim, name)
    tag = "ab" * 32
    with pytest.raises(SpmRefused, match="^volume: the record of 'data' version 46116"):
        client.record_volume(name, "data", version=2**62, tag=tag, token=agg.session_token,
                             volume_key=b"\0" * 32)  # fmt: skip
    assert client.volume_state(name, "data")["version"] == 0
    key = base64.b64decode(agg.secrets["data-key"]["raw"])
    done = client.record_volume(name, "data", version=3, tag=tag, token=agg.session_token,
                                volume_key=key)  # fmt: skip
    assert done["version"] == 3
    # a session of a replaced version records nothing (hostile review: it moved the
    # counter of a volume the new version may no longer give that service)
    v2 = yaml.safe_dump({**doc, "version": 2, "predecessor": client.policy(name)["digest"]})
    client.submit_policy(v2, board.sign(v2, "alice", "bob"))
    with pytest.raises(SpmRefused, match=f"^policy: version 2 of '{name}' replaced this session's"):
        client.record_volume(name, "data", version=4, tag="cd" * 32, token=agg.session_token,
                             volume_key=key)  # fmt: skip
    assert client.volume_state(name, "data")["version"] == 3


@SHARED_BOTH
def test_deleted_secret_rows_are_a_rollback_not_new_keys(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    """Found by a hostile review: with the identity CA's and the model key's rows deleted
    by the host, attestation answered 500, and the board's next version quietly made a
    new CA and a new model key (every certificate issued stopped chaining, and whatever
    was sealed under the old key was lost), with nothing in the audit log."""
    from secfl.spm._vault import VALUE_TTL

    first = submit(client, board, policy_document(name, board, sim[1]))
    attest(client, sim, name)
    db(
        spm,
        "DELETE FROM secrets WHERE policy = :policy AND name IN ('fl-ca', 'model-key')",
        policy=name,
    )
    time.sleep(VALUE_TTL + 0.2)  # the vault's cache of opened values
    missing = (
        rf"^rollback: secret '(fl-ca|model-key)' of policy '{name}' is missing from the database"
    )
    with pytest.raises(SpmRefused, match=missing) as refused:
        attest(client, sim, name)
    assert refused.value.status == 400
    v2 = policy_document(name, board, sim[1], version=2, predecessor=first["digest"])
    with pytest.raises(SpmRefused, match=missing):
        submit(client, board, v2)
    assert client.policy(name)["version"] == 1
    assert (
        db(spm, "SELECT name FROM secrets WHERE policy = :policy AND name = 'fl-ca'", policy=name)
        == []
    )


# --- 9 and 10: recovery keeps the board's threshold; a bad HPKE key is refused and audited ---


@SHARED_BOTH
def test_a_new_board_gets_new_shares_and_old_shares_open_nothing(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], spm: SpmProcess, name: str
) -> None:
    first = submit(client, board, policy_document(name, board, sim[1]))
    (old,) = db(spm, "SELECT shares FROM policy_keys WHERE policy = :policy", policy=name)
    new_board = Board.create()
    doc = yaml.safe_load(policy_document(name, new_board, sim[1], version=2,
                                         predecessor=first["digest"]))  # fmt: skip
    text_ = yaml.safe_dump(doc)
    client.submit_policy(text_, board.sign(text_, "alice", "bob"))  # the old board approves
    (new,) = db(spm, "SELECT shares FROM policy_keys WHERE policy = :policy", policy=name)
    (secret,) = db(
        spm,
        "SELECT ciphertext FROM secrets WHERE policy = :policy AND name = 'model-key'",
        policy=name,
    )
    # each checked against the board that split it and the digest the log names
    old_policy, new_policy = load_policy(policy_document(name, board, sim[1])), load_policy(text_)
    logged = [e["detail"]["shares_sha256"] for e in client.audit()["entries"]
              if e["event"] == "policy.data-key" and e["policy"] == name]  # fmt: skip
    assert logged == [shares_sha256(old.shares), shares_sha256(new.shares)]
    old_key = recover_policy_key(
        [open_share(old.shares, m, board.recovery[m]) for m in ("alice", "bob")],
        old.shares, old_policy, audited=logged[0],
    )  # fmt: skip
    new_key = recover_policy_key(
        [open_share(new.shares, m, new_board.recovery[m]) for m in ("alice", "carol")],
        new.shares, new_policy, audited=logged[1],
    )  # fmt: skip
    assert old_key != new_key
    from secfl.spm._masterkey import open_secret

    assert open_secret(new_key, name, "model-key", bytes(secret.ciphertext))
    with pytest.raises(Exception, match="secrets:"):
        open_secret(old_key, name, "model-key", bytes(secret.ciphertext))
    with pytest.raises(Exception, match="recovery:"):
        open_share(new.shares, "alice", board.recovery["alice"])


@SHARED
def test_recovery_never_needs_fewer_members_than_the_board(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    doc = yaml.safe_load(policy_document(name, board, sim[1]))
    for member in doc["board"]["members"][1:]:
        member.pop("recovery_key")
    text_ = yaml.safe_dump(doc)
    with pytest.raises(SpmRefused, match="recovery_key, fewer than the threshold") as exc:
        client.submit_policy(text_, [])
    assert exc.value.status == 400


@SHARED
def test_an_all_zero_hpke_key_is_refused_and_the_nonce_spent(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from secfl.spm._report_data import spki_sha256, workload_report_data
    from secfl.spm.enroll import make_csr

    submit(client, board, policy_document(name, board, sim[1]))
    hpke = b"\0" * 32
    key = ec.generate_private_key(ec.SECP256R1())
    nonce = client.nonce()
    evidence = platform(sim).get_evidence(
        workload_report_data(nonce, hpke, spki_sha256(key.public_key())),
        measurement=AGGREGATOR_MR,
    )
    args = {"nonce": nonce, "evidence": evidence, "hpke_public_key": hpke,
            "csr_pem": make_csr(key, "aggregator")}  # fmt: skip
    with pytest.raises(SpmRefused, match="^hpke_public_key:") as exc:
        client.attest(name, "aggregator", **args)
    assert exc.value.status == 400
    with pytest.raises(SpmRefused, match="^nonce: the nonce is used"):
        client.attest(name, "aggregator", **args)
    refusals = [e for e in client.audit(0, 10000)["entries"] if e["event"] == "attestation.refused"]
    assert any("hpke_public_key" in e["detail"]["reason"] for e in refusals)


@SHARED
def test_old_board_signatures_cannot_be_replayed(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    """A readmission signed once cannot lift a later revocation of the same service."""
    submit(client, board, policy_document(name, board, sim[1]))
    revoke(client, board, name, kind="service", subject="aggregator", reason="poisoning")
    first = lifting(name, kind="service", subject="aggregator", reason="poisoning")
    readmit = {"kind": "service", "subject": "aggregator", "action": "readmit", "lifts": first}
    revoke(client, board, name, **readmit)
    revoke(client, board, name, kind="service", subject="aggregator", reason="poisoning again")
    with pytest.raises(SpmRefused, match="^revocation: this statement .* was already applied"):
        revoke(client, board, name, **readmit)
    with pytest.raises(SpmRefused, match="^revoked: service 'aggregator'"):
        attest(client, sim, name)


# --- the hostile review's follow-ups ----------------------------------------------------------


def test_the_spm_never_signs_a_rewritten_audit_log(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    """The chain is unkeyed: a database writer can rehash a cut log. The SPM must not
    sign such a head for `audit verify --spm`."""
    from secfl.spm._audit import AuditEntry
    from secfl.spm._audit_verify import verify_remote

    submit(client, board, policy_document("p", board, sim[1]))
    attest(client, sim, "p")
    rows = db(spm, "SELECT * FROM audit ORDER BY seq")
    kept = [r for r in rows if not r.event.startswith(("attestation.", "certificate.", "secrets."))]
    db(spm, "DELETE FROM audit")
    prev = "0" * 64
    for seq, r in enumerate(kept, 1):
        entry = AuditEntry(seq, r.at, r.event, r.policy, json.loads(r.detail),
                           prev, "")  # fmt: skip
        digest = entry.computed_hash()
        db(spm, "INSERT INTO audit (seq, at, event, policy, detail, prev_hash, hash) "
                "VALUES (:s, :a, :e, :p, :d, :ph, :h)",
           s=seq, a=r.at, e=r.event, p=r.policy, d=r.detail, ph=prev, h=digest)  # fmt: skip
        prev = digest
    db(spm, "UPDATE audit_head SET seq = :s, hash = :h", s=len(kept), h=prev)
    with pytest.raises(SpmRefused, match="^integrity:"):
        verify_remote(spm.url, spm.pin)


@SHARED_BOTH
def test_a_secret_restored_from_before_its_rotation_is_not_released(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    first = submit(client, board, policy_document(name, board, sim[1]))
    (old,) = db(spm, "SELECT * FROM secrets WHERE policy = :policy AND name = 'seed'", policy=name)
    doc = yaml.safe_load(policy_document(name, board, sim[1], version=2,
                                         predecessor=first["digest"]))  # fmt: skip
    next(s for s in doc["secrets"] if s["name"] == "seed")["size"] = 32
    submit(client, board, yaml.safe_dump(doc))
    db(spm, "UPDATE secrets SET definition_digest = :d, ciphertext = :c, created_at = :t, "
            "mac = :m WHERE policy = :p AND name = 'seed'",
       d=old.definition_digest, c=old.ciphertext, t=old.created_at, m=old.mac, p=name)  # fmt: skip
    time.sleep(REFRESH_WAIT)
    with pytest.raises(SpmRefused, match="^(rollback|release): .*secret 'seed'"):
        attest(client, sim, name)


def test_a_data_key_restored_from_before_a_board_change_is_refused(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    first = submit(client, board, policy_document("p", board, sim[1]))
    (old,) = db(spm, "SELECT * FROM policy_keys WHERE policy = 'p'")
    new_board = Board.create()
    doc = policy_document("p", new_board, sim[1], version=2, predecessor=first["digest"])
    client.submit_policy(doc, board.sign(doc, "alice", "bob"))
    db(spm, "UPDATE policy_keys SET wrapped = :w, shares = :s, mac = :m WHERE policy = 'p'",
       w=old.wrapped, s=old.shares, m=old.mac)  # fmt: skip
    with pytest.raises(SpmRefused, match="^(rollback|release): .*data key of policy 'p'"):
        attest(client, sim, "p")
    assert "data key of policy 'p'" in restart_fails(spm)


@SHARED_BOTH
def test_garbage_in_the_database_is_one_line_not_a_500(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    submit(client, board, policy_document(name, board, sim[1]))
    agg = attest(client, sim, name)
    # SQLite stores anything (an infinite float); PostgreSQL a bigint at least.
    huge = "9223372036854775807" if spm.db else "9e999"
    db(spm, f"UPDATE counters SET value = {huge} WHERE policy = :p AND name = 'round'", p=name)  # noqa: S608
    with pytest.raises(SpmRefused, match="^integrity: counter 'round'") as exc:
        client.counter(name, "round")
    assert exc.value.status < 500
    with pytest.raises(SpmRefused, match="^integrity:"):
        client.increment(name, "round", agg.session_token)


def test_rows_ahead_of_an_emptied_log_are_refused_at_start(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    """Found by a hostile review: with the data folder's anchor deleted and the audit log
    emptied (head 0, no head MAC), the SPM started with no floors and took every row
    with a valid MAC as it was: rows from different times (the current policy, a counter
    row saved earlier, the board's revocation deleted) let the revoked aggregator
    attest again, get its secrets, and move the rolled-back counter. A row ahead of the
    log it replays is now a rollback."""
    submit(client, board, policy_document("p", board, sim[1]))
    agg = attest(client, sim, "p")
    for _ in range(3):
        client.increment("p", "round", agg.session_token)
    saved = db(spm, "SELECT value, mac FROM counters WHERE policy = 'p' AND name = 'round'")[0]
    for _ in range(5):
        client.increment("p", "round", agg.session_token)
    revoke(client, board, "p", kind="service", subject="aggregator", reason="poisoning")
    spm.stop()
    (spm.data / "audit.anchor").unlink()
    db(spm, "DELETE FROM audit")
    db(spm, "UPDATE audit_head SET seq = 0, hash = :h", h="0" * 64)
    db(spm, "DELETE FROM meta WHERE key = 'audit_head_mac'")
    db(spm, "DELETE FROM revocations")
    db(spm, "UPDATE counters SET value = :v, mac = :m WHERE policy = 'p' AND name = 'round'",
       v=saved[0], m=saved[1])  # fmt: skip
    assert "audit anchor" in restart_fails(spm)  # (next test) ... and with --new-anchor:
    line = restart_fails(spm, "--new-anchor")
    assert line.startswith("error: rollback: the database holds "), line
    assert "but its audit log records 0: the log was cut back" in line, line


def test_a_missing_anchor_over_an_spms_state_is_refused_or_recorded(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    """Found by the review of the fix above: with the anchor deleted, a database whose
    log was cut back to a head saved earlier (its MAC with it), rows and all, was
    accepted: the state before the board's revocation, whole. A missing anchor over a
    database that holds an SPM's state is now refused; ``--new-anchor`` (a second SPM
    on a shared database) starts, and the start is logged saying so."""
    submit(client, board, policy_document("p", board, sim[1]))
    spm.stop()
    (spm.data / "audit.anchor").unlink()
    line = restart_fails(spm)
    assert line.startswith("error: rollback: this SPM's audit anchor ("), line
    assert "is missing, but the database holds an SPM's state" in line
    assert "`secfl spm serve --new-anchor` once" in line
    assert not (spm.data / "audit.anchor").exists()  # nothing made
    show = [sys.executable, "-m", "secfl.cli.main", "audit", "show", "--data", str(spm.data),
            *(["--db", spm.db] if spm.db else [])]  # fmt: skip
    shown = subprocess.run(show, capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 1 and "audit anchor" in shown.stderr, shown.stderr
    assert "Traceback" not in shown.stderr and not shown.stdout
    spm.args = ["--new-anchor"]
    spm.start()
    with SpmClient(spm.url, pin=spm.pin) as again:
        events = [e for e in again.audit()["entries"] if e["event"].startswith("spm.")]
    assert [e["event"] for e in events][-3:] == ["spm.started", "spm.new-anchor", "spm.started"]
    assert events[-1]["detail"]["new_anchor"] is True
    assert (spm.data / "audit.anchor").exists()


@pytest.fixture(scope="module")
def started_once(tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes]) -> Path:
    """The data folder of an SPM started once and stopped (copy it to change it)."""
    spm = SpmProcess(tmp_path_factory.mktemp("once") / "data", sim[0], None).start()
    spm.stop()
    return spm.data


@pytest.mark.parametrize("planted", ["fifo", "link", "sparse"])
def test_an_anchor_that_is_no_file_is_one_line_at_start(
    tmp_path: Path, sim: tuple[Path, bytes], started_once: Path, planted: str
) -> None:
    """Found by a hostile review: the anchor was read whole, through links: a FIFO put
    in its place hung the SPM's start, 6 GiB of holes behind two valid slots were read
    into memory, and a link to a valid copy was read, then written through O_NOFOLLOW: a
    traceback."""
    spm = SpmProcess(shutil.copytree(started_once, tmp_path / "data"), sim[0], None)
    anchor = spm.data / "audit.anchor"
    if planted == "fifo":
        anchor.unlink()
        os.mkfifo(anchor)
    elif planted == "link":
        anchor.rename(tmp_path / "copy.anchor")
        anchor.symlink_to(tmp_path / "copy.anchor")
    else:
        with open(anchor, "r+b") as fh:
            fh.truncate(6 << 30)
    line = restart_fails(spm)
    why = {"fifo": "not a regular file", "link": "a symbolic link", "sparse": "is not an anchor"}
    assert line.startswith("error: integrity: ") and why[planted] in line, line


def test_an_integer_in_a_binary_column_is_one_line_not_an_allocation(
    tmp_path: Path, board: Board, sim: tuple[Path, bytes]
) -> None:
    """Found by a hostile review: SQLite keeps an integer the host stores in a binary
    column, and ``bytes(2**40)`` allocates a TiB: a MemoryError traceback at every start
    (a session's token digest, the schema version) and a 500 for every status request."""
    spm = SpmProcess(tmp_path / "data", sim[0], None).start()
    try:
        with SpmClient(spm.url, pin=spm.pin) as client:
            submit(client, board, policy_document("p", board, sim[1]))
            attest(client, sim, "p")
            db(spm, "UPDATE sessions SET token_sha256 = :n", n=2**40)
            with pytest.raises(SpmRefused, match="^integrity: a binary column holds a value"):
                client.status("p")
        line = restart_fails(spm)
        assert line == ("error: integrity: a binary column holds a value of type int: the "
                        "database was modified outside the SPM"), line  # fmt: skip
    finally:
        spm.stop()


def test_two_spms_on_one_database_share_revocations(
    tmp_path: Path, board: Board, sim: tuple[Path, bytes]
) -> None:
    """Replicas: what one SPM revoked, the other enforces even when the row is deleted."""
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    a = SpmProcess(tmp_path / "a", sim[0], shared).start()
    (tmp_path / "b").mkdir(mode=0o700)
    (tmp_path / "b" / "master.key").write_bytes((tmp_path / "a" / "master.key").read_bytes())
    (tmp_path / "b" / "master.key").chmod(0o600)
    b = SpmProcess(tmp_path / "b", sim[0], shared, args=["--new-anchor"]).start()
    try:
        with SpmClient(a.url, pin=a.pin) as ca, SpmClient(b.url, pin=b.pin) as cb:
            submit(ca, board, policy_document("p", board, sim[1]))
            attest(ca, sim, "p")  # a has read the policy and no revocation
            revoke(cb, board, "p", kind="service", subject="aggregator", reason="poisoning")
            db(b, "DELETE FROM revocations")
            time.sleep(REFRESH_WAIT)
            with pytest.raises(SpmRefused, match="^revoked: service 'aggregator'"):
                attest(ca, sim, "p")
            listed = {(r["kind"], r["subject"]) for r in ca.revocations("p")}
            assert ("service", "aggregator") in listed
    finally:
        a.stop()
        b.stop()


def test_a_deleted_tls_identity_is_not_silently_replaced(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    submit(client, board, policy_document("p", board, sim[1]))
    db(spm, "DELETE FROM meta WHERE key = 'identity_key'")
    assert "sealed TLS identity is missing" in restart_fails(spm)


# --- a secret's row is the one stored last; a rotated CA reissues what it signed --------
# A row's MAC cannot tell an old row from the current one: a host that saved a secret's
# row and put it back after the board rotated the secret away and back (``random`` 16 to
# 32 to 16 bytes) got the old value released again, even across a restart, and a
# certificate's renewal signed with whatever CA row it found (review). Each store is
# now chained into the log (``secret.stored``, the ciphertext's SHA-256).


def _secrets_of(spm: SpmProcess, sim: tuple[Path, bytes], policy: str) -> dict[str, Any]:
    with SpmClient(spm.url, pin=spm.pin) as c:
        plat = simulated.SimulatedPlatform(sim[0])
        return enroll(c, plat, policy, "aggregator", measurement=AGGREGATOR_MR).secrets


def _restore(spm: SpmProcess, old: Any, name: str, policy: str) -> None:
    """Put back a saved row of secret ``name`` of ``policy``, with its own (valid) MAC."""
    db(spm, "UPDATE secrets SET definition_digest = :d, ciphertext = :c, created_at = :t, "
            "mac = :m WHERE policy = :p AND name = :n",
       d=old.definition_digest, c=old.ciphertext, t=old.created_at, m=old.mac, n=name,
       p=policy)  # fmt: skip


def _next(
    board: Board, sim: tuple[Path, bytes], before: dict[str, Any], version: int, policy: str
) -> dict:
    return yaml.safe_load(
        policy_document(policy, board, sim[1], version=version, predecessor=before["digest"])
    )


def test_a_value_rotated_away_and_back_is_not_restored(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    first = submit(client, board, policy_document("p", board, sim[1]))
    leaked = _secrets_of(spm, sim, "p")["seed"]
    (old,) = db(spm, "SELECT * FROM secrets WHERE policy = 'p' AND name = 'seed'")
    doc = _next(board, sim, first, 2, "p")  # v2 rotates the seed (its value leaked, say)
    next(s for s in doc["secrets"] if s["name"] == "seed")["size"] = 32
    second = submit(client, board, yaml.safe_dump(doc))
    submit(client, board, yaml.safe_dump(_next(board, sim, second, 3, "p")))  # v3: 16 bytes again
    time.sleep(REFRESH_WAIT + VALUE_TTL)
    assert _secrets_of(spm, sim, "p")["seed"] != leaked  # a new value, not the leaked one
    _restore(spm, old, "seed", "p")  # the host puts version 1's row back
    time.sleep(VALUE_TTL + 0.2)
    with pytest.raises(SpmRefused, match="^rollback: the stored value of secret 'seed'") as no:
        _secrets_of(spm, sim, "p")
    assert no.value.status == 400
    assert restart_fails(spm).startswith("error: rollback: the stored value of secret 'seed' of ")


def _with_leaf(doc: dict, ca_name: str, validity_days: int = 3650, *, show_ca: bool = True) -> dict:
    doc["secrets"] += [
        {"name": "ca2", "kind": "x509-ca", "common_name": ca_name, "validity_days": validity_days},
        {"name": "svc", "kind": "x509", "issuer": "ca2", "common_name": "svc"},
    ]
    files = doc["services"][0]["inject"]["files"]
    files["/secrets/svc.crt"] = "$$SECFL::svc:crt$$"
    if show_ca:  # else only the leaf's renewal reads the CA's row
        files["/secrets/ca2.crt"] = "$$SECFL::ca2:crt$$"
    return doc


def _issuer(secrets: dict[str, Any]) -> str:
    crt = x509.load_pem_x509_certificate(secrets["svc"]["crt"].encode())
    return crt.issuer.rfc4514_string()


@SHARED
def test_a_renewal_never_signs_with_a_restored_ca(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    # a CA of 2 days caps its leaf's lifetime: the leaf is renewed at every release
    v1 = _with_leaf(
        yaml.safe_load(policy_document(name, board, sim[1])), "old CA", 2, show_ca=False
    )
    first = submit(client, board, yaml.safe_dump(v1))
    (old,) = db(spm, "SELECT * FROM secrets WHERE policy = :policy AND name = 'ca2'", policy=name)
    v2 = _with_leaf(_next(board, sim, first, 2, name), "new CA", 2, show_ca=False)
    submit(client, board, yaml.safe_dump(v2))
    time.sleep(REFRESH_WAIT + VALUE_TTL)
    assert _issuer(_secrets_of(spm, sim, name)) == "CN=new CA"
    _restore(spm, old, "ca2", name)
    time.sleep(VALUE_TTL + 0.2)
    with pytest.raises(SpmRefused, match="^rollback: the stored value of secret 'ca2'"):
        _secrets_of(spm, sim, name)


@SHARED
def test_a_rotated_ca_reissues_the_certificates_it_signed(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    """No attacker: the board gave the CA a new key; the leaf it signed is not released
    with the old CA's signature until its renewal, months later."""
    first = submit(client, board, yaml.safe_dump(_with_leaf(yaml.safe_load(
        policy_document(name, board, sim[1])), "CA one")))  # fmt: skip
    assert _issuer(_secrets_of(spm, sim, name)) == "CN=CA one"
    submit(client, board, yaml.safe_dump(_with_leaf(_next(board, sim, first, 2, name), "CA two")))
    time.sleep(REFRESH_WAIT + VALUE_TTL)
    secrets = _secrets_of(spm, sim, name)
    ca = x509.load_pem_x509_certificate(secrets["ca2"]["crt"].encode())
    leaf = x509.load_pem_x509_certificate(secrets["svc"]["crt"].encode())
    assert ca.subject.rfc4514_string() == "CN=CA two" == _issuer(secrets)
    assert leaf.verify_directly_issued_by(ca) is None
    events = [line for line in _audit_events(spm, name) if line[0] == "secret.stored"]
    assert ("secret.stored", "svc", "reissued") in events


def _audit_events(spm: SpmProcess, policy: str) -> list[tuple[str, str, str]]:
    rows = db(spm, "SELECT event, detail FROM audit WHERE policy = :p ORDER BY seq", p=policy)
    out = []
    for row in rows:
        detail = json.loads(row.detail)
        out.append((row.event, detail.get("secret", ""), detail.get("reason", "")))
    return out


def test_recovery_shares_nested_deeply_are_one_line() -> None:
    """The shares come from the database (the host's): a nesting that exhausts Python's
    recursion, or a threshold beyond GF(256), is a refusal, not a traceback."""
    with pytest.raises(SpmError, match="^recovery: the recovery shares are not JSON$"):
        open_share("[" * 100_000 + "]" * 100_000, "alice", b"")
    huge = '{"format": "secfl-recovery-shares/v2", "policy": "p", "shares": {}, "threshold": 1%s}'
    with pytest.raises(SpmError, match="^recovery: the recovery shares have no valid threshold$"):
        open_share(huge % ("0" * 4000), "alice", b"")


@SHARED
def test_a_certificate_added_again_after_its_ca_rotated_is_reissued(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes], name: str
) -> None:
    """Version 2 rotates the CA and drops the certificate (its row stays); version 3
    names it again as it was: it was released signed by the old CA (review)."""
    first = submit(client, board, yaml.safe_dump(_with_leaf(yaml.safe_load(
        policy_document(name, board, sim[1])), "CA one")))  # fmt: skip
    v2 = _with_leaf(_next(board, sim, first, 2, name), "CA two")
    v2["secrets"] = [s for s in v2["secrets"] if s["name"] != "svc"]
    del v2["services"][0]["inject"]["files"]["/secrets/svc.crt"]
    second = submit(client, board, yaml.safe_dump(v2))
    submit(client, board, yaml.safe_dump(_with_leaf(_next(board, sim, second, 3, name), "CA two")))
    time.sleep(REFRESH_WAIT + VALUE_TTL)
    secrets = _secrets_of(spm, sim, name)
    ca = x509.load_pem_x509_certificate(secrets["ca2"]["crt"].encode())
    leaf = x509.load_pem_x509_certificate(secrets["svc"]["crt"].encode())
    assert _issuer(secrets) == "CN=CA two"
    assert leaf.verify_directly_issued_by(ca) is None


@pytest.mark.parametrize("spm", ["sqlite"], indirect=True)
def test_a_dropped_secret_whose_row_was_deleted_is_not_made_anew(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    """Version 2 drops the seed (its row stays, and so does its store in the log); the
    host deletes the row; version 3 names the seed again: a new value was made (review)."""
    first = submit(client, board, policy_document("p", board, sim[1]))
    v2 = _next(board, sim, first, 2, "p")
    v2["secrets"] = [s for s in v2["secrets"] if s["name"] != "seed"]
    del v2["services"][0]["inject"]["files"]["/secrets/seed"]
    second = submit(client, board, yaml.safe_dump(v2))
    db(spm, "DELETE FROM secrets WHERE policy = 'p' AND name = 'seed'")
    missing = "^rollback: secret 'seed' of policy 'p' is missing from the database"
    with pytest.raises(SpmRefused, match=missing):
        submit(client, board, yaml.safe_dump(_next(board, sim, second, 3, "p")))
    assert restart_fails(spm) == "error: rollback: secret 'seed' of policy 'p' was deleted"


@pytest.mark.parametrize("shared", ["round", "other-site"])
@SHARED
def test_a_volume_cannot_share_the_federations_counter(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], shared: str, name: str
) -> None:
    """Found by a review: recording a release of a volume moves its counter, and a site
    holding its own data volume's key records releases at will. With the federation's
    counter on its data volume, each release moved the aggregator's round counter: the
    aggregator's next commit was refused, and its restart found its checkpoint behind
    the counter until the board signed a reset. Also a counter another service moves."""
    doc = yaml.safe_load(policy_document(name, board, sim[1]))
    doc["secrets"].append({"name": "site-key", "kind": "aes-256"})
    doc["counters"].append({"name": "other-site"})
    doc["services"][0]["counters"] = [*doc["services"][0].get("counters", []), "other-site"]
    doc["volumes"] = [{"name": "site-data", "key": "site-key", "kind": "data", "counter": shared}]
    doc["services"][1]["volumes"] = ["site-data"]
    with pytest.raises(SpmRefused) as refused:
        submit(client, board, yaml.safe_dump(doc))
    assert str(refused.value).startswith(f"policy: volumes[0].counter: '{shared}' is ")
    assert "give volume 'site-data' a counter of its own" in str(refused.value)
    with pytest.raises(SpmRefused, match="unknown policy|no policy"):
        client.policy(name)


@SERVICE_ONLY
def test_a_refused_readmission_cannot_lift_a_later_revocation(
    spm: SpmProcess, client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    """Found by a review: a board-signed readmission refused because its subject was not
    revoked was not used up (its transaction rolled back), so whoever held it could send
    it again after the board's next revocation of that subject, and undo it."""
    submit(client, board, policy_document("p", board, sim[1]))
    revoke(client, board, "p", kind="service", subject="aggregator", reason="poisoning")
    first = lifting("p", kind="service", subject="aggregator", reason="poisoning")
    revoke(client, board, "p", kind="service", subject="aggregator", action="readmit", lifts=first)
    late = {
        "kind": "service",
        "subject": "aggregator",
        "action": "readmit",
        "reason": "cleared",
        "lifts": first,
    }
    with pytest.raises(SpmRefused, match="^revocation: service aggregator is not revoked"):
        revoke(client, board, "p", **late)  # nothing to lift: refused, and used up
    revoke(client, board, "p", kind="service", subject="aggregator", reason="poisoning again")
    with pytest.raises(SpmRefused, match="^revocation: this statement .* was already applied"):
        revoke(client, board, "p", **late)
    spm.stop()
    spm.start()  # the log says it is used up: a restart does not forget it
    with SpmClient(spm.url, pin=spm.pin) as again:
        with pytest.raises(SpmRefused, match="^revocation: this statement .* already applied"):
            revoke(again, board, "p", **late)
        with pytest.raises(SpmRefused, match="^revoked: service 'aggregator'"):
            attest(again, sim, "p")
