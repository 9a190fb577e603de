"""The SPM's decisions in process, on a real SQLite store: nonce expiry, what is
released (and what is not), imported secrets, and recovery by the board."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from secfl.errors import AuditError, SpmError
from secfl.spm import _sealing as sv
from secfl.spm._audit_verify import verify_database
from secfl.spm._masterkey import open_secret
from secfl.spm._recovery import open_share, recover_policy_key, shares_sha256
from secfl.spm._server import open_spm
from secfl.spm._service import Refused, Spm
from secfl.spm.client import SpmClient
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, Board, make_sim, policy_document


class LocalClient(SpmClient):
    """The client API straight onto an in-process :class:`Spm` (no HTTP)."""

    def __init__(self, spm: Spm) -> None:
        self.spm = spm

    def nonce(self) -> bytes:
        return self.spm.new_nonce()[0]

    def attest(self, policy, service, *, nonce, evidence, hpke_public_key, csr_pem, replaces=None,  # type: ignore[no-untyped-def, override]
               site_signature=None):  # fmt: skip
        r = self.spm.attest(policy, service, nonce=nonce, evidence=evidence.to_json().encode(),
                            hpke_public_key=hpke_public_key, csr_pem=csr_pem,
                            replaces=replaces, site_signature=site_signature)  # fmt: skip
        return {
            "certificate": r.certificate, "ca_certificate": r.ca_certificate,
            "sealed_secrets": r.sealed_secrets, "session_token": r.session_token,
            "session_expires": r.session_expires.isoformat(), "policy_digest": r.policy_digest,
            "policy_version": r.policy_version,
        }  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Spm, Board, bytes, Path]:
    root = make_sim(tmp_path / "sim")
    spm = open_spm(tmp_path / "data", platform="simulated", sim_dir=tmp_path / "sim")
    return spm, Board.create(), root, tmp_path


def submit(spm: Spm, board: Board, document: str) -> None:
    spm.submit_policy(document, [s.model_dump() for s in board.sign(document, "alice", "bob")])


def test_expired_nonce_is_refused(setup: tuple[Spm, Board, bytes, Path]) -> None:
    spm, board, root, tmp = setup
    submit(spm, board, policy_document("p", board, root))
    spm.nonce_ttl = -1
    with pytest.raises(Refused, match="^nonce: the nonce is expired"):
        enroll(LocalClient(spm), simulated.SimulatedPlatform(tmp / "sim"), "p", "aggregator",
               measurement=AGGREGATOR_MR)  # fmt: skip


def test_only_the_selected_parts_are_released(setup: tuple[Spm, Board, bytes, Path]) -> None:
    spm, board, root, tmp = setup
    doc = yaml.safe_load(policy_document("p", board, root))
    doc["services"][0]["inject"]["files"]["/secrets/ca.crt"] = "$$SECFL::fl-ca:crt$$"
    doc["services"][0]["inject"]["env"]["SIGN_PUB"] = "$$SECFL::signing:pub$$"
    submit(spm, board, yaml.safe_dump(doc))
    got = enroll(LocalClient(spm), simulated.SimulatedPlatform(tmp / "sim"), "p", "aggregator",
                 measurement=AGGREGATOR_MR)  # fmt: skip
    assert set(got.secrets["fl-ca"]) == {"kind", "crt"}  # never the CA's private key
    assert set(got.secrets["signing"]) == {"kind", "pub"}
    assert got.render("fl-ca", "crt") == got.ca_certificate
    with pytest.raises(Exception, match="does not apply"):
        got.render("fl-ca", "key")


def test_imported_secret_reaches_only_its_service(setup: tuple[Spm, Board, bytes, Path]) -> None:
    spm, board, root, tmp = setup
    doc = yaml.safe_load(policy_document("p", board, root))
    binding = sv.board_binding([m["public_key"] for m in doc["board"]["members"]],
                               doc["board"]["threshold"])  # fmt: skip
    sealed = sv.seal_imported(
        b"s3cret-db-password", spm.identity.key.public_key(), "p", "db", binding
    )
    doc["secrets"].append({"name": "db", "kind": "imported", "sealed": sealed})
    doc["services"][0]["inject"]["env"]["DB_PASSWORD"] = "$$SECFL::db$$"
    submit(spm, board, yaml.safe_dump(doc))
    got = enroll(LocalClient(spm), simulated.SimulatedPlatform(tmp / "sim"), "p", "aggregator",
                 measurement=AGGREGATOR_MR)  # fmt: skip
    assert got.render("db") == "s3cret-db-password"

    other = sv.seal_imported(b"x", spm.identity.key.public_key(), "other-policy", "db", binding)
    doc2 = yaml.safe_load(policy_document("q", board, root))
    doc2["secrets"].append({"name": "db", "kind": "imported", "sealed": other})
    with pytest.raises(Refused, match="not sealed to this SPM for policy 'q'"):
        submit(spm, board, yaml.safe_dump(doc2))


def test_board_recovers_the_policy_secrets(setup: tuple[Spm, Board, bytes, Path]) -> None:
    spm, board, root, tmp = setup
    submit(spm, board, policy_document("p", board, root))
    got = enroll(LocalClient(spm), simulated.SimulatedPlatform(tmp / "sim"), "p", "aggregator",
                 measurement=AGGREGATOR_MR)  # fmt: skip
    with spm.store.transaction() as tx:
        shares_json = tx.data_keys.shares("p")
        record = tx.secrets.get("p", "model-key")
    assert shares_json and record is not None
    # Without the SPM's master key: two members open their shares and recombine.
    shares = [open_share(shares_json, m, board.recovery[m]) for m in ("bob", "carol")]
    policy = spm.policy("p")[1]
    key = recover_policy_key(shares, shares_json, policy, audited=shares_sha256(shares_json))
    value = json.loads(open_secret(key, "p", "model-key", record.ciphertext))
    assert sv.render("model-key", value, "hex") == got.render("model-key", "hex")
    with pytest.raises(Exception, match="threshold"):
        recover_policy_key(shares[:1], shares_json, policy, audited=shares_sha256(shares_json))


def test_recovery_needs_every_required_member(setup: tuple[Spm, Board, bytes, Path]) -> None:
    """A required member must sign every version, so recovery needs them too: two other
    members hold a threshold of shares but not alice's part of the key."""
    spm, board, root, _tmp = setup
    required = {"board": {"members": board.members(), "threshold": 2, "required": ["alice"]}}
    submit(spm, board, policy_document("p", board, root, extra=required))
    with spm.store.transaction() as tx:
        shares_json = tx.data_keys.shares("p")
        record = tx.secrets.get("p", "model-key")
        wrapped = tx.data_keys.get("p")
    assert shares_json and record is not None and wrapped is not None
    assert json.loads(shares_json)["required"] == ["alice"]
    opened = {m: open_share(shares_json, m, board.recovery[m]) for m in board.recovery}
    policy, audited = spm.policy("p")[1], shares_sha256(shares_json)
    with pytest.raises(SpmError, match="share of required member 'alice' is missing"):
        recover_policy_key([opened["bob"], opened["carol"]], shares_json, policy, audited=audited)
    # Even told nothing is required (by the document and a policy), bob and carol
    # rebuild no key that opens a secret.
    lied = json.dumps(json.loads(shares_json) | {"required": []})
    with pytest.raises(SpmError, match="required members are not the board's"):
        recover_policy_key([opened["bob"], opened["carol"]], lied, policy, audited="")
    unrequired = policy.model_copy(
        update={"board": policy.board.model_copy(update={"required": []})}
    )
    with pytest.raises(SpmError, match="do not recombine to the policy key"):
        recover_policy_key([opened["bob"], opened["carol"]], lied, unrequired, audited="")
    without = recover_policy_key([opened["bob"], opened["carol"]])
    with pytest.raises(SpmError):
        open_secret(without, "p", "model-key", record.ciphertext)
    for pair in (("alice", "bob"), ("carol", "alice")):
        key = recover_policy_key([opened[m] for m in pair], shares_json, policy, audited=audited)
        assert json.loads(open_secret(key, "p", "model-key", record.ciphertext))
    # A version that only drops the requirement replaces the data key (the old shares,
    # and alice's part, open nothing stored from then on).
    digest = spm.policy("p")[0].digest
    plain = {"board": {"members": board.members(), "threshold": 2}}
    submit(spm, board, policy_document("p", board, root, version=2, predecessor=digest,
                                       extra=plain))  # fmt: skip
    with spm.store.transaction() as tx:
        assert tx.data_keys.get("p") != wrapped
        assert json.loads(tx.data_keys.shares("p") or "{}")["required"] == []


