"""What one round of the clone audit found (:mod:`._clone_audit`), as reported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AuditRound"]


@dataclass
class AuditRound:
    """What one round's audit found."""

    round: int
    scores: dict[str, float]
    suspicion: dict[str, float]
    excluded: list[str]
    clone_utilities: list[float]
    seconds: float
    base_seconds: float = 0.0
    #: The real aggregate scored below the best clone by more than ``guard``: the
    #: round committed the best clone's model instead.
    fell_back: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "excluded": self.excluded,
            "suspicion": {k: round(v, 4) for k, v in sorted(self.suspicion.items())},
            # the update-space signals' own suspicion (``_detection``), when they run
            "signal_suspicion": {
                k: round(v, 4) for k, v in sorted(self.extra.get("signal_suspicion", {}).items())
            },
            "scores": {k: round(v, 4) for k, v in sorted(self.scores.items())},
            "clones": len(self.clone_utilities),
            "fell_back": self.fell_back,
            # "median": the exclusions left too few for the base rule (module docstring)
            **({"kept_rule": self.extra["kept_rule"]} if "kept_rule" in self.extra else {}),
            "audit_seconds": round(self.seconds, 4),
            "aggregate_seconds": round(self.base_seconds, 4),
        }
