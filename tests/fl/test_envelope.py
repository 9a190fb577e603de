"""Signed global models: every refusal has its own one-line message."""

from __future__ import annotations

import contextlib
import json
import struct
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl.errors import FlError
from secfl.fl._envelope import MAGIC, SignedModel, open_model, seal_model
from secfl.fl._tensors import from_bytes, to_bytes

POLICY = "sha256:" + "ab" * 32
PARAMS = to_bytes({"w": np.arange(10, dtype=np.float32)})


def keys() -> list[ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey]:
    return [ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())]


KEY_IDS = ["ed25519", "p256"]


def key_id(key) -> str:  # type: ignore[no-untyped-def]
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "p256"


def sealed(key, round: int = 5, counter: int = 12, policy: str = POLICY) -> bytes:  # type: ignore[no-untyped-def]
    return seal_model(
        PARAMS, policy_digest=policy, round=round, counter=counter, key=key
    ).to_bytes()


def open_(blob, key, last_round: int | None = 4, last_counter: int | None = 11, **kw):  # type: ignore[no-untyped-def]
    return open_model(
        blob,
        public_key=key.public_key(),
        policy_digest=kw.pop("policy", POLICY),
        last_round=last_round,
        last_counter=last_counter,
        **kw,
    )


@pytest.mark.parametrize("key", keys(), ids=KEY_IDS)
def test_valid_model_opens(key) -> None:  # type: ignore[no-untyped-def]
    payload, envelope = open_(sealed(key), key)
    assert payload == PARAMS
    assert (envelope.round, envelope.counter, envelope.policy_digest) == (5, 12, POLICY)
    assert envelope.params_size == len(PARAMS)
    assert envelope.created_at.endswith("Z")
    np.testing.assert_array_equal(from_bytes(payload)[0]["w"], np.arange(10, dtype=np.float32))
    # nothing accepted yet
    open_(sealed(key), key, last_round=None, last_counter=None)


def self_signed_certificate(key) -> x509.Certificate:  # type: ignore[no-untyped-def]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aggregator")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


@pytest.mark.parametrize("key", keys(), ids=KEY_IDS)
def test_verifies_with_the_certificate_key(key) -> None:  # type: ignore[no-untyped-def]
    cert = self_signed_certificate(key)
    payload, _ = open_model(
        sealed(key), public_key=cert, policy_digest=POLICY, last_round=0, last_counter=0
    )
    assert payload == PARAMS


@pytest.mark.parametrize("key", keys(), ids=KEY_IDS)
def test_wrong_key_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    other = keys()[KEY_IDS.index(key_id(key))]
    with pytest.raises(FlError, match=r"^signature: the model is not signed by the aggregator's"):
        open_(sealed(key), other)


def test_key_of_another_algorithm_is_refused() -> None:
    ed, p256 = keys()
    with pytest.raises(FlError, match="^signature:"):
        open_(sealed(ed), p256)
    with pytest.raises(FlError, match="^signature: unsupported key type"):
        seal_model(
            PARAMS, policy_digest=POLICY, round=1, counter=1,
            key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )  # fmt: skip
    with pytest.raises(FlError, match="^signature: give the aggregator's public key"):
        open_model(sealed(ed), public_key=ed, policy_digest=POLICY, last_round=0, last_counter=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", keys(), ids=KEY_IDS)
def test_tampered_payload_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    blob = bytearray(sealed(key))
    blob[-1] ^= 0x01
    with pytest.raises(FlError, match=r"^digest: the payload's SHA-256 is not the one"):
        open_(bytes(blob), key)
    with pytest.raises(FlError, match=r"^digest: the payload has \d+ bytes"):
        open_(sealed(key) + b"\0", key)
    # a payload swapped for another model, same size
    signed = SignedModel.from_bytes(sealed(key))
    other = to_bytes({"w": np.ones(10, dtype=np.float32)})
    assert len(other) == len(signed.payload)
    forged = SignedModel(header=signed.header, signature=signed.signature, payload=other)
    with pytest.raises(FlError, match="^digest:"):
        open_(forged, key)


@pytest.mark.parametrize("key", keys(), ids=KEY_IDS)
def test_tampered_header_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    signed = SignedModel.from_bytes(sealed(key))
    header = json.loads(signed.header)
    header["counter"] = 99
    forged = SignedModel(
        header=json.dumps(header, sort_keys=True, separators=(",", ":")).encode(),
        signature=signed.signature,
        payload=signed.payload,
    )
    with pytest.raises(FlError, match="^signature:"):
        open_(forged, key)


@pytest.mark.parametrize("key", keys(), ids=KEY_IDS)
def test_older_round_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        FlError,
        match=r"^freshness: the model's round 3 is not newer than the last accepted round 4",
    ):
        open_(sealed(key, round=3, counter=12), key)
    with pytest.raises(FlError, match=r"^freshness: the model's round 4 is not newer"):
        open_(sealed(key, round=4, counter=12), key)


