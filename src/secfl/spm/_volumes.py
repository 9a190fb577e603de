"""The proof that records a rollback-protected volume's release with the SPM.

Recording version V of a volume moves its counter on, and refuses every older
release afterwards. Whoever may record can therefore brick a volume (record
version 2^62) or pin an old one. A session token alone must not be enough: the
record carries an HMAC under a key derived from the volume's own key, which the
SPM released only to the attested launcher that opens the volume, over the policy,
the volume's name, the version, the tag and the session. The launcher computes it
after it opened and verified the volume.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secfl._internal.canonical import canonical_json

__all__ = ["check_record_proof", "record_proof"]

_INFO = b"secfl/volume-record/v1"


def _record_key(volume_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(volume_key)


def record_proof(
    volume_key: bytes, policy: str, volume: str, version: int, tag: str, token_sha256: str
) -> str:
    """HMAC-SHA256 (hex) vouching for (policy, volume, version, tag) in one session."""
    message = canonical_json(
        {"policy": policy, "volume": volume, "version": version, "tag": tag.lower(),
         "session": token_sha256}
    )  # fmt: skip
    return hmac.new(_record_key(volume_key), message, hashlib.sha256).hexdigest()


def check_record_proof(
    volume_key: bytes,
    policy: str,
    volume: str,
    version: int,
    tag: str,
    token_sha256: str,
    proof: str,
) -> bool:
    """Whether ``proof`` is :func:`record_proof` of this release under ``volume_key``
    (compared in constant time; an empty key proves nothing)."""
    if not volume_key or not isinstance(proof, str):
        return False
    expected = record_proof(volume_key, policy, volume, version, tag, token_sha256)
    return hmac.compare_digest(expected, proof.lower())
