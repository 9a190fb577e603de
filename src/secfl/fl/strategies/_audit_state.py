"""What the clone audit keeps across rounds, as its checkpoint holds it: the sites'
suspicion scores, the detector's history, the aggregator's secret for the round's draws
(:meth:`~._clone_audit.CloneAudit.keep_secret`) and the base rule's own state. The
checkpoint is sealed; what is read back is still checked, each value in one line."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from secfl.errors import FlError
from secfl.fl.strategies._secret import secret_from_state

if TYPE_CHECKING:
    from secfl.fl.strategies._clone_audit import CloneAudit

__all__ = ["audit_state", "load_audit_state"]


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
    # the base's state first: a base that draws at random keeps the audit's secret
    audit.base.load_state(
        {k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")}
    )
    if "secret" in state:
        audit.keep_secret(secret_from_state(state["secret"], audit.name))


def _finite_map(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and math.isfinite(v) for v in value.values()
    ):
        raise FlError(f"clone-audit: the checkpoint's {what} are malformed")
    return {str(k): float(v) for k, v in value.items()}
