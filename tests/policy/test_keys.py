"""Board keys: only Ed25519 and ECDSA P-256 sign; recovery keys are X25519 or P-256."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519

from secfl.errors import PolicyError
from secfl.policy import _keys as keys


def _pems(key: object) -> tuple[bytes, bytes]:
    private = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private, keys.public_pem(key.public_key())  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_generated_board_keys_load_and_match(kind: keys.KeyKind) -> None:
    private_pem, public_pem = keys.generate(kind)
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    private = keys.load_private(private_pem)
    public = keys.load_public(public_pem.decode())
    assert keys.key_kind(private) == keys.key_kind(public) == kind
    assert keys.public_pem(private.public_key()) == public_pem
    assert keys.key_id(public) == keys.key_id(private.public_key())
    assert len(keys.key_id(public)) == 64


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(PolicyError, match="key kind 'rsa' is not one of ed25519, ecdsa-p256"):
        keys.generate("rsa")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "what"),
    [
        (rsa.generate_private_key(65537, 2048), "RSA key"),
        (ec.generate_private_key(ec.SECP384R1()), "EC key on secp384r1"),
        (ed448.Ed448PrivateKey.generate(), "Ed448 key"),
        (x25519.X25519PrivateKey.generate(), "X25519 key"),
    ],
    ids=["rsa", "p384", "ed448", "x25519"],
)
def test_other_key_types_are_refused_as_board_keys(key: object, what: str) -> None:
    private_pem, public_pem = _pems(key)
    with pytest.raises(PolicyError) as info:
        keys.load_private(private_pem)
    assert str(info.value) == (f"board signing key: {what} refused (Ed25519 or ECDSA P-256 only)")
    with pytest.raises(PolicyError) as info:
        keys.load_public(public_pem)
    assert str(info.value) == f"board public key: {what} refused (Ed25519 or ECDSA P-256 only)"


def test_garbage_and_encrypted_keys_are_refused() -> None:
    with pytest.raises(PolicyError, match="^board public key: not a PEM public key$"):
        keys.load_public(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(PolicyError, match="^board signing key: not a PEM private key"):
        keys.load_private("not a key")
    public_pem = keys.generate()[1]
    with pytest.raises(PolicyError, match="not a PEM private key"):
        keys.load_private(public_pem)
    encrypted = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(PolicyError, match="the key is encrypted; a password is needed"):
        keys.load_private(encrypted)
    assert keys.key_kind(keys.load_private(encrypted, password=b"secret")) == "ed25519"


def test_recovery_keys_are_x25519_or_p256() -> None:
    private_pem, public_pem = keys.generate_recovery()
    assert isinstance(keys.load_recovery_public(public_pem), x25519.X25519PublicKey)
    assert isinstance(keys.load_recovery_private(private_pem), x25519.X25519PrivateKey)
    p256 = ec.generate_private_key(ec.SECP256R1())
    assert isinstance(keys.load_recovery_public(_pems(p256)[1]), ec.EllipticCurvePublicKey)
    with pytest.raises(PolicyError, match=r"^recovery public key: Ed25519 key refused"):
        keys.load_recovery_public(keys.generate("ed25519")[1])
    with pytest.raises(PolicyError, match=r"^recovery key: RSA key refused"):
        keys.load_recovery_private(_pems(rsa.generate_private_key(65537, 2048))[0])


def test_private_keys_are_written_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    private_pem, _ = keys.generate()
    assert keys.write_private(path, private_pem) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == private_pem
    with pytest.raises(PolicyError, match="refusing to overwrite the existing key"):
        keys.write_private(path, b"other")
    assert path.read_bytes() == private_pem

    path.chmod(0o644)
    keys.write_private(path, b"replaced", overwrite=True)
    assert path.read_bytes() == b"replaced"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    with pytest.raises(PolicyError, match="cannot write"):
        keys.write_private(tmp_path / "missing" / "k.key", private_pem)


def test_overwriting_a_key_replaces_a_planted_link_and_never_writes_through_it(
    tmp_path: Path,
) -> None:
    """``keygen --force`` over a symbolic link someone planted at the key's path:
    the key must not be written into the file the link points to (it may be
    readable by others, or be another file of the user's)."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"someone else's file")
    victim.chmod(0o644)
    path = tmp_path / "alice.key"
    path.symlink_to(victim)
    private_pem, _ = keys.generate()

    with pytest.raises(PolicyError, match="refusing to overwrite the existing key"):
        keys.write_private(path, private_pem)
    keys.write_private(path, private_pem, overwrite=True)

    assert victim.read_bytes() == b"someone else's file"
    assert not path.is_symlink() and path.read_bytes() == private_pem
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.key", "victim.txt"]


def test_a_dangling_link_at_a_new_key_path_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    path.symlink_to(tmp_path / "not-yet")
    with pytest.raises(PolicyError, match="refusing to overwrite the existing key"):
        keys.write_private(path, keys.generate()[0])
    assert path.is_symlink() and not (tmp_path / "not-yet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.key"]


P25519 = 2**255 - 19
ORDER_8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85")


def _ed25519_pem(raw: bytes) -> str:
    return (
        ed25519.Ed25519PublicKey.from_public_bytes(raw)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ((1).to_bytes(32, "little"), "small order"),  # the identity point
        (bytes(32), "small order"),  # order 4
        (ORDER_8, "small order"),
        ((P25519 + 1).to_bytes(32, "little"), "non-canonical"),  # the identity again, y = p+1
        ((P25519 + 5).to_bytes(32, "little"), "non-canonical"),
    ],
)
def test_weak_ed25519_board_keys_are_refused(raw: bytes, why: str) -> None:
    """Found by a review: with a small-order key, the signature (R = identity, S = 0)
    verifies for messages nobody signed, and a second encoding of one point passed the
    one-key-one-member check as another key."""
    with pytest.raises(PolicyError, match=f"^board public key: .*{why}"):
        keys.load_public(_ed25519_pem(raw))


HIGH_BIT_TWIN = int.from_bytes(
    x25519.X25519PrivateKey.generate().public_key().public_bytes_raw(), "little"
) | (1 << 255)


def _x25519_pem(u: int) -> str:
    return (
        x25519.X25519PublicKey.from_public_bytes(u.to_bytes(32, "little"))
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    ("u", "why"),
    [
        (0, "small order"),
        (1, "small order"),
        (P25519 - 1, "small order"),
        (P25519 + 3, "non-canonical"),
        (HIGH_BIT_TWIN, "non-canonical"),  # another member's key, the ignored top bit set
    ],
    ids=["0", "1", "p-1", "p+3", "top-bit"],  # (one is random: the same id in each worker)
)
def test_weak_x25519_recovery_keys_are_refused(u: int, why: str) -> None:
    """Found by a review: a small-order recovery key passed validation, and the SPM
    then failed (500) sealing the data key's share to it, after accepting the board's
    signatures."""
    with pytest.raises(PolicyError, match=f"^recovery public key: .*{why}"):
        keys.load_recovery_public(_x25519_pem(u))
    keys.load_recovery_public(keys.generate_recovery()[1])  # a real one loads
