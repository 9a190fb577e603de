"""The one AEAD of secfl: AES-256-GCM under a 256-bit key that also derives sub-keys.

Sealed blob: ``version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)``;
the version byte is authenticated with the caller's associated data. Nonces are
random (96 bits): a key seals at most a few billion blobs, far more than any secfl
key does (the SPM's master key, a policy's data key, a checkpoint key).

Refusals raise ``error`` (the caller's error class, default :class:`SpmError`), one
line, so each component words them in its own terms.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secfl.errors import SecflError, SpmError

KEY_SIZE = 32
NONCE_SIZE = 12
#: First byte of every sealed blob; bumped if the format ever changes.
FORMAT_V1 = 0x01
_DERIVE_INFO = b"secfl/derive/v1\n"


class AeadKey:
    """A 256-bit key that seals (AES-256-GCM) and derives sub-keys (HKDF-SHA256).

    Sealed blob: ``version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)``;
    the version byte is authenticated with the caller's ``aad``.
    """

    def __init__(self, key: bytes, *, error: type[SecflError] = SpmError) -> None:
        self._error = error
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
            raise error(f"secrets: a key must be {KEY_SIZE} bytes")
        self._key = bytes(key)
        self._aead = AESGCM(self._key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{KEY_SIZE} bytes hidden>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        header = bytes([FORMAT_V1])
        return header + nonce + self._aead.encrypt(nonce, bytes(plaintext), header + bytes(aad))

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < 1 + NONCE_SIZE + 16:
            raise self._error(f"secrets: a sealed value of {len(blob)} bytes is truncated")
        if blob[0] != FORMAT_V1:
            raise self._error(f"secrets: a sealed value has unknown format version {blob[0]}")
        nonce, body = blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :]
        try:
            return self._aead.decrypt(nonce, body, blob[:1] + bytes(aad))
        except InvalidTag:
            raise self._error(
                "secrets: cannot open a sealed value (wrong key, modified data or wrong context)"
            ) from None

    def derive(self, label: str) -> bytes:
        """A 32-byte sub-key for ``label`` (e.g. "audit"), independent of every other label."""
        if not label:
            raise self._error("secrets: a derived key needs a label")
        return HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_SIZE,
            salt=None,
            info=_DERIVE_INFO + label.encode("utf-8"),
        ).derive(self._key)
