"""Policies: the document a board agrees on, its canonical digest, board signatures.

A policy is YAML validated into :class:`Policy` (:func:`load_policy`); its
:func:`digest` is over a canonical form (:mod:`secfl.policy._canonical`) that
depends on content only; board members approve a version with detached
:class:`Signature` objects (:func:`sign_policy`), and :func:`check_approval`
applies the board's m-of-n rule (over distinct keys). :mod:`secfl.policy._keys`
makes and loads the members' keys.
"""

from __future__ import annotations

from secfl.policy._canonical import canonical_bytes, digest
from secfl.policy._document import load_policy, load_policy_file
from secfl.policy._model import (
    Board,
    Counter,
    Injection,
    Member,
    Platforms,
    Policy,
    Service,
    VolumeSpec,
)
from secfl.policy._secrets import (
    AesSecret,
    CaSecret,
    CertSecret,
    ImportedSecret,
    KeyPairSecret,
    RandomSecret,
    Secret,
)
from secfl.policy._signatures import (
    POLICY_DOMAIN,
    REVOCATION_DOMAIN,
    Signature,
    check_approval,
    sign_policy,
    sign_statement,
    verify_statement,
)

__all__ = [
    "POLICY_DOMAIN",
    "REVOCATION_DOMAIN",
    "AesSecret",
    "Board",
    "CaSecret",
    "CertSecret",
    "Counter",
    "ImportedSecret",
    "Injection",
    "KeyPairSecret",
    "Member",
    "Platforms",
    "Policy",
    "RandomSecret",
    "Secret",
    "Service",
    "Signature",
    "VolumeSpec",
    "canonical_bytes",
    "check_approval",
    "digest",
    "load_policy",
    "load_policy_file",
    "sign_policy",
    "sign_statement",
    "verify_statement",
]
