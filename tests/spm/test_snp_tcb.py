"""The SPM holds an SEV-SNP report's TCB against the board's floor (`min_snp_tcb`).

A review found that SEV-SNP's TCB was never checked: the verifier says `unknown` (AMD
publishes no appraisal), the claims left the report's TCB out, and a policy could not
set a minimum. So every SNP report was refused unless the policy set
`allow_unknown_tcb`, with a message to start the SPM with `--pccs`, and that same flag
let a host that blocks the SPM's PCCS skip the appraisal of Intel quotes. Now the
claims give `reported_tcb` (which the VCEK is certified for), `min_snp_tcb` sets a
floor per product line, and `allow_unknown_tcb` may name the kinds it covers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secfl.errors import PolicyError, Refused
from secfl.fl._policy_check import check_ready
from secfl.policy import digest
from secfl.policy._document import load_policy
from secfl.policy._model import Policy
from secfl.policy._review import review
from secfl.spm._amd_crl import AmdCrls
from secfl.spm._collateral import CollateralSource
from secfl.spm._evidence_checks import (
    check_measurements,
    claims_identity,
)
from secfl.spm._revocation import session_identity
from secfl.tee._evidence import Evidence
from secfl.tee._intel_quote import parse_quote
from secfl.tee._snp_report import build_cert_table, parse_report
from tests.conftest import utc
from tests.localhttp import local_server
from tests.spm.harness import Board, policy_document
from tests.tee.test_pccs import pcs_routes, vector

MILAN_AT = utc("2024-06-01")
#: No CRL a test can make is signed by AMD's ARK, so the real vectors are checked as
#: by an SPM started with --no-amd-crl, under a policy that allows it
#: (tests/spm/test_amd_crl.py checks CRLs).
UNCHECKED = AmdCrls(None)


def check_evidence(
    policy: Policy, evidence: bytes, now: Any, collateral: CollateralSource | None = None
) -> Any:
    from secfl.spm._evidence_checks import check_evidence as check

    return check(unchecked_allowed(policy), evidence, now, collateral, UNCHECKED)


def unchecked_allowed(policy: Policy) -> Policy:
    """``policy`` accepting evidence unchecked against AMD's CRLs, as these are."""
    platforms = policy.platforms.model_copy(update={"allow_unchecked_amd_crl": True})
    return policy.model_copy(update={"platforms": platforms})


def platform_refusal(policy: Policy, identity: dict[str, Any]) -> str | None:
    from secfl.spm._evidence_checks import platform_refusal as refusal

    return refusal(unchecked_allowed(policy), identity)


#: The Milan vector's reported_tcb, 0x7308000000000003.
MILAN_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


@pytest.fixture(scope="module")
def board() -> Board:
    return Board.create()


def snp_evidence(vectors: Path) -> bytes:
    amd = vectors / "amd"
    ask, ark = [
        c.public_bytes(serialization.Encoding.DER)
        for c in x509.load_pem_x509_certificates((amd / "ask_ark_milan.pem").read_bytes())
    ]
    vcek = (amd / "snp_milan_vcek.der").read_bytes()
    aux = build_cert_table({"vcek": vcek, "ask": ask, "ark": ark})
    report = (amd / "snp_milan_report.bin").read_bytes()
    return Evidence(kind="snp", quote=report, aux=aux).to_json().encode()


def document(board: Board, vectors: Path, platforms: dict[str, Any]) -> str:
    """SNP (the Milan vector) and TDX (the outdated v5 quote) services, ``platforms``."""
    accept = tuple(platforms["accept"])
    doc = yaml.safe_load(policy_document("mixed", board, b"", accept=accept))
    doc["platforms"] = platforms
    report = parse_report((vectors / "amd" / "snp_milan_report.bin").read_bytes())
    tdx = parse_quote(vector(vectors, "tdx_v5_quote_outdated")[0])
    td = {k: tdx.field(k).hex() for k in ("mrtd", "rtmr1", "rtmr2")}
    for service in doc["services"]:
        pins = {"snp": [report.measurement.hex()], "tdx": [td]}
        service["measurements"] = {k: v for k, v in pins.items() if k in accept}
    return yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False)  # no YAML aliases


