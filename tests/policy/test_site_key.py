"""A service's site key (``site_key``): part of what the board signs, checked at load.

The SPM attests a workload as a service that names a site key only with that key's
signature over the enrolment (tests/spm/test_site_keys.py); here, the policy's side: the
key is in the canonical form (so the digest the board signs covers it), spelt one way
whatever PEM text the author wrote, left out while unset (every digest computed before
the field stands), and a key that is not an Ed25519 or P-256 public key is refused when
the policy is loaded, in one line naming the field.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from secfl.errors import PolicyError
from secfl.policy import Policy, canonical_bytes, digest, load_policy
from secfl.policy._keys import generate
from tests.policy import policy_dict, to_yaml


def _with_site_key(pem: str) -> Policy:
    data = policy_dict()
    data["services"][1]["site_key"] = pem
    return load_policy(to_yaml(data))


def test_the_site_key_is_in_the_canonical_form_and_loads_back() -> None:
    public = generate("ecdsa-p256")[1].decode()
    plain = load_policy(to_yaml(policy_dict()))
    keyed = _with_site_key(public)
    raw = canonical_bytes(keyed)
    assert b'"site_key":"-----BEGIN PUBLIC KEY-----' in raw
    assert digest(keyed) != digest(plain)
    assert digest(_with_site_key(generate("ed25519")[1].decode())) != digest(keyed)
    assert load_policy(raw) == keyed
    assert Policy.model_validate_json(raw) == keyed
    assert digest(load_policy(raw)) == digest(keyed)
    # the same key, spelt otherwise (CRLF line ends, no final newline): the same digest
    assert digest(_with_site_key(public.replace("\n", "\r\n").rstrip())) == digest(keyed)


def test_an_unset_site_key_leaves_the_canonical_form_as_it_was() -> None:
    plain = load_policy(to_yaml(policy_dict()))
    assert plain.services[1].site_key is None
    assert b"site_key" not in canonical_bytes(plain)


def _pem(key: Any) -> str:
    public = key.public_key()
    return str(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    )


SMALL_ORDER_ED25519 = (
    "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    "-----END PUBLIC KEY-----\n"
)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("not a key", "not a PEM public key"),
        (generate()[0].decode(), "not a PEM public key"),  # the private key, by mistake
        (_pem(rsa.generate_private_key(65537, 2048)), "RSA key refused"),
        (_pem(ec.generate_private_key(ec.SECP384R1())), "EC key on secp384r1 refused"),
        (SMALL_ORDER_ED25519, "an Ed25519 point of small order"),
        ("x" * 20000, "at most 16384 characters"),
    ],
)
def test_a_malformed_site_key_is_refused_at_load_in_one_line(value: str, why: str) -> None:
    with pytest.raises(PolicyError) as refused:
        _with_site_key(value)
    message = str(refused.value)
    assert message.startswith("policy: services[1].site_key: "), message
    assert why in message
    assert "\n" not in message


def test_the_review_shows_a_site_key_swapped() -> None:
    """What the board reads before it signs (`secfl policy show --against`): a version
    that swaps a site's key for its proposer's, or drops it, shows the change."""
    from secfl.policy._keys import key_id, load_public
    from secfl.policy._review import review_diff

    site, proposer = generate("ecdsa-p256")[1].decode(), generate("ed25519")[1].decode()
    old, new = _with_site_key(site), _with_site_key(proposer)
    changed = [line for line in review_diff(old, new) if line[:1] in "+-"]
    assert f"-  site key: ecdsa-p256 {key_id(load_public(site))}" in changed
    assert f"+  site key: ed25519 {key_id(load_public(proposer))}" in changed
    dropped = review_diff(old, load_policy(to_yaml(policy_dict())))
    assert "+  site key: (none: any host whose TEE it accepts may enrol as it)" in dropped


def test_two_services_naming_one_site_key_are_refused() -> None:
    """A key two services name lets its holder enrol as either, a second seat: a
    proposer who gave site-b site-a's key (the review shows each service's key ID, not
    that two are the same) is refused at load, whatever the PEM's spelling."""
    public = generate("ed25519")[1].decode()
    data = policy_dict()
    data["services"].append({**copy.deepcopy(data["services"][1]), "name": "other"})
    data["services"][1]["site_key"] = public
    data["services"][-1]["site_key"] = public.replace("\n", "\r\n")
    with pytest.raises(PolicyError) as refused:
        load_policy(to_yaml(data))
    message = str(refused.value)
    last = len(data["services"]) - 1
    assert message.startswith(f"policy: services[{last}].site_key: service "), message
    assert "names the same key: its holder could enrol as either" in message
    assert "\n" not in message
    data["services"][-1]["site_key"] = generate("ed25519")[1].decode()  # its own: loads
    assert load_policy(to_yaml(data)).service("other") is not None