@pytest.mark.parametrize("key", keys(), ids=KEY_IDS)
def test_same_or_older_counter_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        FlError, match=r"^freshness: the model's counter 11 is not newer than the last accepted 11"
    ):
        open_(sealed(key, round=5, counter=11), key)
    with pytest.raises(FlError, match=r"^freshness: the model's counter 3 is not newer"):
        open_(sealed(key, round=9, counter=3), key)


def test_replayed_model_is_refused_after_a_newer_one() -> None:
    key = keys()[0]
    old = sealed(key, round=1, counter=1)
    new = sealed(key, round=2, counter=2)
    _, accepted = open_(old, key, last_round=None, last_counter=None)
    _, accepted = open_(new, key, last_round=accepted.round, last_counter=accepted.counter)
    with pytest.raises(FlError, match="^freshness:"):
        open_(old, key, last_round=accepted.round, last_counter=accepted.counter)
    with pytest.raises(FlError, match="^freshness:"):
        open_(new, key, last_round=accepted.round, last_counter=accepted.counter)


def test_same_round_with_a_newer_counter_only_when_allowed() -> None:
    key = keys()[0]
    retry = sealed(key, round=4, counter=12)
    with pytest.raises(FlError, match="^freshness:.*round 4"):
        open_(retry, key)
    payload, _ = open_(retry, key, allow_same_round=True)
    assert payload == PARAMS


@pytest.mark.parametrize("key", keys(), ids=KEY_IDS)
def test_other_policy_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FlError, match=r"^policy: the model is for policy sha256:cdcdcdcd"):
        open_(sealed(key, policy="sha256:" + "cd" * 32), key)


def test_wire_form_prefix_then_payload() -> None:
    key = keys()[1]
    signed = seal_model(PARAMS, policy_digest=POLICY, round=1, counter=1, key=key)
    blob = signed.to_bytes()
    assert blob == signed.prefix() + signed.payload
    assert blob.startswith(MAGIC)
    (hlen,) = struct.unpack(">I", blob[8:12])
    header = json.loads(blob[12 : 12 + hlen])
    assert header["format"] == "secfl-model/v1" and header["alg"] == "ecdsa-p256-sha256"
    assert SignedModel.from_bytes(blob) == signed


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "^format: not a secfl signed model"),
        (b"NOTMAGIC" + b"\0" * 10, "^format: not a secfl signed model"),
        (MAGIC + struct.pack(">I", 1 << 30), "^format: header length"),
        (
            MAGIC + struct.pack(">I", 2) + b"{}" + struct.pack(">H", 600),
            "^format: signature length",
        ),
    ],
)
def test_malformed_wire_forms(blob: bytes, message: str) -> None:
    with pytest.raises(FlError, match=message):
        open_(blob, keys()[0])


def test_invalid_seal_arguments() -> None:
    key = keys()[0]
    with pytest.raises(FlError, match="^format: the round"):
        seal_model(PARAMS, policy_digest=POLICY, round=-1, counter=1, key=key)
    with pytest.raises(FlError, match="^format: the counter"):
        seal_model(PARAMS, policy_digest=POLICY, round=1, counter=True, key=key)
    with pytest.raises(FlError, match="^format: the policy digest"):
        seal_model(PARAMS, policy_digest="", round=1, counter=1, key=key)


_KEY = ed25519.Ed25519PrivateKey.generate()
_BLOB = sealed(_KEY)


@given(
    edits=st.lists(st.tuples(st.integers(0, len(_BLOB) - 1), st.integers(0, 255)), max_size=3),
    cut=st.integers(0, len(_BLOB)),
)
@settings(max_examples=200, deadline=None)
def test_fuzzed_models_only_raise_flerror(edits: list[tuple[int, int]], cut: int) -> None:
    blob = bytearray(_BLOB)
    for at, value in edits:
        blob[at] = value
    with contextlib.suppress(FlError):
        payload, _ = open_(bytes(blob[:cut]), _KEY)
        assert payload == PARAMS  # anything that opens is the genuine model
