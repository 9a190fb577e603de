"""The SPM end to end: a real `secfl spm serve` process over HTTPS on loopback,
the simulated TEE, a 3-member board with a 2-of-3 rule; on SQLite and PostgreSQL.

Each refusal must name its check, release nothing, and leave an audit entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from secfl.errors import SpmError, VerificationError
from secfl.policy._document import load_policy
from secfl.policy._signatures import REVOCATION_DOMAIN, sign_statement
from secfl.spm._report_data import spki_sha256, workload_report_data
from secfl.spm._service import revocation_digest
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll, make_csr
from secfl.tee import _simulated as simulated
from tests.spm.conftest import drop_pg_database, fresh_pg_database
from tests.spm.harness import (
    AGGREGATOR_MR,
    COLLABORATOR_MR,
    Board,
    SpmProcess,
    policy_document,
    raw_http,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def spm(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sim: tuple[Path, bytes],
) -> Iterator[SpmProcess]:
    db, pg = None, None
    if request.param == "postgresql":
        pg = request.getfixturevalue("pg_url")
        db, name = fresh_pg_database(pg)
    proc = SpmProcess(tmp_path_factory.mktemp("spm") / "data", sim[0], db).start()
    try:
        yield proc
    finally:
        proc.stop()
        if pg is not None:
            drop_pg_database(pg, name)


@pytest.fixture(scope="module")
def client(spm: SpmProcess, sim: tuple[Path, bytes]) -> Iterator[SpmClient]:
    verified, claims = SpmClient.verify(
        spm.url, expect_measurement=spm.measurement, sim_root=sim[1]
    )
    assert claims.simulated and verified.pin == spm.pin
    with verified:
        yield verified


@pytest.fixture(scope="module")
def policy(client: SpmClient, board: Board, sim: tuple[Path, bytes]) -> str:
    document = policy_document("fl-main", board, sim[1])
    reply = client.submit_policy(document, board.sign(document, "alice", "bob"))
    assert reply["version"] == 1
    return "fl-main"


def platform(sim: tuple[Path, bytes], debug: bool = False) -> simulated.SimulatedPlatform:
    return simulated.SimulatedPlatform(sim[0], debug=debug)


def audit_events(client: SpmClient) -> list[dict]:
    return client.audit(0, 10000)["entries"]


def last_refusal(client: SpmClient) -> dict:
    refusals = [e for e in audit_events(client) if e["event"].endswith(".refused")]
    return refusals[-1]


# --- the SPM itself ----------------------------------------------------------------------


def test_spm_verification_pins_its_tls_key(spm: SpmProcess, sim: tuple[Path, bytes]) -> None:
    with pytest.raises(VerificationError, match="^measurement:"):
        SpmClient.verify(spm.url, expect_measurement="00" * 48, sim_root=sim[1])
    with pytest.raises(VerificationError, match="^simulation:"):
        SpmClient.verify(spm.url, expect_measurement=spm.measurement)
    wrong = SpmClient(spm.url, pin="00" * 32)
    with pytest.raises(SpmError, match="not the pinned"):
        wrong.nonce()


def test_tls_is_verified_for_plain_clients(spm: SpmProcess) -> None:
    """The SPM's certificate is self-signed: nothing trusts it but a pinned client."""
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{spm.url}/v1/health", trust_env=False)
    pem = ssl.get_server_certificate(tuple(spm.url.removeprefix("https://").rsplit(":", 1)))  # type: ignore[arg-type]
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert spki_sha256(cert.public_key()) == spm.pin


# --- policies ----------------------------------------------------------------------------


