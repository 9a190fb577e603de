"""The SPM checks SEV-SNP evidence against AMD's CRLs (`--amd-crl DIR`), refuses it
when it has none (unless its operator says `--no-amd-crl`), and so does
`secfl attest verify --amd-crl`.

Before, no CRL was read: a revoked AMD signing key (ASK) still chained to the pinned
ARK, so a report its holder signed attested. A fake AMD (tests/tee/test_amd.py) signs
the CRLs; its ARK is pinned in the test process by monkeypatch, and in the child
processes by a ``sitecustomize`` on their PYTHONPATH that only this test writes.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from secfl._internal.x509util import fingerprint
from secfl.errors import Refused
from secfl.policy._document import load_policy
from secfl.spm._amd_crl import NOT_CONFIGURED, AmdCrls
from secfl.spm._evidence_checks import check_evidence
from secfl.spm._report_data import spki_sha256, workload_report_data
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import make_csr
from secfl.tee import _roots as roots
from secfl.tee._evidence import Evidence
from secfl.tee._snp_report import build_cert_table
from tests.clirun import one_error, secfl
from tests.spm.harness import AGGREGATOR_MR, Board, SpmProcess, make_sim, policy_document
from tests.tee.test_amd import FAKE_AT, TURIN_SPL, TURIN_TCB, FakeAmd, make_report
from tests.tee.test_amd_crl import make_crl

HWID = bytes(range(1, 9))


@pytest.fixture(scope="module")
def fake() -> FakeAmd:
    return FakeAmd.create("Turin")


@pytest.fixture(scope="module")
def board() -> Board:
    return Board.create()


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch, fake: FakeAmd) -> None:
    monkeypatch.setitem(roots.AMD_ARK_SHA256, "Turin", fingerprint(fake.ark))


def child_env(tmp_path: Path, fake: FakeAmd) -> dict[str, str]:
    """An environment whose Python pins the fake ARK (this test's children only)."""
    site = tmp_path / "pin-fake-ark"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from secfl.tee import _roots\n"
        f"_roots.AMD_ARK_SHA256['Turin'] = {fingerprint(fake.ark)!r}\n"
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def evidence(fake: FakeAmd, report_data: bytes = bytes(64)) -> Evidence:
    """A VCEK-signed Turin report of the policy's aggregator code, its chain in the table."""
    key, vcek = fake.vek(TURIN_SPL, hwid=HWID)
    report = make_report(
        key, tcb=TURIN_TCB, report_data=report_data, measurement=bytes.fromhex(AGGREGATOR_MR)
    )
    der = serialization.Encoding.DER
    table = {"vcek": vcek, "ask": fake.ask.public_bytes(der), "ark": fake.ark.public_bytes(der)}
    return Evidence(kind="snp", quote=report, aux=build_cert_table(table))


def snp_policy(board: Board, name: str = "snp", *, unchecked: bool = False) -> str:
    """A policy of SEV-SNP services; ``unchecked``: it accepts evidence of an SPM
    started with --no-amd-crl (platforms.allow_unchecked_amd_crl)."""
    document = policy_document(name, board, b"", accept=("snp",))
    if not unchecked:
        return document
    doc = yaml.safe_load(document)
    doc["platforms"]["allow_unchecked_amd_crl"] = True
    return yaml.safe_dump(doc, sort_keys=False)


def crl_at(fake: FakeAmd, now: datetime, *revoked: object) -> bytes:
    return make_crl(
        fake,
        revoked,  # type: ignore[arg-type]
        this_update=now - timedelta(days=1),
        next_update=now + timedelta(days=7),
    )


# --- in process: check_evidence -----------------------------------------------------------


@pytest.mark.usefixtures("pinned")
def test_the_spm_refuses_a_revoked_ask_and_checks_nothing_only_when_told(
    fake: FakeAmd, board: Board, tmp_path: Path
) -> None:
    policy = load_policy(snp_policy(board))
    raw = evidence(fake).to_json().encode()
    folder = AmdCrls(tmp_path)
    with pytest.raises(
        Refused,
        match=rf"^evidence: crl: the AMD CRL folder {tmp_path} has no vcek-Turin.crl: fetch "
        r"https://kdsintf.amd.com/vcek/v1/Turin/crl into it$",
    ):
        check_evidence(policy, raw, FAKE_AT, None, folder)
    (tmp_path / "vcek-Turin.crl").write_bytes(crl_at(fake, FAKE_AT))
    claims = check_evidence(policy, raw, FAKE_AT, None, folder)
    assert claims.platform["amd_crl"] == "Turin VCEK CRL of 2024-12-31T00:00:00+00:00"
    (tmp_path / "vcek-Turin.crl").write_bytes(crl_at(fake, FAKE_AT, fake.ask))
    with pytest.raises(
        Refused,
        match=r"^evidence: revoked: the ASK 'SEV-Turin' \(serial 0x[0-9a-f]+\) is revoked by "
        r"the Turin VCEK CRL of 2024-12-31T00:00:00\+00:00, since 2024-12-02",
    ):
        check_evidence(policy, raw, FAKE_AT, None, folder)
    # stale: the operator is told to fetch a fresh one
    with pytest.raises(Refused, match=r"^evidence: expired: .*; fetch a fresh one from https"):
        check_evidence(policy, raw, FAKE_AT + timedelta(days=30), None, folder)
    # neither --amd-crl nor --no-amd-crl: refused, saying both
    with pytest.raises(Refused) as info:
        check_evidence(policy, raw, FAKE_AT)
    assert str(info.value) == NOT_CONFIGURED
    assert "--amd-crl DIR" in NOT_CONFIGURED and "--no-amd-crl" in NOT_CONFIGURED
    # --no-amd-crl: refused unless the policy allows it (tests/spm/test_amd_crl_optout.py);
    # then accepted, the claims saying that nothing was checked
    allowed = load_policy(snp_policy(board, unchecked=True))
    unchecked = check_evidence(allowed, raw, FAKE_AT, None, AmdCrls(None))
    assert unchecked.platform["amd_crl"] == "unchecked"


# --- real processes -------------------------------------------------------------------------


def _attest(client: SpmClient, fake: FakeAmd, policy: str) -> dict:
    hpke = (
        x25519.X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    nonce = client.nonce()
    bound = workload_report_data(nonce, hpke, spki_sha256(key.public_key()))
    return client.attest(policy, "aggregator", nonce=nonce, evidence=evidence(fake, bound),
                         hpke_public_key=hpke, csr_pem=make_csr(key, "aggregator"))  # fmt: skip


def test_a_real_spm_refuses_an_snp_workload_whose_ask_amd_revoked(
    fake: FakeAmd, board: Board, tmp_path: Path
) -> None:
    """Over TLS on loopback, a real `secfl spm serve --amd-crl DIR`: a workload on a
    platform whose ASK is not revoked attests; once the CRL in the folder revokes it
    (no restart), the same workload is refused, in one line."""
    crls = tmp_path / "crls"
    crls.mkdir()
    now = datetime.now(UTC)
    (crls / "vcek-Turin.crl").write_bytes(crl_at(fake, now))
    sim = tmp_path / "sim"
    make_sim(sim)
    spm = SpmProcess(
        tmp_path / "spm", sim, None, env=child_env(tmp_path, fake), args=["--amd-crl", str(crls)]
    ).start()
    try:
        assert spm.log is not None
        assert f"AMD CRLs: {crls}" in spm.log.read_text()
        with SpmClient(spm.url, pin=spm.pin) as client:
            document = snp_policy(board)
            client.submit_policy(document, board.sign(document, "alice", "bob"))
            assert "certificate" in _attest(client, fake, "snp")
            (crls / "vcek-Turin.crl").write_bytes(crl_at(fake, now, fake.ask))
            with pytest.raises(SpmRefused) as info:
                _attest(client, fake, "snp")
            message = str(info.value)
            assert message.startswith("evidence: revoked: the ASK 'SEV-Turin' (serial 0x")
            assert "is revoked by the Turin VCEK CRL of " in message and "\n" not in message
            started = [e for e in client.audit(0, 1000)["entries"] if e["event"] == "spm.started"]
            assert started[-1]["detail"]["amd_crl"] == str(crls)
    finally:
        spm.stop()


def test_a_real_spm_without_amd_crls_refuses_snp_and_says_how_to_start(
    fake: FakeAmd, board: Board, tmp_path: Path
) -> None:
    """Fail closed: neither setting, and SEV-SNP evidence is refused; the start line
    says so. (Simulated evidence needs neither: every other SPM test runs without.)"""
    sim = tmp_path / "sim"
    make_sim(sim)
    spm = SpmProcess(tmp_path / "spm", sim, None, env=child_env(tmp_path, fake)).start()
    try:
        assert spm.log is not None
        assert "AMD CRLs: none (neither --amd-crl nor --no-amd-crl)" in spm.log.read_text()
        with SpmClient(spm.url, pin=spm.pin) as client:
            document = snp_policy(board)
            client.submit_policy(document, board.sign(document, "alice", "bob"))
            with pytest.raises(SpmRefused) as info:
                _attest(client, fake, "snp")
            assert str(info.value) == NOT_CONFIGURED
            started = [e for e in client.audit(0, 1000)["entries"] if e["event"] == "spm.started"]
            assert started[-1]["detail"]["amd_crl"].startswith("none (neither --amd-crl")
    finally:
        spm.stop()


def test_spm_serve_takes_one_amd_crl_setting(tmp_path: Path) -> None:
    both = secfl("spm", "serve", "--data", str(tmp_path / "d"), "--amd-crl", str(tmp_path),
                 "--no-amd-crl")  # fmt: skip
    assert one_error(both) == "error: --amd-crl, --no-amd-crl: give one, not both"
    missing = secfl("spm", "serve", "--data", str(tmp_path / "d"), "--amd-crl",
                    str(tmp_path / "nowhere"))  # fmt: skip
    assert one_error(missing) == f"error: --amd-crl: '{tmp_path / 'nowhere'}' is not a folder"
    assert not (tmp_path / "d").exists()


def test_attest_verify_checks_the_amd_crl_it_is_given(fake: FakeAmd, tmp_path: Path) -> None:
    """`secfl attest verify --amd-crl FILE` in a process of its own: a revoked ASK is
    one error line; a CRL that does not revoke it is named in the claims."""
    ev = tmp_path / "evidence.json"
    ev.write_text(evidence(fake).to_json())
    crl = tmp_path / "vcek-Turin.crl"
    crl.write_bytes(crl_at(fake, FAKE_AT, fake.ask))
    env = {**os.environ, **child_env(tmp_path, fake)}
    args = ("attest", "verify", str(ev), "--at", FAKE_AT.isoformat())
    revoked = secfl(*args, "--amd-crl", str(crl), env=env)
    line = one_error(revoked)
    assert line.startswith("error: revoked: the ASK 'SEV-Turin' (serial 0x"), line
    crl.write_bytes(crl_at(fake, FAKE_AT))
    for path in (crl, tmp_path):  # the file, or the folder as `spm serve` takes it
        done = secfl(*args, "--amd-crl", str(path), env=env)
        assert done.returncode == 0, done.stderr
        claims = json.loads(done.stdout)
        assert claims["platform"]["amd_crl"] == "Turin VCEK CRL of 2024-12-31T00:00:00+00:00"
    plain = secfl(*args, env=env)
    assert json.loads(plain.stdout)["platform"]["amd_crl"] == "unchecked"
