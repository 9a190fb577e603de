"""Transaction operations on monotonic state: counters and rollback-protected volume versions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from secfl.errors import SpmError
from secfl.spm._tx_base import TxBase
from secfl.spm.records import to_us
from secfl.spm.schema import Q_COUNTER, Q_INCREMENT, counters_table, volume_tags_table


class CounterOps(TxBase):
    """Counters and volume tags (part of :class:`secfl.spm.store.Tx`)."""

    # -- counters
    def create_counter(self, policy: str, name: str) -> None:
        """Create the counter at 0; nothing happens if it exists."""
        if self.get_counter(policy, name) is None:
            self._insert(
                counters_table,
                {"policy": policy, "name": name, "value": 0},
                f"counter: '{name}' of policy '{policy}' was created concurrently",
            )

    def increment(self, policy: str, name: str) -> int:
        """Add one to the counter and return the new value (durable at commit)."""
        row = self._w().execute(Q_INCREMENT, {"b_policy": policy, "b_name": name}).first()
        if row is None:
            raise SpmError(f"counter: '{name}' of policy '{policy}' does not exist")
        return int(row.value)

    def get_counter(self, policy: str, name: str) -> int | None:
        row = self._c().execute(Q_COUNTER, {"b_policy": policy, "b_name": name}).first()
        return None if row is None else int(row.value)

    def list_counters(self, policy: str) -> dict[str, int]:
        t = counters_table
        rows = self._c().execute(select(t.c.name, t.c.value).where(t.c.policy == policy))
        return {r.name: int(r.value) for r in rows}

    # -- rollback-protected volumes
    def get_volume_tag(self, policy: str, volume: str) -> tuple[int, str] | None:
        """The newest (version, tag) recorded for a rollback-protected volume."""
        t = volume_tags_table
        row = (
            self._c()
            .execute(select(t.c.version, t.c.tag).where(t.c.policy == policy, t.c.volume == volume))
            .first()
        )
        return None if row is None else (int(row.version), str(row.tag))

    def set_volume_tag(
        self, policy: str, volume: str, version: int, tag: str, at: datetime
    ) -> None:
        """Record (version, tag) as the newest release of a volume (the caller checks
        that it is newer)."""
        t = volume_tags_table
        values = {"version": int(version), "tag": tag, "at": to_us(at, "at")}
        done = self._w().execute(
            update(t).where(t.c.policy == policy, t.c.volume == volume).values(**values)
        )
        if done.rowcount == 0:
            self._insert(
                t,
                {"policy": policy, "volume": volume, **values},
                f"store: volume '{volume}' of policy '{policy}' was recorded concurrently",
            )