def test_policy_needs_two_of_three(
    client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    document = policy_document("fl-few", board, sim[1])
    with pytest.raises(
        SpmRefused, match=r"^approval: 1 valid signature\(s\) of the 2 required"
    ) as exc:
        client.submit_policy(document, board.sign(document, "carol"))
    assert exc.value.status == 403
    with pytest.raises(SpmRefused, match="no policy named 'fl-few'"):
        client.policy("fl-few")
    assert last_refusal(client)["event"] == "policy.refused"


def test_a_new_version_may_not_pin_code_by_a_counter(
    client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    """A code volume pinned by a counter (its key holder could release other code
    without the board) is refused at submission, in one line; the rule is not the
    model's, so versions an SPM stored before it still read."""
    volume = {"name": "task", "key": "model-key", "kind": "code", "counter": "round"}
    document = policy_document("fl-code-counter", board, sim[1], extra={"volumes": [volume]})
    assert load_policy(document).volumes[0].counter == "round"  # it parses
    with pytest.raises(SpmRefused, match=r"^policy: volumes\[0\]: code volume 'task' is pinned"):
        client.submit_policy(document, board.sign(document, "alice", "bob"))
    assert last_refusal(client)["event"] == "policy.refused"


def test_a_stored_version_pinning_code_by_a_counter_releases_no_code_key(
    tmp_path: Path, board: Board, sim: tuple[Path, bytes]
) -> None:
    """A version an SPM accepted before the rule above (emulated: an SPM process
    without it) still reads after the upgrade, but the SPM no longer releases a key to
    a service that opens such a code volume; the other services still enroll."""
    old_code = tmp_path / "old"
    old_code.mkdir()
    (old_code / "sitecustomize.py").write_text(  # the SPM as it was before the rule
        "import secfl.spm._policy_intake as intake\n"
        "intake.check_new_version = lambda policy: None\n"
    )
    doc = yaml.safe_load(policy_document("fl-old", board, sim[1]))
    doc["volumes"] = [{"name": "task", "key": "model-key", "kind": "code", "counter": "round"}]
    doc["services"][0]["volumes"] = ["task"]  # the aggregator runs the code in it
    document = yaml.safe_dump(doc, sort_keys=False)
    data = tmp_path / "spm"
    old = SpmProcess(data, sim[0], None, env={"PYTHONPATH": str(old_code)}).start()
    try:
        with SpmClient(old.url, pin=old.pin) as client:
            assert (
                client.submit_policy(document, board.sign(document, "alice", "bob"))["version"] == 1
            )
    finally:
        old.stop()
    new = SpmProcess(data, sim[0], None).start()
    try:
        with SpmClient(new.url, pin=new.pin) as client:
            assert client.policy("fl-old")["version"] == 1  # it still reads
            with pytest.raises(
                SpmRefused,
                match=r"^policy: version 1 pins code volume 'task' by a counter, so its key "
                r"holder could change the code without the board; the board submits a "
                r"version that pins it by its tag$",
            ) as exc:
                enroll(client, platform(sim), "fl-old", "aggregator", measurement=AGGREGATOR_MR)
            assert exc.value.status == 403
            refusal = last_refusal(client)
            assert refusal["event"] == "attestation.refused"
            assert refusal["detail"]["service"] == "aggregator"
            released = [e for e in audit_events(client) if e["event"] == "secrets.released"]
            assert released == []
            col = enroll(
                client, platform(sim), "fl-old", "collaborator", measurement=COLLABORATOR_MR
            )
            assert sorted(col.secrets) == ["model-key"]
    finally:
        new.stop()


def test_policy_update_rules(
    client: SpmClient, board: Board, policy: str, sim: tuple[Path, bytes]
) -> None:
    current = client.policy(policy)
    v2 = policy_document(policy, board, sim[1], version=2, predecessor=current["digest"],
                         extra={"federation": {"rounds": 20}})  # fmt: skip
    with pytest.raises(SpmRefused, match="^approval:"):
        client.submit_policy(v2, board.sign(v2, "bob"))
    stale = policy_document(policy, board, sim[1], version=2, predecessor="ab" * 32)
    with pytest.raises(SpmRefused, match="^predecessor:") as exc:
        client.submit_policy(stale, board.sign(stale, "alice", "bob"))
    assert exc.value.status == 409
    # the refusal says what to write instead, and the tool that writes it
    assert f"make it version {current['version'] + 1} with that predecessor" in str(exc.value)
    assert "secfl policy next" in str(exc.value)
    assert client.policy(policy)["version"] == current["version"]  # nothing changed


def test_invalid_policy_names_its_field(
    client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    document = policy_document("fl-bad", board, sim[1]).replace(
        "identity_ca: fl-ca", "identity_ca: nope"
    )
    with pytest.raises(SpmRefused, match="identity_ca") as exc:
        client.submit_policy(document, [])
    assert exc.value.status == 400


# --- attestation -------------------------------------------------------------------------


def test_correct_workload_gets_certificate_secrets_and_counters(
    client: SpmClient, policy: str, sim: tuple[Path, bytes]
) -> None:
    agg = enroll(client, platform(sim), policy, "aggregator", measurement=AGGREGATOR_MR)
    col = enroll(client, platform(sim), policy, "collaborator", measurement=COLLABORATOR_MR)
    assert sorted(agg.secrets) == ["model-key", "seed"]
    assert sorted(col.secrets) == ["model-key"]
    assert agg.render("model-key", "hex") == col.render("model-key", "hex")
    assert len(bytes.fromhex(agg.render("model-key", "hex"))) == 32

    cert = x509.load_pem_x509_certificate(agg.certificate.encode())
    ca = x509.load_pem_x509_certificate(agg.ca_certificate.encode())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"secfl://{policy}/aggregator" in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert cert.public_key().public_numbers() == agg.key.public_key().public_numbers()

    before = client.counter(policy, "round")
    assert client.increment(policy, "round", agg.session_token) == before + 1
    assert client.increment(policy, "round", agg.session_token) == before + 2
    assert client.counter(policy, "round") == before + 2
    with pytest.raises(SpmRefused, match="^counter: service 'collaborator' may not"):
        client.increment(policy, "round", col.session_token)
    with pytest.raises(SpmRefused, match="^session:") as exc:
        client.increment(policy, "round", "not-a-token")
    assert exc.value.status == 401

    events = [e["event"] for e in audit_events(client)]
    for event in (
        "attestation.accepted",
        "certificate.issued",
        "secrets.released",
        "counter.incremented",
    ):
        assert event in events


def _attest_raw(
    client: SpmClient,
    policy: str,
    service: str,
    sim: tuple[Path, bytes],
    *,
    measurement: str = AGGREGATOR_MR,
    debug: bool = False,
    nonce: bytes | None = None,
    bind_nonce: bytes | None = None,
    bind_hpke: bytes | None = None,
) -> dict:
    """Attest with full control of what the evidence binds."""
    hpke = (
        x25519.X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    nonce = nonce if nonce is not None else client.nonce()
    report_data = workload_report_data(
        bind_nonce or nonce, bind_hpke or hpke, spki_sha256(key.public_key())
    )
    evidence = platform(sim, debug).get_evidence(report_data, measurement=measurement)
    return client.attest(policy, service, nonce=nonce, evidence=evidence,
                         hpke_public_key=hpke, csr_pem=make_csr(key, service))  # fmt: skip


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong measurement", "^measurement: simulated measurement c0c0"),
        ("debug", "^evidence: debug:"),
        ("another nonce", "^report_data:"),
        ("report_data not binding the HPKE key", "^report_data:"),
        ("unknown nonce", "^nonce: the nonce is unknown"),
    ],
)
def test_refusals_release_nothing_and_are_audited(
    client: SpmClient, policy: str, sim: tuple[Path, bytes], case: str, message: str
) -> None:
    kwargs: dict = {
        "wrong measurement": {"measurement": COLLABORATOR_MR},
        "debug": {"debug": True},
        "another nonce": {"bind_nonce": os.urandom(32)},
        "report_data not binding the HPKE key": {"bind_hpke": os.urandom(32)},
        "unknown nonce": {"nonce": os.urandom(32)},
    }[case]
    with pytest.raises(SpmRefused, match=message) as exc:
        _attest_raw(client, policy, "aggregator", sim, **kwargs)
    assert exc.value.status == 403
    refusal = last_refusal(client)
    assert refusal["event"] == "attestation.refused"
    assert refusal["detail"]["reason"] == str(exc.value)
    assert refusal["detail"]["service"] == "aggregator"


def test_reused_nonce_is_refused(client: SpmClient, policy: str, sim: tuple[Path, bytes]) -> None:
    nonce = client.nonce()
    _attest_raw(client, policy, "aggregator", sim, nonce=nonce)
    with pytest.raises(SpmRefused, match="^nonce: the nonce is used"):
        _attest_raw(client, policy, "aggregator", sim, nonce=nonce)


def test_simulation_refused_where_the_policy_does_not_accept_it(
    client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    document = policy_document("fl-hw-only", board, sim[1], accept=("snp",))
    client.submit_policy(document, board.sign(document, "alice", "carol"))
    with pytest.raises(SpmRefused, match="^platform: simulated evidence is not accepted"):
        _attest_raw(client, "fl-hw-only", "aggregator", sim)


# --- revocation, audit, bad input ---------------------------------------------------------


def test_board_signed_revocation(
    client: SpmClient, policy: str, board: Board, sim: tuple[Path, bytes]
) -> None:
    agg = enroll(client, platform(sim), policy, "aggregator", measurement=AGGREGATOR_MR)
    serial = format(x509.load_pem_x509_certificate(agg.certificate.encode()).serial_number, "x")
    statement = {"serial": serial, "service": "aggregator", "reason": "key compromise"}
    digest = revocation_digest({"policy": policy, **statement})
    one = [sign_statement(REVOCATION_DOMAIN, digest, board.keys["alice"], "alice")]
    with pytest.raises(SpmRefused, match="^approval:"):
        client.revoke(policy, statement, one)
    assert serial not in [r["serial"] for r in client.revocations(policy)]
    two = [*one, sign_statement(REVOCATION_DOMAIN, digest, board.keys["bob"], "bob")]
    client.revoke(policy, statement, two)
    assert serial in [r["serial"] for r in client.revocations(policy)]


def test_audit_log_verifies_over_the_api(client: SpmClient, spm: SpmProcess, policy: str) -> None:
    from secfl.spm._audit_verify import verify_remote

    count, head = verify_remote(spm.url, spm.pin)
    assert count == head and count >= 5


def test_oversized_and_malformed_bodies(spm: SpmProcess, client: SpmClient, policy: str) -> None:
    with raw_http(client) as http:
        big = http.post("/v1/policies", content=b"{" + b" " * (2 << 20) + b"}",
                        headers={"content-type": "application/json"})  # fmt: skip
        assert big.status_code == 413
        bad = http.post(f"/v1/policies/{policy}/services/aggregator/attest", json={"nonce": "zz"})
        assert bad.status_code == 422
        fields = {"nonce": "00" * 32, "evidence": "{}", "hpke_public_key": "00", "csr": "x"}
        junk = http.post(f"/v1/policies/{policy}/services/aggregator/attest", json=fields)
    assert junk.status_code in (400, 403)
    assert "error" in junk.json()


def test_policy_digest_matches_the_library(
    client: SpmClient, board: Board, sim: tuple[Path, bytes], policy: str
) -> None:
    from secfl.policy._canonical import digest

    document = policy_document(policy, board, sim[1])
    assert client.policy(policy)["digest"] == digest(load_policy(document))
    stored = client.policy(policy)["document"]
    assert hashlib.sha256(stored.encode()).hexdigest() == client.policy(policy)["digest"]
    assert json.loads(stored)["name"] == policy
