"""Every error secfl raises on purpose.

Each message names the check that failed, in one line, so that the CLI can print
it as ``error: <message>`` without a traceback.
"""

from __future__ import annotations


class SecflError(Exception):
    """Base class: a refusal or a user mistake, never a bug."""


class VerificationError(SecflError):
    """Attestation evidence was refused; the message names the failed check."""


class PlatformError(SecflError):
    """A TEE platform could not produce evidence (missing device, kernel refusal...)."""


class FetchError(SecflError):
    """Collateral or certificates could not be fetched from a PCCS/PCS or AMD KDS."""


class MeasurementError(SecflError):
    """A workload could not be measured (unreadable file, unsupported file type...)."""


class PolicyError(SecflError):
    """A policy document is invalid or a policy decision refused a request."""


class ShieldError(SecflError):
    """A shielded volume is tampered, truncated, out of date or the key is wrong."""


class SpmError(SecflError):
    """The Security Policy Manager refused a request or its state is unusable."""


class IntegrityError(SpmError):
    """The SPM's database was modified or rolled back outside the SPM."""


class AuditError(SecflError):
    """The audit log does not verify: an entry was modified, removed or reordered."""


class LaunchError(SecflError):
    """``secfl run`` refused to start a workload (SPM, attestation, volume or injection)."""


class FlError(SecflError):
    """The federated runtime refused a model, an update, a checkpoint or a setting."""
