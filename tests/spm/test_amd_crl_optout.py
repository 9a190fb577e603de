"""`secfl spm serve --no-amd-crl` is the host's to give (the SPM's command line is not
measured), so it must not turn AMD's revocation checks off for every policy unseen:
SEV-SNP evidence it leaves unchecked is accepted only under a policy whose board
allows it (`platforms.allow_unchecked_amd_crl: true`), and a version that takes that
back ends the sessions attested under it.

Before, `--no-amd-crl` accepted every SEV-SNP report unchecked, a revoked AMD signing
key included, whatever the policy said; only the `spm.started` audit entry told.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from secfl.errors import Refused
from secfl.policy._document import load_policy
from secfl.policy._review import review
from secfl.spm._amd_crl import AmdCrls
from secfl.spm._evidence_checks import check_evidence, claims_identity, platform_refusal
from secfl.spm.client import SpmClient, SpmRefused
from tests.spm.harness import Board, SpmProcess, make_sim
from tests.spm.test_amd_crl import _attest, child_env, evidence, snp_policy
from tests.tee.test_amd import FAKE_AT, FakeAmd


@pytest.fixture(scope="module")
def fake() -> FakeAmd:
    return FakeAmd.create("Turin")


@pytest.fixture(scope="module")
def board() -> Board:
    return Board.create()


def test_unchecked_evidence_needs_the_policy_and_ends_when_it_is_taken_back(
    fake: FakeAmd, board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secfl._internal.x509util import fingerprint
    from secfl.spm._amd_crl import UNCHECKED_REFUSED
    from secfl.tee import _roots as roots

    monkeypatch.setitem(roots.AMD_ARK_SHA256, "Turin", fingerprint(fake.ark))
    raw = evidence(fake).to_json().encode()
    strict, lenient = (load_policy(snp_policy(board, unchecked=u)) for u in (False, True))
    with pytest.raises(Refused) as info:
        check_evidence(strict, raw, FAKE_AT, None, AmdCrls(None))
    assert str(info.value) == UNCHECKED_REFUSED
    claims = check_evidence(lenient, raw, FAKE_AT, None, AmdCrls(None))
    identity = claims_identity(claims)
    assert platform_refusal(lenient, identity) is None
    assert platform_refusal(strict, identity) == (
        "SEV-SNP evidence unchecked against AMD's CRLs is no longer accepted"
    )
    assert "SEV-SNP unchecked against AMD's CRLs (--no-amd-crl) accepted" in "\n".join(
        review(lenient)
    )
    assert "allow_unchecked_amd_crl" not in strict.platforms.model_dump()  # digests stand


def test_a_real_spm_with_no_amd_crl_accepts_snp_only_where_the_policy_allows(
    fake: FakeAmd, board: Board, tmp_path: Path
) -> None:
    sim = tmp_path / "sim"
    make_sim(sim)
    spm = SpmProcess(
        tmp_path / "spm", sim, None, env=child_env(tmp_path, fake), args=["--no-amd-crl"]
    ).start()
    try:
        assert spm.log is not None
        assert "AMD CRLs: unchecked (--no-amd-crl)" in spm.log.read_text()
        with SpmClient(spm.url, pin=spm.pin) as client:
            strict = snp_policy(board, "strict")
            client.submit_policy(strict, board.sign(strict, "alice", "bob"))
            with pytest.raises(SpmRefused) as info:
                _attest(client, fake, "strict")
            message = str(info.value)
            assert message.startswith("crl: this SPM was started with --no-amd-crl, "), message
            assert "platforms.allow_unchecked_amd_crl: true" in message
            lenient = snp_policy(board, "lenient", unchecked=True)
            client.submit_policy(lenient, board.sign(lenient, "alice", "bob"))
            assert "certificate" in _attest(client, fake, "lenient")
    finally:
        spm.stop()
