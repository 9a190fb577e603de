"""The master key (sealing, derivation, the simulated key file), policy data keys,
Shamir sharing, and recovery of a policy key by the board."""

from __future__ import annotations

import base64
import itertools
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from secfl._internal import shamir
from secfl._internal.aead import AeadKey
from secfl.errors import SpmError
from secfl.policy._model import Policy
from secfl.spm._masterkey import (
    KEY_FILE,
    MasterKey,
    load_or_create_master_key,
    new_policy_key,
    open_secret,
    seal_secret,
    unwrap_policy_key,
    wrap_policy_key,
)
from secfl.spm._recovery import (
    Share,
    open_share,
    recover_policy_key,
    seal_shares,
    shares_sha256,
)

# --- sealing and derivation -----------------------------------------------------------------


def test_seal_open_round_trip_and_format() -> None:
    key = MasterKey.generate()
    blob = key.seal(b"secret value", b"context")
    assert blob[0] == 0x01 and len(blob) == 1 + 12 + len(b"secret value") + 16
    assert key.open(blob, b"context") == b"secret value"
    assert key.seal(b"secret value", b"context") != blob  # random nonce
    assert key.open(key.seal(b"", b""), b"") == b""
    assert "hidden" in repr(key) and blob.hex() not in repr(key)


@pytest.mark.parametrize("case", ["wrong key", "modified", "wrong aad", "truncated", "version"])
def test_open_refuses(case: str) -> None:
    key = MasterKey.generate()
    blob = key.seal(b"secret value", b"context")
    opener, aad = key, b"context"
    if case == "wrong key":
        opener = MasterKey.generate()
    elif case == "modified":
        blob = blob[:-1] + bytes([blob[-1] ^ 1])
    elif case == "wrong aad":
        aad = b"other"
    elif case == "truncated":
        blob = blob[:20]
    else:
        blob = b"\x02" + blob[1:]
    with pytest.raises(SpmError, match="^secrets: ") as info:
        opener.open(blob, aad)
    assert "\n" not in str(info.value)


def test_derive() -> None:
    key = MasterKey(bytes(32))
    audit = key.derive("audit")
    assert len(audit) == 32 and audit == MasterKey(bytes(32)).derive("audit")
    assert audit != key.derive("audit2") != MasterKey(b"\x01" * 32).derive("audit")
    with pytest.raises(SpmError):
        key.derive("")
    with pytest.raises(SpmError, match="32 bytes"):
        MasterKey(b"short")


# --- the simulated sealing: a key file ------------------------------------------------------


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "spm"
    first = load_or_create_master_key(data)
    path = data / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert path.stat().st_size == 32
    assert [p.name for p in data.iterdir()] == [KEY_FILE]  # no temp file left behind
    second = load_or_create_master_key(data)
    blob = first.seal(b"x", b"")
    assert second.open(blob, b"") == b"x"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_master_key(tmp_path)
    os.chmod(tmp_path / KEY_FILE, mode)
    with pytest.raises(SpmError, match=f"has mode {mode:04o}; group and others"):
        load_or_create_master_key(tmp_path)


def test_key_file_wrong_size_or_symlink(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"short")
    os.chmod(tmp_path / KEY_FILE, 0o600)
    with pytest.raises(SpmError, match="holds 5 bytes, expected 32"):
        load_or_create_master_key(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    load_or_create_master_key(other)
    (tmp_path / KEY_FILE).unlink()
    (tmp_path / KEY_FILE).symlink_to(other / KEY_FILE)
    with pytest.raises(SpmError, match="cannot open the master key"):
        load_or_create_master_key(tmp_path)


# --- policy data keys -----------------------------------------------------------------------


def test_policy_keys_are_bound_to_their_policy() -> None:
    master = MasterKey.generate()
    key = new_policy_key()
    assert len(key) == 32 and key != new_policy_key()
    wrapped = wrap_policy_key(master, "fl", key)
    assert unwrap_policy_key(master, "fl", wrapped) == key
    with pytest.raises(SpmError, match="^secrets: cannot open"):
        unwrap_policy_key(master, "other", wrapped)
    with pytest.raises(SpmError, match="^secrets: cannot open"):
        unwrap_policy_key(MasterKey.generate(), "fl", wrapped)
    sealed = seal_secret(key, "fl", "ca", b"PEM...")
    assert open_secret(key, "fl", "ca", sealed) == b"PEM..."
    with pytest.raises(SpmError):
        open_secret(key, "fl", "tls", sealed)  # moved to another secret
    assert isinstance(AeadKey(key), AeadKey)


# --- Shamir ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=48),
    threshold=st.integers(min_value=1, max_value=6),
    extra=st.integers(min_value=0, max_value=4),
    data=st.data(),
)
def test_shamir_any_threshold_shares_recover(
    secret: bytes, threshold: int, extra: int, data: st.DataObject
) -> None:
    shares = shamir.split(secret, threshold, threshold + extra)
    assert [x for x, _ in shares] == list(range(1, threshold + extra + 1))
    assert all(len(s) == len(secret) for _, s in shares)
    chosen = data.draw(st.permutations(shares))[: data.draw(st.integers(threshold, len(shares)))]
    assert shamir.combine(chosen) == secret


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=16, max_size=48),
    threshold=st.integers(min_value=2, max_value=6),
    data=st.data(),
)
def test_shamir_fewer_shares_give_another_value(
    secret: bytes, threshold: int, data: st.DataObject
) -> None:
    # 16+ byte secrets: a chance match of the interpolation is below 2^-128.
    shares = shamir.split(secret, threshold, threshold + 2)
    count = data.draw(st.integers(1, threshold - 1))
    chosen = data.draw(st.permutations(shares))[:count]
    assert shamir.combine(chosen) != secret


