"""Which IDs name the machine a workload ran on, for the board's `platform` revocations.

A hostile review of the TEE evidence found two weak IDs. Intel evidence was named by
its PCK certificate's digest, but a TCB recovery issues the machine a new PCK
certificate: a revoked machine came back after a microcode update. It is now named by
its PPID, which every PCK certificate of the machine carries (the digest still
matches, for revocations signed before). A masked or VLEK-signed SEV-SNP report's
chip ID is zeros: revoking it revoked every such machine. Zeros name nothing now.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from secfl.errors import VerificationError
from secfl.spm._evidence_checks import claims_identity
from secfl.spm._records import SessionRecord
from secfl.spm._revocation import platform_id, platform_ids, revoked_reason, session_identity
from secfl.tee._snp_report import parse_report
from secfl.tee._verify import verify
from tests.conftest import utc
from tests.spm.harness import Board
from tests.tee.test_intel import pck_sha256, ppid


def test_intel_evidence_is_named_by_its_ppid_and_its_pck(vectors: Path) -> None:
    for name in ("sgx_v3_quote", "tdx_v4_quote"):
        raw = (vectors / "intel" / f"{name}.bin").read_bytes()
        claims = verify(raw, at=utc("2025-07-01"))
        assert platform_ids(claims.platform) == [ppid(raw), pck_sha256(raw)]
        assert platform_id(claims.platform) == ppid(raw)
        identity = claims_identity(claims)
        # a machine revoked by its PPID stays revoked under a new PCK certificate...
        assert revoked_reason({("platform", ppid(raw))}, "agg", "", identity)
        # ...and a revocation signed before, by the PCK's digest, still holds
        assert revoked_reason({("platform", pck_sha256(raw))}, "agg", "", identity)
        assert revoked_reason({("platform", "ab" * 16)}, "agg", "", identity) is None


def test_a_masked_snp_chip_id_names_no_machine(vectors: Path) -> None:
    amd = vectors / "amd"
    # the VLEK-signed vector's chip ID (its VLEK chain is not in the vectors: parsed only)
    vlek = parse_report((amd / "snp_vlek_report.bin").read_bytes())
    assert not vlek.chip_id.strip(b"\0")
    platform = {"chip_id": vlek.chip_id.hex(), "product": "Milan", "signing_key": "vlek"}
    assert platform_ids(platform) == [] and platform_id(platform) == ""
    identity = claims_identity_of(platform)
    assert revoked_reason({("platform", "00" * 64)}, "agg", "", identity) is None
    milan = verify(
        (amd / "snp_milan_report.bin").read_bytes(),
        at=utc("2024-06-01"),
        vcek=(amd / "snp_milan_vcek.der").read_bytes(),
        chain=(amd / "ask_ark_milan.pem").read_bytes(),
    )
    chip = milan.platform["chip_id"]
    assert chip.strip("0") and platform_ids(milan.platform) == [chip]


def claims_identity_of(platform: dict[str, str]) -> dict[str, object]:
    return {"kind": "snp", "measurements": {}, "platform": platform_id(platform),
            "platforms": platform_ids(platform)}  # fmt: skip


def test_sessions_stored_before_keep_their_one_platform_id() -> None:
    """A session attested before the change stored only "platform": still matched."""
    old = SessionRecord(
        token_sha256=b"\0" * 32, policy="p", service="agg", policy_version=1,
        expires_at=datetime.now(UTC), serial="01",
        identity='{"kind":"sgx","measurements":{},"platform":"' + "cd" * 32 + '"}',
    )  # fmt: skip
    identity = session_identity(old)
    assert identity["platforms"] == ["cd" * 32]
    assert revoked_reason({("platform", "cd" * 32)}, "agg", "", identity)


def test_a_policy_can_require_evidence_that_names_its_machine(vectors: Path) -> None:
    """`platforms.require_platform_id`: a masked or VLEK SEV-SNP report names no machine,
    so no platform revocation could stop it; such a policy refuses it. (The VLEK vector's
    chain is incomplete, so its claims are built from its parsed chip ID.)"""
    from secfl.errors import Refused
    from secfl.policy._canonical import canonical_bytes
    from secfl.policy._document import load_policy
    from secfl.policy._review import review
    from secfl.spm._evidence_checks import check_named
    from secfl.tee._claims import Claims
    from tests.policy import policy_dict, to_yaml

    doc = policy_dict()
    plain = load_policy(to_yaml(doc))
    doc["platforms"]["require_platform_id"] = True
    strict = load_policy(to_yaml(doc))
    assert b"require_platform_id" not in canonical_bytes(plain)  # earlier digests stand
    assert b'"require_platform_id":true' in canonical_bytes(strict)
    assert "evidence must name its machine" in "\n".join(review(strict))

    vlek = parse_report((vectors / "amd" / "snp_vlek_report.bin").read_bytes())
    masked = Claims(kind="snp", quote_version=3, measurements={}, report_data="00" * 64,
                    debug=False, tcb_status="unknown",
                    platform={"chip_id": vlek.chip_id.hex(), "signing_key": "vlek"})  # fmt: skip
    check_named(plain, masked)
    with pytest.raises(Refused, match="^platform: this snp evidence names no machine"):
        check_named(strict, masked)
    amd = vectors / "amd"
    milan = verify(
        (amd / "snp_milan_report.bin").read_bytes(),
        at=utc("2024-06-01"),
        vcek=(amd / "snp_milan_vcek.der").read_bytes(),
        chain=(amd / "ask_ark_milan.pem").read_bytes(),
    )
    check_named(strict, milan)  # a chip ID of its own: accepted


def test_an_snp_guest_the_host_can_look_into_is_refused_unless_pinned(
    sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a review: only the guest policy's DEBUG bit was enforced. The launch
    measurement covers neither the VMPL a report was asked at (a paravisor the host
    supplies at VMPL 0 sees a guest at VMPL 3) nor MIGRATE_MA (a migration agent the
    host chooses exports the guest's memory): both are refused unless pinned."""
    from secfl.errors import Refused
    from secfl.policy._document import load_policy
    from secfl.spm._evidence_checks import check_measurements
    from tests.spm.harness import AGGREGATOR_MR, policy_document

    policy = load_policy(policy_document("p", board, sim[1], accept=("snp",)))
    honest = {"measurement": AGGREGATOR_MR, "policy": 0x30000, "vmpl": 0}
    check_measurements(policy, "aggregator", "snp", honest)
    for changed, why in (({"vmpl": 3}, "asked for at VMPL 3"),
                         ({"policy": 0x70000}, "allows a migration agent")):  # fmt: skip
        with pytest.raises(Refused, match=f"^evidence: the SEV-SNP .*{why}"):
            check_measurements(policy, "aggregator", "snp", {**honest, **changed})
    # an identity that pins them accepts exactly what it pins
    doc = policy.model_dump(mode="json")
    doc["services"][0]["measurements"]["snp"] = [
        {"measurement": AGGREGATOR_MR, "vmpl": 3, "policy": 0x70000}
    ]
    pinned = load_policy(json.dumps(doc))
    check_measurements(pinned, "aggregator", "snp", {**honest, "vmpl": 3, "policy": 0x70000})


