"""A policy's secret declarations: each kind and its settings, and which placeholder
selectors (``$$SECFL::name:selector$$``) render which kinds, publicly or not.

The SPM generates or imports each declared secret and renders the parts a service
asks for (:mod:`secfl.spm._sealing`); the tables here are what the policy's
references are checked against (:mod:`secfl.policy._references`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from secfl.policy._fields import MAX_ITEMS, Name, StrictModel

__all__ = [
    "PUBLIC_SELECTORS",
    "RAW_KINDS",
    "SELECTOR_KINDS",
    "AesSecret",
    "CaSecret",
    "CertSecret",
    "ImportedSecret",
    "KeyPairSecret",
    "RandomSecret",
    "Secret",
]

#: Secret kinds whose value is raw bytes (rendered as hex, base64 or text).
RAW_KINDS = frozenset({"aes-256", "random", "imported"})
_X509 = frozenset({"x509", "x509-ca"})
_KEYED = _X509 | {"ed25519", "ecdsa-p256"}

#: Which secret kinds each placeholder selector applies to: exactly those for
#: which :func:`secfl.spm._sealing.render` gives text (``hex`` and ``base64``
#: encode raw bytes, which only the raw kinds have). A bare placeholder applies
#: to every kind.
SELECTOR_KINDS: dict[str, frozenset[str]] = {
    "crt": _X509,
    "chain": _X509,
    "key": _KEYED,
    "pub": _KEYED,
    "hex": RAW_KINDS,
    "base64": RAW_KINDS,
}

#: Per kind, the selectors (``None``: a bare placeholder) that render public text:
#: certificates and public keys. Anything else renders secret material, which
#: may never go on a command line (``inject.args``: every local user sees it in
#: ``ps``); there, a public part must also be named explicitly (``:crt``,
#: ``:chain``, ``:pub``), as the launcher checks without knowing the kinds.
PUBLIC_SELECTORS: dict[str, frozenset[str | None]] = {
    "x509": frozenset({None, "crt", "chain", "pub"}),
    "x509-ca": frozenset({None, "crt", "chain", "pub"}),
    "ed25519": frozenset({"pub"}),
    "ecdsa-p256": frozenset({"pub"}),
}


class _SecretBase(StrictModel):
    name: Name


class AesSecret(_SecretBase):
    kind: Literal["aes-256"]


class RandomSecret(_SecretBase):
    kind: Literal["random"]
    size: int = Field(ge=1, le=65536)


class KeyPairSecret(_SecretBase):
    kind: Literal["ed25519", "ecdsa-p256"]


class CaSecret(_SecretBase):
    kind: Literal["x509-ca"]
    common_name: str = Field(min_length=1, max_length=64)
    validity_days: int = Field(default=3650, ge=1, le=36500)


_CertUsage = Literal["server", "client"]
_CERT_USAGES: tuple[_CertUsage, ...] = ("server", "client")


class CertSecret(_SecretBase):
    kind: Literal["x509"]
    issuer: Name
    common_name: str = Field(min_length=1, max_length=64)
    sans: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list, max_length=MAX_ITEMS
    )
    usage: list[_CertUsage] = Field(default_factory=lambda: list(_CERT_USAGES), min_length=1)
    validity_days: int = Field(default=365, ge=1, le=3650)
    renew_before_days: int = Field(default=30, ge=0, le=3650)


class ImportedSecret(_SecretBase):
    """A value given by a board member, sealed to the SPM (``secfl policy seal-secret``)."""

    kind: Literal["imported"]
    sealed: str = Field(min_length=1, max_length=1 << 17)


Secret = Annotated[
    AesSecret | RandomSecret | KeyPairSecret | CaSecret | CertSecret | ImportedSecret,
    Field(discriminator="kind"),
]
