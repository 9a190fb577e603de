"""The SPM takes no AMD CRL issued before one of the same kind and product it verified,
across restarts: the host fills the `--amd-crl` folder, and could otherwise put back
an older CRL, still within its dates, from before AMD revoked an ASK.

Before, only the CRL's dates were checked: a CRL of a week ago that does not yet list
a revoked ASK, still before its nextUpdate, let that ASK's reports attest again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from secfl.errors import Refused
from secfl.policy._document import load_policy
from secfl.spm._amd_crl import AmdCrls
from secfl.spm._collateral_floors import floors_of
from secfl.spm._evidence_checks import check_evidence
from secfl.spm.client import SpmClient, SpmRefused
from tests.spm.harness import Board, SpmProcess, make_sim
from tests.spm.test_amd_crl import _attest, child_env, evidence, snp_policy
from tests.tee.test_amd import FAKE_AT, FakeAmd
from tests.tee.test_amd_crl import make_crl


@pytest.fixture(scope="module")
def fake() -> FakeAmd:
    return FakeAmd.create("Turin")


@pytest.fixture(scope="module")
def board() -> Board:
    return Board.create()


def crl_of(fake: FakeAmd, now: datetime, days_ago: int, *revoked: object) -> bytes:
    """A CRL issued ``days_ago`` days before ``now``, current until a week after it."""
    return make_crl(
        fake,
        revoked,  # type: ignore[arg-type]
        this_update=now - timedelta(days=days_ago),
        next_update=now + timedelta(days=7),
    )


def test_an_older_crl_is_refused_in_process(
    fake: FakeAmd, board: Board, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secfl._internal.x509util import fingerprint
    from secfl.tee import _roots as roots

    monkeypatch.setitem(roots.AMD_ARK_SHA256, "Turin", fingerprint(fake.ark))
    policy = load_policy(snp_policy(board))
    raw = evidence(fake).to_json().encode()
    crls = AmdCrls(tmp_path)
    path = tmp_path / "vcek-Turin.crl"
    path.write_bytes(crl_of(fake, FAKE_AT, 1))
    check_evidence(policy, raw, FAKE_AT, None, crls)
    path.write_bytes(crl_of(fake, FAKE_AT, 3))
    with pytest.raises(Refused) as info:
        check_evidence(policy, raw, FAKE_AT, None, crls)
    message = str(info.value)
    assert message.startswith(
        "evidence: rollback: the Turin VCEK CRL of 2024-12-29T00:00:00+00:00 in "
    ), message
    assert "older than the one of 2024-12-31T00:00:00+00:00 this SPM verified" in message
    assert "\n" not in message
    path.write_bytes(crl_of(fake, FAKE_AT, 1))  # the same one again: taken
    check_evidence(policy, raw, FAKE_AT, None, crls)


def test_a_real_spm_refuses_a_crl_rolled_back_across_a_restart(
    fake: FakeAmd, board: Board, tmp_path: Path
) -> None:
    """A real `secfl spm serve --amd-crl DIR`: AMD's CRL of yesterday revokes the ASK,
    and the workload is refused. The host stops the SPM, puts back the CRL of three
    days ago (still current, not yet listing the ASK) and starts it again: the
    workload is still refused, now as a rollback, and the floor is in the audit log."""
    crls = tmp_path / "crls"
    crls.mkdir()
    now = datetime.now(UTC).replace(microsecond=0)
    path = crls / "vcek-Turin.crl"
    path.write_bytes(crl_of(fake, now, 1, fake.ask))
    sim = tmp_path / "sim"
    make_sim(sim)
    args = ["--amd-crl", str(crls)]
    spm = SpmProcess(tmp_path / "spm", sim, None, env=child_env(tmp_path, fake), args=args)
    spm.start()
    try:
        with SpmClient(spm.url, pin=spm.pin) as client:
            document = snp_policy(board)
            client.submit_policy(document, board.sign(document, "alice", "bob"))
            with pytest.raises(SpmRefused, match=r"^evidence: revoked: the ASK 'SEV-Turin'"):
                _attest(client, fake, "snp")
    finally:
        spm.stop()
    path.write_bytes(crl_of(fake, now, 3))  # the host rolls the CRL back
    spm.start()
    try:
        with SpmClient(spm.url, pin=spm.pin) as client:
            with pytest.raises(SpmRefused) as info:
                _attest(client, fake, "snp")
            message = str(info.value)
            assert message.startswith("evidence: rollback: the Turin VCEK CRL of "), message
            assert "this SPM verified" in message and "\n" not in message
            entries = client.audit(0, 1000)["entries"]
        floors = [floors_of(e["detail"]) for e in entries if e["event"] == "collateral.verified"]
        day_before = int((now - timedelta(days=1)).timestamp())
        assert [(("amd-crl", "vcek", "Turin"), day_before)] in floors
    finally:
        spm.stop()