def test_shamir_refuses_bad_parameters() -> None:
    for args, message in [
        ((b"", 2, 3), "non-empty"),
        ((b"s", 0, 3), "at least 1"),
        ((b"s", 4, 3), "cannot meet a threshold"),
        ((b"s", 2, 256), "at most 255"),
    ]:
        with pytest.raises(ValueError, match=message):
            shamir.split(*args)
    shares = shamir.split(b"secret", 2, 3)
    for bad, message in [
        ([], "no shares"),
        ([shares[0], shares[0]], "given twice"),
        ([(0, b"abcdef")], "not in 1..255"),
        ([(256, b"abcdef")], "not in 1..255"),
        ([shares[0], (2, b"abc")], "different lengths"),
        ([(1, b"")], "non-empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            shamir.combine(bad)
    assert shamir.split(b"same", 1, 3) == [(1, b"same"), (2, b"same"), (3, b"same")]


# --- recovery by the board ------------------------------------------------------------------


def _pem_pair(kind: str) -> tuple[bytes, bytes]:
    private: x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey
    if kind == "x25519":
        private = x25519.X25519PrivateKey.generate()
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return (
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


@pytest.fixture(scope="module")
def board() -> dict[str, tuple[bytes, bytes]]:
    """Three members, (private PEM, public PEM): two X25519 keys and one P-256 key."""
    return {"alice": _pem_pair("x25519"), "bob": _pem_pair("p256"), "carol": _pem_pair("x25519")}


def _recover(
    shares: list[Share],
    shares_json: str,
    board: dict[str, tuple[bytes, bytes]],
    required: tuple[str, ...] = (),
) -> bytes:
    """Recover as the board does: checked against its policy (here only what recovery
    reads of it: name, version, threshold, members' recovery keys) and the audit log."""
    members = [SimpleNamespace(name=m, recovery_key=pub.decode()) for m, (_, pub) in board.items()]
    policy = SimpleNamespace(
        name="fl",
        version=1,
        board=SimpleNamespace(threshold=2, required=list(required), members=members),
    )
    return recover_policy_key(
        shares, shares_json, cast(Policy, policy), audited=shares_sha256(shares_json)
    )


def test_board_recovers_with_any_two_of_three(board: dict[str, tuple[bytes, bytes]]) -> None:
    key = new_policy_key()
    shares_json = seal_shares(key, "fl", {m: pub for m, (_, pub) in board.items()}, 2)
    doc = json.loads(shares_json)
    assert doc["threshold"] == 2 and doc["policy"] == "fl"
    assert sorted(doc["shares"]) == ["alice", "bob", "carol"]
    assert doc["shares"]["bob"]["kem"] == "P256" and doc["shares"]["alice"]["kem"] == "X25519"
    assert key.hex() not in shares_json
    opened = {m: open_share(shares_json, m, private) for m, (private, _) in board.items()}
    for pair in itertools.combinations(board, 2):
        shares = [opened[m] for m in pair]
        assert recover_policy_key(shares) == key
        assert _recover(shares, shares_json, board) == key
    assert _recover(list(opened.values()), shares_json, board) == key
    # One share alone does not give the key, and with the document it is refused.
    assert recover_policy_key([opened["alice"]]) != key
    with pytest.raises(SpmError, match="1 share\\(s\\) of distinct members given, the board's"):
        _recover([opened["alice"]], shares_json, board)
    # A share of another key is caught by the check value.
    stranger = open_share(
        seal_shares(new_policy_key(), "fl", {m: pub for m, (_, pub) in board.items()}, 2),
        "bob",
        board["bob"][0],
    )
    with pytest.raises(SpmError, match="do not recombine to the policy key"):
        _recover([opened["alice"], stranger], shares_json, board)


def test_share_with_the_wrong_member_key(board: dict[str, tuple[bytes, bytes]]) -> None:
    shares_json = seal_shares(new_policy_key(), "fl", {m: p for m, (_, p) in board.items()}, 2)
    with pytest.raises(SpmError, match="share of 'alice' is sealed to key sha256:") as info:
        open_share(shares_json, "alice", board["carol"][0])
    assert "not to the key given" in str(info.value)
    with pytest.raises(SpmError, match="share of 'alice' is sealed to key"):
        open_share(shares_json, "alice", board["bob"][0])  # P-256 key for an X25519 share
    with pytest.raises(SpmError, match="no share for member 'dave'"):
        open_share(shares_json, "dave", board["alice"][0])
    with pytest.raises(SpmError, match="not an unencrypted PEM private key"):
        open_share(shares_json, "alice", b"garbage")
    signing = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(SpmError, match="not X25519 or P-256"):
        open_share(shares_json, "alice", signing)


def test_modified_shares_do_not_open(board: dict[str, tuple[bytes, bytes]]) -> None:
    shares_json = seal_shares(new_policy_key(), "fl", {m: p for m, (_, p) in board.items()}, 2)
    doc = json.loads(shares_json)
    # The policy name is bound through HPKE's info: renaming the policy breaks every share.
    renamed = json.dumps({**doc, "policy": "other"})
    with pytest.raises(SpmError, match="does not open"):
        open_share(renamed, "alice", board["alice"][0])
    sealed = bytearray(base64.b64decode(doc["shares"]["alice"]["sealed"]))
    sealed[-1] ^= 1
    doc["shares"]["alice"]["sealed"] = base64.b64encode(bytes(sealed)).decode()
    with pytest.raises(SpmError, match="does not open"):
        open_share(json.dumps(doc), "alice", board["alice"][0])
    with pytest.raises(SpmError, match="not JSON"):
        open_share("{", "alice", board["alice"][0])


def test_seal_shares_refuses_bad_input(board: dict[str, tuple[bytes, bytes]]) -> None:
    keys = {m: p for m, (_, p) in board.items()}
    with pytest.raises(SpmError, match="names no recovery keys"):
        seal_shares(new_policy_key(), "fl", {}, 1)
    with pytest.raises(SpmError, match="threshold 4 must be between 1 and the 3"):
        seal_shares(new_policy_key(), "fl", keys, 4)
    with pytest.raises(SpmError, match="not a PEM public key"):
        seal_shares(new_policy_key(), "fl", {**keys, "dave": b"nope"}, 2)
    p384 = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SpmError, match="use X25519 or P-256"):
        seal_shares(new_policy_key(), "fl", {**keys, "dave": p384}, 2)
    # PEM given as str works as well as bytes.
    one = seal_shares(new_policy_key(), "fl", {"alice": keys["alice"].decode()}, 1)
    got = open_share(one, "alice", board["alice"][0].decode())
    assert got.x == 1 and got.part is None and recover_policy_key([got]) == got.value
    assert recover_policy_key([(got.x, got.value)]) == got.value


def test_required_members_hold_a_part_of_the_key(board: dict[str, tuple[bytes, bytes]]) -> None:
    """Every pair that recovers includes each required member; the others learn nothing."""
    keys = {m: p for m, (_, p) in board.items()}
    key = new_policy_key()
    shares_json = seal_shares(key, "fl", keys, 2, required=["bob"])
    assert json.loads(shares_json)["required"] == ["bob"]
    opened = {m: open_share(shares_json, m, private) for m, (private, _) in board.items()}
    assert opened["bob"].part is not None and opened["alice"].part is None
    for pair in itertools.combinations(board, 2):
        shares = [opened[m] for m in pair]
        if "bob" in pair:
            assert _recover(shares, shares_json, board, ("bob",)) == key
        else:
            assert recover_policy_key(shares) != key
            with pytest.raises(SpmError, match="required member 'bob' is missing"):
                _recover(shares, shares_json, board, ("bob",))
    # bob's Shamir point without his part is no help either.
    point = opened["bob"]._replace(part=None)
    assert recover_policy_key([opened["alice"], point]) != key
    with pytest.raises(SpmError, match="required member 'dave' has no recovery key"):
        seal_shares(key, "fl", keys, 2, required=["dave"])