def rules(board: Board, vectors: Path, **platforms: Any) -> Policy:
    return load_policy(document(board, vectors, platforms))


def test_snp_claims_give_the_tcb_the_vcek_is_certified_for(vectors: Path) -> None:
    from secfl.tee._snp_report import tcb_from_text, tcb_text

    claims = check_evidence(
        rules(board=Board.create(), vectors=vectors, accept=["snp"], allow_unknown_tcb=True),
        snp_evidence(vectors),
        MILAN_AT,
    )
    assert claims.platform["reported_tcb"] == "bootloader=3,tee=0,snp=8,microcode=115"
    assert claims.platform["committed_tcb"] == claims.platform["current_tcb"]
    assert tcb_from_text(claims.platform["reported_tcb"]) == MILAN_TCB
    # Turin's layout: FMC in byte 0, then bootloader, TEE, SNP; microcode in byte 7
    turin = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little")
    assert tcb_text(turin, "Turin") == "fmc=1,bootloader=2,tee=3,snp=4,microcode=9"
    assert tcb_from_text("bootloader=3,bootloader=4") is None


def test_an_snp_report_is_held_against_the_boards_floor(board: Board, vectors: Path) -> None:
    evidence = snp_evidence(vectors)
    at_floor = rules(board, vectors, accept=["snp"], min_snp_tcb={"Milan": MILAN_TCB})
    claims = check_evidence(at_floor, evidence, MILAN_AT)  # no allow_unknown_tcb needed
    assert claims.tcb_status == "unknown"  # still no vendor appraisal: the floor decides
    above = {"Milan": {**MILAN_TCB, "microcode": 116}}
    with pytest.raises(Refused) as info:
        check_evidence(rules(board, vectors, accept=["snp"], min_snp_tcb=above), evidence, MILAN_AT)
    assert str(info.value) == (
        "tcb: the SEV-SNP reported_tcb has microcode=115, below the policy's "
        "min_snp_tcb.Milan.microcode=116: the host must run AMD firmware and microcode at "
        "or above the floor"
    )
    genoa = {"Genoa": MILAN_TCB}
    # a floor does not pass because allow_unknown_tcb is set too
    lenient = rules(board, vectors, accept=["snp"], min_snp_tcb=above, allow_unknown_tcb=True)
    with pytest.raises(Refused, match=r"^tcb: the SEV-SNP reported_tcb has microcode=115"):
        check_evidence(lenient, evidence, MILAN_AT)
    with pytest.raises(Refused, match=r"^tcb: the policy's min_snp_tcb has no floor for Milan "):
        check_evidence(rules(board, vectors, accept=["snp"], min_snp_tcb=genoa), evidence, MILAN_AT)


