"""A digest of zeros names no code (found by a review).

An SEV-SNP guest launched without an ID block reports id_key_digest and
author_key_digest of all zeros, whatever code it runs; no SGX enclave has a signer of
zeros. An identity pinning one of them as zeros counted as naming code: a policy
`{id_key_digest: 00...}` accepted any such guest, and a client expecting it any SPM.
A new version is now refused naming the field, a version stored before accepts
nothing by it, and a client does not trust an SPM by it. The same for a TD's RTMR1
and RTMR2, which stay zero when its boot measures nothing into them (Intel's own
outdated-platform quote reports both as zeros): pinned as zeros, they accepted any
kernel and root file system on that firmware.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from secfl.errors import PolicyError, Refused, VerificationError
from secfl.policy._document import load_policy
from secfl.policy._new_version import check_new_version
from secfl.spm._evidence_checks import check_measurements
from secfl.spm.client import expected_identity
from secfl.tee._verify import verify
from tests.conftest import utc
from tests.spm.harness import Board, policy_document

ZEROS = "00" * 48


def milan(vectors: Path) -> Any:
    amd = vectors / "amd"
    return verify(
        (amd / "snp_milan_report.bin").read_bytes(),
        at=utc("2024-06-01"),
        vcek=(amd / "snp_milan_vcek.der").read_bytes(),
        chain=(amd / "ask_ark_milan.pem").read_bytes(),
    )


def pinning(kind: str, identity: dict[str, Any]) -> Any:
    doc = yaml.safe_load(policy_document("p", Board.create(), b"", accept=(kind,)))
    for service in doc["services"]:
        service["measurements"] = {kind: [dict(identity)]}
    return load_policy(json.dumps(doc))  # as a version stored before the rule


@pytest.mark.parametrize(
    ("kind", "field"),
    [("snp", "id_key_digest"), ("snp", "author_key_digest"), ("sgx", "mrsigner")],
)
def test_a_new_version_may_not_pin_code_by_zeros(kind: str, field: str) -> None:
    zeros = "00" * (48 if kind == "snp" else 32)
    with pytest.raises(PolicyError) as info:
        check_new_version(pinning(kind, {field: zeros}))
    text = str(info.value)
    assert text.startswith(
        f"policy: services.aggregator.measurements.{kind}[0].{field} is all zeros, which "
        "every workload launched without that key reports whatever code it runs: pin "
    )
    assert "\n" not in text
    check_new_version(pinning(kind, {field: "ab" * (len(zeros) // 2)}))  # a real key
    if kind == "snp":  # "this code, launched without an ID block": still a fine identity
        check_new_version(pinning(kind, {"measurement": "cd" * 48, field: zeros}))


@pytest.mark.parametrize("field", ["rtmr1", "rtmr2"])
def test_a_new_version_may_not_pin_a_tds_kernel_by_zeros(field: str) -> None:
    td = {"mrtd": "ab" * 48, "rtmr1": "cd" * 48, "rtmr2": "ef" * 48}
    with pytest.raises(PolicyError) as info:
        check_new_version(pinning("tdx", {**td, field: ZEROS}))
    assert str(info.value).startswith(
        f"policy: services.aggregator.measurements.tdx[0].{field} is all zeros, which every "
        "workload whose boot extended nothing into it reports whatever code it runs: pin mrtd "
    )
    check_new_version(pinning("tdx", td))


def test_a_td_that_measured_no_kernel_is_not_trusted_by_zeros(vectors: Path) -> None:
    """Intel's TDX v5 quote: a TD whose RTMR1 and RTMR2 are zeros (nothing measured)."""
    from secfl.tee._intel_quote import parse_quote

    quote = parse_quote((vectors / "intel" / "tdx_v5_quote_outdated.bin").read_bytes())
    td = {k: quote.field(k).hex() for k in ("mrtd", "rtmr1", "rtmr2")}
    assert td["rtmr1"] == td["rtmr2"] == ZEROS
    with pytest.raises(Refused, match="^measurement: no tdx identity .* names code"):
        check_measurements(pinning("tdx", td), "aggregator", "tdx", td)


def test_a_stored_version_accepts_no_guest_by_zeros(vectors: Path) -> None:
    claims = milan(vectors)
    assert claims.measurements["id_key_digest"] == ZEROS  # launched without an ID block
    stored = pinning("snp", {"id_key_digest": ZEROS})
    for measurement in (claims.measurements["measurement"], "ab" * 48):
        with pytest.raises(Refused, match="^measurement: no snp identity .* names code"):
            check_measurements(
                stored, "aggregator", "snp", {**claims.measurements, "measurement": measurement}
            )
    exact = pinning(
        "snp", {"measurement": claims.measurements["measurement"], "id_key_digest": ZEROS}
    )
    check_measurements(exact, "aggregator", "snp", dict(claims.measurements))


def test_a_client_does_not_trust_an_spm_by_zeros(vectors: Path) -> None:
    claims = milan(vectors)
    for field in ("id_key_digest", "author_key_digest"):
        with pytest.raises(VerificationError) as info:
            expected_identity(claims, [f"{field}={ZEROS}"])
        assert str(info.value).startswith(
            f"measurement: the expected {field}=00000000… is all zeros, which every snp SPM "
            "launched without that key reports whatever it runs: expect measurement "
        )
    expected_identity(claims, [f"measurement={claims.measurements['measurement']}"])
    with pytest.raises(VerificationError, match="^measurement: the SPM runs snp measurement"):
        expected_identity(claims, [f"measurement={'ab' * 48},id_key_digest={ZEROS}"])
