"""secfl's trust core: produce and verify TEE attestation evidence.

Public API::

    from secfl.tee import verify, Evidence, Claims
    claims = verify(evidence_bytes, at=when, collateral=..., sim_root=...)

- :func:`verify` — evidence in, :class:`Claims` out, or a ``VerificationError``
  naming the failed check; offline, at an explicit time.
- :class:`Evidence` — the raw quote/report plus what came with it.
- :class:`Platform`, :func:`detect_platform`, :func:`platform_by_name`,
  :class:`SimulatedPlatform` — producers.
- :func:`measure` — the workload digest a policy pins.
- :class:`IntelCollateral`, :class:`PccsClient`, :class:`KdsClient` — vendor collateral.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Claims": "secfl.tee._claims",
    "Evidence": "secfl.tee._evidence",
    "verify": "secfl.tee._verify",
    "Platform": "secfl.tee._platforms",
    "detect_platform": "secfl.tee._platforms",
    "platform_by_name": "secfl.tee._platforms",
    "SimulatedPlatform": "secfl.tee._simulated",
    "IntelCollateral": "secfl.tee._intel",
    "PccsClient": "secfl.tee._pccs",
    "KdsClient": "secfl.tee._kds",
    "measure": "secfl.tee._measure",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import on first use, so ``import secfl.tee`` stays cheap."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'secfl.tee' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