def test_a_guest_launched_below_the_floor_is_refused_after_a_firmware_update(
    board: Board, vectors: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: firmware updated under a running guest reports the new TCB
    (reported_tcb), but the guest was launched and measured by the old firmware
    (launch_tcb), which the floor did not weigh. The report's signature check is
    stood in for (AMD's firmware would sign such a report; no test can)."""
    from secfl.tee import _amd

    raw = bytearray((vectors / "amd" / "snp_milan_report.bin").read_bytes())
    old = int.from_bytes(bytes([1, 0, 0, 0, 0, 0, 1, 1]), "little")  # bootloader, snp, ucode 1
    raw[0x1F0:0x1F8] = old.to_bytes(8, "little")
    monkeypatch.setattr(_amd, "_check_signature", lambda *_: None)
    report = parse_report(bytes(raw))
    assert report.launch_tcb == old
    amd = vectors / "amd"
    ask, ark = [
        c.public_bytes(serialization.Encoding.DER)
        for c in x509.load_pem_x509_certificates((amd / "ask_ark_milan.pem").read_bytes())
    ]
    aux = build_cert_table({"vcek": (amd / "snp_milan_vcek.der").read_bytes(), "ask": ask,
                            "ark": ark})  # fmt: skip
    evidence = Evidence(kind="snp", quote=bytes(raw), aux=aux).to_json().encode()
    floor = rules(board, vectors, accept=["snp"], min_snp_tcb={"Milan": MILAN_TCB})
    with pytest.raises(Refused) as info:
        check_evidence(floor, evidence, MILAN_AT)
    assert str(info.value) == (
        "tcb: the SEV-SNP launch_tcb has bootloader=1, below the policy's "
        "min_snp_tcb.Milan.bootloader=3: the host must run AMD firmware and microcode at or "
        "above the floor and launch the guest again on it"
    )
    claims = check_evidence(floor, snp_evidence(vectors), MILAN_AT)
    assert claims.platform["launch_tcb"] == claims.platform["reported_tcb"]  # the vector's
    identity = claims_identity(claims)
    assert platform_refusal(floor, identity) is None
    identity["snp_tcb"]["launch_tcb"] = "bootloader=1,tee=0,snp=1,microcode=1"
    assert "launch_tcb has bootloader=1" in (platform_refusal(floor, identity) or "")


def test_the_snp_refusal_says_what_the_board_can_set(board: Board, vectors: Path) -> None:
    """It said to start the SPM with --pccs, which appraises Intel evidence only."""
    with pytest.raises(Refused) as info:
        check_evidence(rules(board, vectors, accept=["snp"]), snp_evidence(vectors), MILAN_AT)
    text = str(info.value)
    assert text.startswith("tcb: SEV-SNP has no vendor TCB appraisal") and "\n" not in text
    assert "min_snp_tcb" in text and "allow_unknown_tcb: [snp]" in text and "pccs" not in text


def test_accepting_snp_no_longer_waives_intels_appraisal(
    board: Board, vectors: Path, tmp_path: Path
) -> None:
    """With allow_unknown_tcb: [snp] the SNP report attests, and a TDX quote whose
    collateral the host withholds (it blocks the PCCS) is refused, not accepted
    `unknown`; allow_unknown_tcb: true still means every kind, as before, with a warning."""
    quote, collateral = vector(vectors, "tdx_v5_quote_outdated")
    snp_only = rules(board, vectors, accept=["snp", "tdx"], allow_unknown_tcb=["snp"])
    assert check_evidence(snp_only, snp_evidence(vectors), MILAN_AT).kind == "snp"
    everything = rules(board, vectors, accept=["snp", "tdx"], allow_unknown_tcb=True)
    assert check_evidence(everything, snp_evidence(vectors), MILAN_AT).kind == "snp"
    blocked = pytest.raises(Refused, match="^collateral: the SPM has no collateral")
    with local_server() as pccs:  # answers nothing: a host blocking the PCCS
        with CollateralSource(pccs.url, tmp_path / "c1") as coll, blocked:
            check_evidence(snp_only, quote, utc("2026-03-01"), coll)
        with CollateralSource(pccs.url, tmp_path / "c2") as coll:  # unchanged meaning
            assert check_evidence(everything, quote, utc("2026-03-01"), coll).kind == "tdx"
        pccs.routes.update(pcs_routes(collateral, "tdx", "90C06F000000", "platform", spaced=False))
        outdated = pytest.raises(Refused, match="tcb: No matching TCB level")
        with CollateralSource(pccs.url, tmp_path / "c3") as coll, outdated:
            check_evidence(snp_only, quote, utc("2026-03-01"), coll)
    warnings = [w for w in check_ready(everything) if w.startswith("platforms.")]
    assert len(warnings) == 1 and "a host can force by blocking the SPM's PCCS" in warnings[0]
    assert "allow_unknown_tcb: [snp]" in warnings[0]
    assert f"  warning: {warnings[0]}" in review(everything)
    assert not [w for w in check_ready(snp_only) if w.startswith("platforms.")]
    assert any("; unknown TCB accepted for snp only;" in line for line in review(snp_only))


def test_the_new_fields_are_checked_and_keep_old_digests(board: Board, vectors: Path) -> None:
    def refused(**platforms: Any) -> str:
        with pytest.raises(PolicyError) as info:
            rules(board, vectors, **platforms)
        return str(info.value)

    assert "platforms.allow_unknown_tcb: 'tdx' is not in platforms.accept" in refused(
        accept=["snp"], allow_unknown_tcb=["tdx"]
    )
    assert "allow_unknown_tcb: lists snp, whose TCB min_snp_tcb checks" in refused(
        accept=["snp"], allow_unknown_tcb=["snp"], min_snp_tcb={"Milan": MILAN_TCB}
    )
    assert "min_snp_tcb: Turin: give fmc too" in refused(
        accept=["snp"], min_snp_tcb={"Turin": MILAN_TCB}
    )
    assert "min_snp_tcb: Milan: fmc is Turin's alone; leave it out" in refused(
        accept=["snp"], min_snp_tcb={"Milan": {**MILAN_TCB, "fmc": 1}}
    )
    assert "min_snp_tcb" in refused(accept=["snp"], min_snp_tcb={"Milan": {"bootloader": 3}})
    assert "requires an appraised TCB, which allow_unknown_tcb waives for tdx" in refused(
        accept=["snp", "tdx"], allow_unknown_tcb=["tdx"], min_tcb_evaluation_data_number=17
    )
    # an Intel evaluation floor and SNP without a floor go together now
    rules(board, vectors, accept=["snp", "tdx"], allow_unknown_tcb=["snp"],
          min_tcb_evaluation_data_number=17)  # fmt: skip
    # the order of the kinds means nothing; the fields left out keep the digest
    a = rules(board, vectors, accept=["snp", "tdx"], allow_unknown_tcb=["tdx", "snp"])
    b = rules(board, vectors, accept=["snp", "tdx"], allow_unknown_tcb=["snp", "tdx"])
    assert digest(a) == digest(b)
    plain = rules(board, vectors, accept=["snp"], allow_unknown_tcb=True)
    assert set(plain.platforms.model_dump()) == {
        "accept", "min_tcb_status", "allow_unknown_tcb", "allow_debug", "simulation_root"
    }  # fmt: skip
    floor = rules(board, vectors, accept=["snp"], min_snp_tcb={"Milan": MILAN_TCB})
    assert floor.platforms.model_dump()["min_snp_tcb"] == {"Milan": MILAN_TCB}
    assert "  SEV-SNP Milan: reported TCB at least bootloader=3, tee=0, snp=8, microcode=115" in (
        review(floor)
    )


def test_a_version_that_raises_the_floor_ends_the_sessions_below_it(
    board: Board, vectors: Path
) -> None:
    first = rules(board, vectors, accept=["snp"], min_snp_tcb={"Milan": MILAN_TCB})
    claims = check_evidence(first, snp_evidence(vectors), MILAN_AT)
    check_measurements(first, "aggregator", "snp", dict(claims.measurements))
    identity = claims_identity(claims)
    assert platform_refusal(first, identity) is None
    raised = rules(board, vectors, accept=["snp"], min_snp_tcb={"Milan": {**MILAN_TCB, "snp": 9}})
    assert "reported_tcb has snp=8, below the policy's min_snp_tcb.Milan.snp=9" in str(
        platform_refusal(raised, identity)
    )
    # a session attested before the claims gave the TCB: a floor cannot vouch for it
    stored = {k: v for k, v in identity.items() if k != "snp_tcb"}
    assert "gives no reported_tcb and launch_tcb to hold against min_snp_tcb" in str(
        platform_refusal(first, stored)
    )
    from datetime import UTC, datetime

    from secfl._internal.canonical import canonical_json
    from secfl.spm._records import SessionRecord  # the identity as a session stores it

    record = SessionRecord(
        token_sha256=b"\0" * 32, policy="mixed", service="aggregator", policy_version=1,
        expires_at=datetime.now(UTC), serial="01",
        identity=canonical_json(identity).decode(),
    )  # fmt: skip
    assert platform_refusal(first, session_identity(record)) is None
    assert platform_refusal(raised, session_identity(record)) is not None