def test_required_member_without_recovery_key_is_refused(
    setup: tuple[Spm, Board, bytes, Path],
) -> None:
    spm, board, root, _tmp = setup
    members = board.members()
    del members[0]["recovery_key"]  # alice
    required = {"board": {"members": members, "threshold": 2, "required": ["alice"]}}
    with pytest.raises(Refused, match="board.required: 'alice' has no recovery_key"):
        submit(spm, board, policy_document("p", board, root, extra=required))


def test_database_tampering_is_detected(setup: tuple[Spm, Board, bytes, Path]) -> None:
    spm, board, root, tmp = setup
    submit(spm, board, policy_document("p", board, root))
    spm.store.close()
    count, head = verify_database(tmp / "data")
    assert count == head >= 2
    with sqlite3.connect(tmp / "data" / "spm.db") as db:
        table = next(
            n
            for (n,) in db.execute("select name from sqlite_master where type='table'")
            if "audit" in n and "head" not in n
        )
        db.execute(f"update {table} set event = 'policy.forged' where seq = 2")  # noqa: S608
    with pytest.raises(AuditError, match="entry 2"):
        verify_database(tmp / "data")
    with pytest.raises(AuditError, match="entry 2"):
        verify_database(None, f"sqlite:///{tmp / 'data' / 'spm.db'}")
