"""Pinned vendor roots of trust.

Only fingerprints live here (SHA-256 of the DER certificate). The certificates
themselves arrive with the evidence (Intel's chain inside the quote; AMD's ASK and
ARK from KDS, a configfs-tsm auxblob or ``--chain``) and are accepted as roots
only when their fingerprint is pinned below.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AMD_ARK_SHA256",
    "INTEL_SGX_ROOT_CA_SHA256",
]

#: Intel SGX Root CA: the anchor for SGX and TDX PCK chains, TCB info and QE identity.
INTEL_SGX_ROOT_CA_SHA256: Final = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

#: AMD Root Keys (ARK), one per product line; self-signed RSA-4096, RSA-PSS SHA-384.
AMD_ARK_SHA256: Final[dict[str, str]] = {
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}
