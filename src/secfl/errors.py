"""Every error secfl raises on purpose.

Each message names the check that failed, in one line, so that the CLI can print
it as ``error: <message>`` without a traceback.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "CollateralFault",
    "CounterMoved",
    "DemoError",
    "DivergedError",
    "FetchError",
    "FlError",
    "FlowerError",
    "IntegrityError",
    "LaunchError",
    "MeasurementError",
    "PlatformError",
    "PolicyError",
    "Refused",
    "SecflError",
    "ShieldError",
    "SpmError",
    "SpmRefused",
    "StaleRevocations",
    "TaskError",
    "TransportError",
    "UsageError",
    "VerificationError",
]


class SecflError(Exception):
    """Base class: a refusal or a user mistake, never a bug."""


class VerificationError(SecflError):
    """Attestation evidence was refused; the message names the failed check."""


class CollateralFault(VerificationError):
    """A copy of Intel's collateral failed a check of its own, whatever the quote and
    the time (its signature, its form, a limit): the SPM does not verify that copy
    again (an expired or not yet valid copy, or a refusal by dcap-qvl, may be the
    quote's or the clock's and is verified again)."""


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


class FlowerError(SecflError):
    """A Flower SuperLink or SuperNode under secfl refused to start or to run an app
    (a flag that weakens it, an unapproved app, a key not from the policy)."""


class TaskError(SecflError):
    """A task, its data or its training configuration was refused (one line, says why)."""


class DivergedError(TaskError):
    """Training reached a non-finite loss: the model it started from, or the learning
    rate, is broken."""


class UsageError(SecflError):
    """A user's mistake on the command line (bad option value, unreadable file)."""


class DemoError(SecflError):
    """The demonstration could not run (a process failed to start or died)."""


class Refused(SpmError):
    """A request the SPM refuses on purpose; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class SpmRefused(SpmError):
    """The SPM answered a client with a refusal; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class CounterMoved(FlError):
    """A compare-and-increment found the counter at another value than expected (another
    workload moved it); ``seen`` is that value where known. The counter is unchanged."""

    def __init__(self, seen: int | None) -> None:
        where = f"is at {seen}" if seen is not None else "moved"
        super().__init__(f"counter: the counter {where}")
        self.seen = seen


class TransportError(SecflError):
    """The federation's transport refused a peer or a message, or a call failed."""


class StaleRevocations(TransportError):
    """No peer is accepted because the board's revocation list could not be read for too
    long: a passing state (the SPM unreachable), not a refusal of the peer."""
