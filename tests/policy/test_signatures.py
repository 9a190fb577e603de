"""Board signatures: domain-separated statements and the m-of-n approval rule."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from secfl.errors import PolicyError
from secfl.policy import (
    POLICY_DOMAIN,
    REVOCATION_DOMAIN,
    Board,
    Policy,
    Signature,
    check_approval,
    digest,
    load_policy,
    sign_policy,
    sign_statement,
    verify_statement,
)
from secfl.policy._keys import generate
from secfl.policy._signatures import statement
from tests.policy import member_keys, policy_dict, to_yaml


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(to_yaml(policy_dict()))


def sign(policy: Policy, member: str) -> Signature:
    return sign_policy(policy, member_keys()[member][0], member)


def refused(board: Board, digest_hex: str, sigs: list[Signature], **kw: Any) -> str:
    with pytest.raises(PolicyError) as info:
        check_approval(board, digest_hex, sigs, **kw)
    return str(info.value)


def test_the_signed_message_is_domain_separated() -> None:
    d = "ab" * 32
    assert statement(POLICY_DOMAIN, d) == b"secfl/policy/v1\n" + d.encode()
    with pytest.raises(PolicyError, match="not a valid domain"):
        statement("secfl/policy/v1\nx", d)
    with pytest.raises(PolicyError, match="must be a SHA-256 digest"):
        statement(POLICY_DOMAIN, d.upper())


@pytest.mark.parametrize("member", ["alice", "bob"], ids=["ed25519", "ecdsa-p256"])
def test_each_algorithm_signs_and_verifies(policy: Policy, member: str) -> None:
    sig = sign(policy, member)
    assert sig.member == member
    assert sig.algorithm == ("ed25519" if member == "alice" else "ecdsa-p256")
    assert sig.domain == POLICY_DOMAIN and sig.digest == digest(policy)
    verify_statement(POLICY_DOMAIN, digest(policy), sig, member_keys()[member][1])
    # Checked independently: Ed25519 over the statement, ECDSA over its SHA-256 (DER).
    public = serialization.load_pem_public_key(member_keys()[member][1])
    message = b"secfl/policy/v1\n" + digest(policy).encode()
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(sig.raw, message)
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(sig.raw, message, ec.ECDSA(hashes.SHA256()))


def test_signatures_round_trip_through_json(policy: Policy) -> None:
    sig = sign(policy, "bob")
    text = sig.to_json()
    assert text.endswith("}\n")
    assert Signature.from_json(text) == sig
    assert Signature.from_json(text.encode()) == sig


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not json", "signature: not a JSON signature document"),
        ("[]", "signature: must be a mapping of fields"),
        ('{"member": "a"}', "signature: algorithm: missing required field (and 3 more errors)"),
    ],
)
def test_bad_signature_files_are_one_line(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        Signature.from_json(text)
    assert str(info.value) == expected


def test_signature_fields_are_checked(policy: Policy) -> None:
    good = sign(policy, "alice").model_dump()
    for field, value, expected in [
        ("extra", 1, "signature: extra: unknown field"),
        ("algorithm", "rsa", "signature: algorithm: input should be 'ed25519' or 'ecdsa-p256'"),
        ("digest", "AB" * 32, "signature: digest: string should match pattern"),
        ("signature", "!!!!", "signature: signature: not standard base64"),
    ]:
        with pytest.raises(PolicyError) as info:
            Signature.from_json(json.dumps({**good, field: value}))
        assert str(info.value).startswith(expected)


def test_two_of_three_approve(policy: Policy) -> None:
    sigs = [sign(policy, "carol"), sign(policy, "bob")]
    assert check_approval(policy.board, digest(policy), sigs) == ["bob", "carol"]
    everyone = [sign(policy, m) for m in ("alice", "bob", "carol")]
    assert check_approval(policy.board, digest(policy), everyone) == ["alice", "bob", "carol"]


def test_one_of_three_is_refused_with_the_count(policy: Policy) -> None:
    assert refused(policy.board, digest(policy), [sign(policy, "alice")]) == (
        "approval: 1 valid signature(s) of the 2 required"
    )
    assert refused(policy.board, digest(policy), []) == (
        "approval: 0 valid signature(s) of the 2 required"
    )


def test_the_same_member_twice_counts_once(policy: Policy) -> None:
    # ECDSA signatures are randomised: two different valid signatures by bob.
    first, second = sign(policy, "bob"), sign(policy, "bob")
    assert first.signature != second.signature
    assert refused(policy.board, digest(policy), [first, second]) == (
        "approval: 1 valid signature(s) of the 2 required"
    )
    assert check_approval(policy.board, digest(policy), [first, second, sign(policy, "alice")]) == [
        "alice",
        "bob",
    ]


def test_a_required_member_must_sign(policy: Policy) -> None:
    board = policy.board.model_copy(update={"required": ["alice"]})
    sigs = [sign(policy, "bob"), sign(policy, "carol")]
    assert refused(board, digest(policy), sigs) == (
        "approval: required member 'alice' has not signed"
    )
    assert check_approval(board, digest(policy), [*sigs, sign(policy, "alice")]) == [
        "alice",
        "bob",
        "carol",
    ]


def test_a_signature_over_another_digest_is_refused(policy: Policy) -> None:
    other = load_policy(to_yaml({**policy_dict(), "name": "other-policy"}))
    sigs = [sign(policy, "alice"), sign(other, "bob")]
    message = refused(policy.board, digest(policy), sigs)
    assert message.startswith("approval: signature by 'bob' is over another digest (")
    # what to do next (a signature of the previous version given again, say)
    assert message.endswith(
        "…): it approves another version, an edited file or other flags; bob signs this one again"
    ), message


def test_a_signature_in_another_domain_is_refused(policy: Policy) -> None:
    d = digest(policy)
    revocation = sign_statement(REVOCATION_DOMAIN, d, member_keys()["bob"][0], "bob")
    verify_statement(REVOCATION_DOMAIN, d, revocation, member_keys()["bob"][1])
    assert refused(policy.board, d, [sign(policy, "alice"), revocation]) == (
        "approval: signature by 'bob' is for 'secfl/revocation/v1', not 'secfl/policy/v1'"
    )
    # Relabelled as a policy signature, it does not verify: the domain is signed.
    relabelled = revocation.model_copy(update={"domain": POLICY_DOMAIN})
    assert refused(policy.board, d, [sign(policy, "alice"), relabelled]) == (
        "approval: invalid signature by 'bob'"
    )
    # And the revocation rule works the same way.
    approvals = [
        sign_statement(REVOCATION_DOMAIN, d, member_keys()[m][0], m) for m in ("alice", "carol")
    ]
    assert check_approval(policy.board, d, approvals, domain=REVOCATION_DOMAIN) == [
        "alice",
        "carol",
    ]


def test_a_tampered_signature_is_refused(policy: Policy) -> None:
    for member in ("alice", "bob"):
        sig = sign(policy, member)
        raw = bytearray(sig.raw)
        raw[len(raw) // 2] ^= 1
        tampered = sig.model_copy(update={"signature": base64.b64encode(bytes(raw)).decode()})
        assert refused(policy.board, digest(policy), [sign(policy, "carol"), tampered]) == (
            f"approval: invalid signature by '{member}'"
        )


def test_a_signature_by_the_wrong_key_is_refused(policy: Policy) -> None:
    impostor = sign_policy(policy, generate("ed25519")[0], "alice")
    assert refused(policy.board, digest(policy), [impostor, sign(policy, "bob")]) == (
        "approval: invalid signature by 'alice'"
    )
    wrong_algorithm = sign_policy(policy, generate("ecdsa-p256")[0], "alice")
    assert refused(policy.board, digest(policy), [wrong_algorithm]) == (
        "approval: invalid signature by 'alice': made with ecdsa-p256, but the member's key "
        "is ed25519"
    )


def test_a_non_member_signer_is_named(policy: Policy) -> None:
    outsider = sign_policy(policy, generate("ed25519")[0], "mallory")
    sigs = [sign(policy, "alice"), sign(policy, "bob"), outsider]
    assert refused(policy.board, digest(policy), sigs) == (
        "approval: signature by unknown member 'mallory'"
    )


def test_sign_statement_refuses_bad_input() -> None:
    key = member_keys()["alice"][0]
    with pytest.raises(PolicyError, match="not a valid member name"):
        sign_statement(POLICY_DOMAIN, "ab" * 32, key, "not a name")
    with pytest.raises(PolicyError, match="must be a SHA-256 digest"):
        sign_statement(POLICY_DOMAIN, "abc", key, "alice")
    with pytest.raises(PolicyError, match="board signing key"):
        sign_statement(POLICY_DOMAIN, "ab" * 32, generate("ed25519")[1], "alice")
