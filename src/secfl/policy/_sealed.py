"""The shape of an imported secret's ``sealed`` value, checked before anyone signs.

Only the SPM can open a sealed value (it is sealed to the SPM's key), so a value
that is not one at all (a truncated paste, a key file's text, ``garbage``) would
otherwise pass ``secfl policy validate`` and ``sign`` and be refused only when the
signed policy is submitted. What ``secfl policy seal-secret`` writes has a shape
anyone can check: base64 of an HPKE ciphertext (P-256, AES-256-GCM), that is a
65-byte uncompressed P-256 point (the encapsulated key), then the encrypted value
and its 16-byte tag (:func:`secfl.spm._sealing.seal_imported`).
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric import ec

from secfl.errors import PolicyError
from secfl.policy._model import Policy
from secfl.policy._todo import TODO

__all__ = ["check_sealed", "sealed_problem"]

#: The encapsulated key, the AES-GCM tag, and at least one byte of value.
_POINT = 65
_MIN_BYTES = _POINT + 16 + 1


def sealed_problem(text: str) -> str | None:
    """What makes ``text`` not a sealed value, or None if it has the shape of one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "it is not base64"
    if len(raw) < _MIN_BYTES:
        return f"{len(raw)} bytes, fewer than the {_MIN_BYTES} of the shortest sealed value"
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw[:_POINT])
    except ValueError:
        return "it does not start with a P-256 key"
    return None


def check_sealed(policy: Policy) -> None:
    """Refuse, in one line, an imported secret whose ``sealed`` value is not one
    (placeholders are left to :func:`secfl.policy._todo.check_no_todos`)."""
    for secret in policy.secrets:
        sealed = getattr(secret, "sealed", None)
        if secret.kind != "imported" or not isinstance(sealed, str):
            continue
        if sealed[: len(TODO)].lower() == TODO.lower():
            continue
        problem = sealed_problem(sealed)
        if problem is not None:
            raise PolicyError(
                f"secrets: '{secret.name}': its sealed value is not what `secfl policy "
                f"seal-secret` writes ({problem}); have the key's owner seal it again and "
                "paste the whole line"
            )
