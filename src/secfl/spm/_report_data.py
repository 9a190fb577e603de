"""What report_data binds, on both sides of an attestation.

- The SPM attests itself to clients: ``SHA-512(nonce || SHA-256(SPKI of its TLS key))``,
  so a client that checks the evidence knows which TLS key it may trust.
- A workload attests to the SPM: ``SHA-512`` of the canonical JSON of
  ``{nonce, hpke_public_key, csr_public_key_sha256}`` (hex values), so the secrets
  sealed to that HPKE key and the certificate issued for that CSR key can only
  reach the attested workload, and only for this one nonce.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from secfl._internal.canonical import canonical_json

__all__ = ["csr_public_key_sha256", "spki_sha256", "spm_report_data", "workload_report_data"]


def spki_sha256(public_key: PublicKeyTypes) -> str:
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def spm_report_data(nonce: bytes, tls_spki_sha256: str) -> bytes:
    """The report_data of the SPM's own evidence for ``nonce``."""
    return hashlib.sha512(nonce + bytes.fromhex(tls_spki_sha256)).digest()


def workload_report_data(nonce: bytes, hpke_public_key: bytes, csr_public_key_sha256: str) -> bytes:
    """The report_data a workload must present for ``nonce``, its HPKE key and its CSR key."""
    doc = {
        "csr_public_key_sha256": csr_public_key_sha256,
        "hpke_public_key": hpke_public_key.hex(),
        "nonce": nonce.hex(),
    }
    return hashlib.sha512(canonical_json(doc)).digest()


def csr_public_key_sha256(csr: x509.CertificateSigningRequest) -> str:
    """The SHA-256 of the CSR key's SubjectPublicKeyInfo (what the evidence binds)."""
    return spki_sha256(csr.public_key())