def test_a_td_is_named_by_its_firmware_kernel_and_command_line(
    sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a review: an identity pinning MRTD counted as naming code, but MRTD
    measures only the TD's virtual firmware: a host that booted its own kernel and root
    file system on the same firmware got the service's secrets."""
    import yaml

    from secfl.errors import PolicyError, Refused
    from secfl.policy._document import load_policy
    from secfl.policy._new_version import check_new_version
    from secfl.spm._evidence_checks import check_measurements
    from tests.spm.harness import policy_document

    doc = yaml.safe_load(policy_document("p", board, sim[1]))
    doc["platforms"]["accept"] = ["tdx"]
    doc["platforms"].pop("simulation_root", None)
    firmware = {"mrtd": "ab" * 48}
    whole = {**firmware, "rtmr1": "a1" * 48, "rtmr2": "a2" * 48}
    for service in doc["services"]:
        service["measurements"] = {"tdx": [firmware]}
    old = load_policy(json.dumps(doc))  # as a version stored before the rule
    with pytest.raises(PolicyError, match=r"pins no code: .*rtmr1 \(96 hex digits\) and rtmr2"):
        check_new_version(old)
    guest = {**whole, "rtmr1": "ee" * 48, "rtmr0": "00" * 48, "rtmr3": "00" * 48}
    with pytest.raises(Refused, match="^measurement: no tdx identity .* names code"):
        check_measurements(old, "aggregator", "tdx", guest)
    for service in doc["services"]:
        service["measurements"] = {"tdx": [whole]}
    new = load_policy(json.dumps(doc))
    check_new_version(new)
    check_measurements(new, "aggregator", "tdx", {**guest, **whole})
    with pytest.raises(Refused, match="^measurement: tdx measurement"):
        check_measurements(new, "aggregator", "tdx", guest)  # another kernel


def test_an_spm_in_an_snp_guest_is_held_to_the_same_rules(
    sim: tuple[Path, bytes], board: Board
) -> None:
    """The review of the fixes: a client verifying an SPM compared its measurement
    only, so an SPM at VMPL 3 or with a migration agent passed `secfl spm verify`; and
    a policy's second SEV-SNP identity that pins vmpl was never tried."""
    from secfl.errors import Refused
    from secfl.policy._document import load_policy
    from secfl.spm._evidence_checks import check_measurements
    from secfl.spm.client import expected_identity
    from secfl.tee._claims import Claims
    from tests.spm.harness import AGGREGATOR_MR, policy_document

    def claims(**changed: int) -> Claims:
        fields: dict[str, str | int] = {"measurement": AGGREGATOR_MR, "policy": 0x30000}
        return Claims(kind="snp", quote_version=3, measurements={**fields, "vmpl": 0, **changed},
                      report_data="00" * 64, debug=False, tcb_status="unknown")  # fmt: skip

    expected_identity(claims(), [AGGREGATOR_MR])
    for changed, why in (({"vmpl": 3}, "VMPL 3"), ({"policy": 0x70000}, "migration agent")):
        with pytest.raises(VerificationError, match=f"^measurement: .*{why}"):
            expected_identity(claims(**changed), [AGGREGATOR_MR])
    expected_identity(claims(vmpl=3), [AGGREGATOR_MR, f"measurement={AGGREGATOR_MR},vmpl=3"])

    doc = load_policy(policy_document("p", board, sim[1], accept=("snp",))).model_dump(mode="json")
    doc["services"][0]["measurements"]["snp"] = [
        AGGREGATOR_MR, {"measurement": AGGREGATOR_MR, "vmpl": 3}
    ]  # fmt: skip
    policy = load_policy(json.dumps(doc))
    check_measurements(policy, "aggregator", "snp", claims(vmpl=3).measurements)
    with pytest.raises(Refused, match="^evidence: .*VMPL 2"):
        check_measurements(policy, "aggregator", "snp", claims(vmpl=2).measurements)


def test_a_version_that_tightens_the_platform_rules_ends_the_sessions_it_refuses(
    sim: tuple[Path, bytes], board: Board
) -> None:
    """Found by a review: a session was checked against a new version's service and
    measurements only, so raising min_tcb_evaluation_data_number after an Intel TCB
    recovery (or refusing debug TEEs, unknown TCBs, nameless machines) reached no live
    session: their certificates stayed valid, off the revocation list."""
    import json as json_

    from secfl.policy._document import load_policy
    from secfl.spm._sessions import no_longer_accepted
    from secfl.tee._claims import Claims
    from tests.spm.harness import AGGREGATOR_MR, policy_document

    doc = load_policy(policy_document("p", board, sim[1], accept=("tdx",))).model_dump(mode="json")
    whole = {"mrtd": AGGREGATOR_MR, "rtmr1": AGGREGATOR_MR, "rtmr2": AGGREGATOR_MR}
    doc["services"][0]["measurements"] = {"tdx": [whole]}
    doc["platforms"].update(allow_unknown_tcb=True, allow_debug=True, min_tcb_status="OutOfDate")
    claims = Claims(kind="tdx", quote_version=4, measurements=whole, report_data="00" * 64,
                    debug=False, tcb_status="OutOfDate",
                    platform={"ppid": "ab" * 16, "tcb_evaluation": "17"})  # fmt: skip
    session = SessionRecord(
        token_sha256=b"\0" * 32, policy="p", service="aggregator", policy_version=1,
        expires_at=datetime.now(UTC), serial="01",
        identity=json_.dumps(claims_identity(claims)),
    )  # fmt: skip

    def version(**platforms: Any) -> Any:
        changed = json_.loads(json_.dumps(doc))
        changed.update(version=2, predecessor="ab" * 32)
        changed["platforms"].update(platforms)
        return load_policy(json_.dumps(changed))

    assert no_longer_accepted(version(), 2, session) is None
    for rules, why in (
        ({"min_tcb_evaluation_data_number": 19, "allow_unknown_tcb": False}, "evaluation 19"),
        ({"min_tcb_status": "UpToDate"}, "TCB status OutOfDate is below"),
    ):
        reason = no_longer_accepted(version(**rules), 2, session)
        assert reason is not None and why in reason, reason
