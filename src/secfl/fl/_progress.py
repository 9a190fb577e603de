"""The aggregator's progress as the SPM's audit log records it (``fl.round``).

Each round's detail (the round, how many took part, the round's value of the
policy's objective metric) goes with the increment of the round's counter, and the
SPM logs it in the same transaction at the counter value it gives
(:mod:`secfl.spm._increment`): the log never holds a round without its counter. The
board reads it with ``secfl status``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["objective_value", "round_event"]

#: Names of the round's values in its metrics entry, in the order they are looked for.
_PREFIXES = ("val_", "test_", "")


def objective_value(entry: dict[str, Any], metric: str) -> float | None:
    """The round's value of ``metric``: on the validation data if the aggregator has
    some, else on the test data; None when neither was measured or it is not finite."""
    for prefix in _PREFIXES:
        value = entry.get(f"{prefix}{metric}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value) if math.isfinite(value) else None
    return None


def round_event(
    entry: dict[str, Any],
    *,
    metric: str = "loss",
    mode: str = "min",
    run: int | None = None,
    policy_version: int | None = None,
) -> dict[str, Any]:
    """The ``round`` event's detail for one round's metrics entry (the SPM checks it
    against :class:`secfl.spm._events.RoundEvent`; it sets ``counter`` itself)."""
    detail: dict[str, Any] = {
        "round": int(entry["round"]),
        "counter": int(entry["counter"]),
        "attempt": int(entry.get("attempt", 1)),
        "participants": len(entry.get("participants") or ()),
        "dropped": len(entry.get("dropped") or ()),
        "excluded": len(entry.get("excluded") or ()),
    }
    if isinstance(entry.get("duration_s"), int | float) and math.isfinite(entry["duration_s"]):
        detail["duration_s"] = max(0.0, float(entry["duration_s"]))
    value = objective_value(entry, metric)
    if value is not None:
        detail["objective"] = {"metric": metric, "mode": mode, "value": value}
    if run is not None:
        detail["run"] = run
    if policy_version is not None:
        detail["policy_version"] = policy_version
    return detail
