"""What every view of a transaction shares: its connection, and the integrity of rows.

A :class:`~secfl.spm._tx.Tx` exposes its operations through views, one per concern
(``tx.counters``, ``tx.policies``...). A view holds no connection of its own: it
writes through its transaction's, so that everything done in one ``with`` block
commits or rolls back together. The row checks live here, once: every row a view
writes carries the MAC of the whole row (:meth:`TxView._signed`) and every row it
reads is refused unless its MAC verifies (:meth:`TxView._verify`); floor changes
(:meth:`TxView._note`) are applied only when the transaction commits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table
from sqlalchemy.exc import IntegrityError

from secfl.errors import SpmError
from secfl.spm._schema import INSERT

if TYPE_CHECKING:
    from secfl.spm._integrity import Floors
    from secfl.spm._tx import Tx

__all__ = ["TxView"]


class TxView:
    """One concern's operations over a transaction (see :class:`~secfl.spm._tx.Tx`)."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    # -- plumbing
    def _c(self) -> Connection:
        return self._tx.connection()

    def _w(self) -> Connection:
        return self._tx.write_connection()

    def _insert(self, table: Table, values: dict[str, Any], conflict: str) -> None:
        """Insert a row; a duplicate key is :class:`SpmError` ``conflict``."""
        try:
            self._w().execute(INSERT[table], values)
        except IntegrityError:
            raise SpmError(conflict) from None

    # -- integrity (secfl.spm._integrity): rows are MAC'd, floors never go back
    def _signed(self, table: Table, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with the MAC of the whole row (None without a row key)."""
        integrity = self._tx.integrity
        mac = None if integrity is None else integrity.rows.mac(table.name, values)
        return {**values, "mac": mac}

    def _verify(self, table: Table, row: Any, what: str) -> None:
        """Refuse a row that does not carry a valid MAC (when the store has a row key)."""
        integrity = self._tx.integrity
        if integrity is None:
            return
        mapping = row._mapping
        values = {c.name: mapping[c.name] for c in table.columns if c.name != "mac"}
        integrity.rows.check(table.name, values, mapping.get("mac"), what)

    def _note(self, change: tuple[Any, ...]) -> None:
        """A floor change, applied when the transaction commits."""
        self._tx.note(change)

    @property
    def _floors(self) -> Floors | None:
        return self._tx.floors
