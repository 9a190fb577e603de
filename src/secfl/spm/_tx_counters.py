"""``tx.counters`` and ``tx.volume_tags``: monotonic counters, and the newest recorded
release of each rollback-protected volume.

Both are MAC'd rows (an edited value is refused) checked against the SPM's floors
(an older value with its older MAC is refused too): see :mod:`secfl.spm._integrity`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from secfl.errors import SpmError
from secfl.spm._records import to_us
from secfl.spm._schema import Q_COUNTER, Q_COUNTER_SET, counters_table, volume_tags_table
from secfl.spm._tx_base import TxView

__all__ = ["MAX_COUNTER", "Counters", "VolumeTags"]

#: Counters stop here (an SPM never reaches it; a bigger value is refused as corrupt).
MAX_COUNTER = 2**62


class Counters(TxView):
    """Named counters of a policy: they only ever go up, by one."""

    def create(self, policy: str, name: str) -> None:
        """Create the counter at 0; nothing happens if it exists."""
        if self.get(policy, name) is None:
            self._insert(
                counters_table,
                self._signed(counters_table, {"policy": policy, "name": name, "value": 0}),
                f"counter: '{name}' of policy '{policy}' was created concurrently",
            )

    def increment(self, policy: str, name: str, *, seen: int | None = None) -> int:
        """Add one to the counter and return the new value (durable at commit).
        ``seen``: its value as :meth:`get` answered it in this transaction (not read
        again; the update still moves it only from that value)."""
        value = self.get(policy, name) if seen is None else seen
        if value is None:
            raise SpmError(f"counter: '{name}' of policy '{policy}' does not exist")
        if value >= MAX_COUNTER:
            raise SpmError(f"counter: '{name}' of policy '{policy}' is at its maximum")
        new = value + 1
        values = self._signed(counters_table, {"policy": policy, "name": name, "value": new})
        done = self._w().execute(
            Q_COUNTER_SET,
            {"b_policy": policy, "b_name": name, "b_old": value, "b_value": new,
             "b_mac": values["mac"]},
        )  # fmt: skip
        if done.rowcount != 1:
            raise SpmError(f"counter: '{name}' of policy '{policy}' changed concurrently")
        self._note(("counter", policy, name, new))
        return new

    def get(self, policy: str, name: str) -> int | None:
        """The counter's value, None if it does not exist."""
        row = self._c().execute(Q_COUNTER, {"b_policy": policy, "b_name": name}).first()
        if row is None:
            floors = self._floors
            if floors is not None and floors.counters.get((policy, name), 0) > 0:
                floors.check_counter(policy, name, 0, learn=False, since=self._tx.since)
            return None
        return self._counter_value(policy, name, row.value, row.mac)

    def _counter_value(self, policy: str, name: str, value: Any, mac: Any) -> int:
        integrity = self._tx.integrity
        if integrity is not None:
            integrity.rows.check(
                counters_table.name,
                {"policy": policy, "name": name, "value": value},
                mac,
                f"counter '{name}' of policy '{policy}'",
            )
            integrity.floors.check_counter(
                policy, name, int(value), learn=not self._tx.writable, since=self._tx.since
            )
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNTER:
            raise SpmError(f"counter: '{name}' of policy '{policy}' holds a corrupt value")
        return value

    def of_policy(self, policy: str) -> dict[str, int]:
        """Every counter of ``policy`` and its value."""
        t = counters_table
        rows = self._c().execute(select(t.c.name, t.c.value, t.c.mac).where(t.c.policy == policy))
        return {r.name: self._counter_value(policy, r.name, r.value, r.mac) for r in rows}


class VolumeTags(TxView):
    """The newest recorded (version, tag) of each rollback-protected volume."""

    def get(self, policy: str, volume: str) -> tuple[int, str] | None:
        """The newest (version, tag) recorded for a rollback-protected volume."""
        t = volume_tags_table
        row = self._c().execute(select(t).where(t.c.policy == policy, t.c.volume == volume)).first()
        floors = self._floors
        if row is None:
            if floors is not None:
                floors.check_volume(policy, volume, 0, learn=False, since=self._tx.since)
            return None
        self._verify(t, row, f"the record of volume '{volume}' of policy '{policy}'")
        if floors is not None:
            floors.check_volume(
                policy, volume, int(row.version), learn=not self._tx.writable, since=self._tx.since
            )
        return int(row.version), str(row.tag)

    def put(self, policy: str, volume: str, version: int, tag: str, at: datetime) -> None:
        """Record (version, tag) as the newest release of a volume (the caller checks
        that it is newer)."""
        t = volume_tags_table
        values = self._signed(
            t,
            {"policy": policy, "volume": volume, "version": int(version), "tag": tag,
             "at": to_us(at, "at")},
        )  # fmt: skip
        done = self._w().execute(
            update(t).where(t.c.policy == policy, t.c.volume == volume).values(**values)
        )
        if done.rowcount == 0:
            conflict = f"store: volume '{volume}' of policy '{policy}' was recorded concurrently"
            self._insert(t, values, conflict)
        self._note(("volume", policy, volume, int(version)))
