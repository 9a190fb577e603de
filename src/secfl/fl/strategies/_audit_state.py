"""What the clone audit keeps across rounds, as its checkpoint holds it: the sites'
suspicion scores, the detector's history, the aggregator's secret for the round's draws
(:meth:`~._clone_audit.CloneAudit.keep_secret`) and the base rule's own state. The
checkpoint is sealed; what is read back is still checked, each value in one line."""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from secfl.errors import FlError
from secfl.fl.strategies._base import Strategy

if TYPE_CHECKING:
    from secfl.fl.strategies._clone_audit import CloneAudit

__all__ = ["audit_state", "keep_secret", "load_audit_state"]


def keep_secret(strategy: Strategy) -> None:
    """Give a rule that draws at random (the clone audit) a secret of the aggregator's
    own, drawn here inside its TEE: its draws are then unknown to the collaborators,
    who read the policy's seed. A checkpoint's state brings back the secret it ran
    with (``load_state``), so a resumed run draws as before."""
    keep = getattr(strategy, "keep_secret", None)
    if callable(keep):
        keep(secrets.token_bytes(32))


def audit_state(audit: CloneAudit) -> dict[str, Any]:
    """``audit``'s state for a checkpoint."""
    base = {f"base.{k}": v for k, v in audit.base.state().items()}
    return {
        "suspicion": dict(audit.suspicion),
        "signal_suspicion": dict(audit.signal_suspicion),
        "signals": audit.detector.state(),
        **({} if audit.secret is None else {"secret": audit.secret.hex()}),
        **base,
    }


def load_audit_state(audit: CloneAudit, state: Mapping[str, Any]) -> None:
    """Bring ``audit`` back to ``state`` (a checkpoint's)."""
    audit.suspicion = _finite_map(state.get("suspicion", {}), "suspicion scores")
    audit.signal_suspicion = _finite_map(
        state.get("signal_suspicion", {}), "signal suspicion scores"
    )
    signals = state.get("signals", {})
    if not isinstance(signals, Mapping):
        raise FlError("clone-audit: the checkpoint's signal state is malformed")
    audit.detector.load_state(signals)
    secret = state.get("secret")
    if secret is not None:
        try:
            audit.keep_secret(bytes.fromhex(secret) if isinstance(secret, str) else b"")
        except (ValueError, FlError):
            raise FlError("clone-audit: the checkpoint's secret is malformed") from None
    audit.base.load_state(
        {k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")}
    )


def _finite_map(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and math.isfinite(v) for v in value.values()
    ):
        raise FlError(f"clone-audit: the checkpoint's {what} are malformed")
    return {str(k): float(v) for k, v in value.items()}
