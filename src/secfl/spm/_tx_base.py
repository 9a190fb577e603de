"""The plumbing every part of :class:`secfl.spm.store.Tx` shares: its connection, whether
it may write, and the audit head it carries until commit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table
from sqlalchemy.exc import IntegrityError

from secfl.errors import SpmError
from secfl.spm.schema import INSERT

if TYPE_CHECKING:
    from secfl.spm.integrity import Floors
    from secfl.spm.store import Store


class TxBase:
    """The state and plumbing shared by every part of :class:`secfl.spm.store.Tx`."""

    def __init__(self, store: Store, conn: Connection, *, writable: bool) -> None:
        self._store = store
        self._conn = conn
        self._writable = writable
        self._open = True
        self._head: tuple[int, str] | None = None
        #: Audit entries appended since the head row and its MAC were last written;
        #: both are written once, when the transaction ends (see Store.transaction).
        self._head_dirty = False
        #: Floor changes (secfl.spm.integrity.Floors.apply) to make once this commits.
        self._changes: list[tuple[Any, ...]] = []

    # -- plumbing
    def _c(self) -> Connection:
        if not self._open:
            raise SpmError("store: this transaction is finished")
        return self._conn

    def _w(self) -> Connection:
        if not self._writable:
            raise SpmError("store: a read-only transaction cannot write")
        return self._c()

    def _insert(self, table: Table, values: dict[str, Any], conflict: str) -> None:
        try:
            self._w().execute(INSERT[table], values)
        except IntegrityError:
            raise SpmError(conflict) from None

    @property
    def writable(self) -> bool:
        return self._writable

    # -- integrity (secfl.spm.integrity): rows are MAC'd, floors never go back
    def _signed(self, table: Table, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with the MAC of the whole row (None without a row key)."""
        integrity = self._store.integrity
        mac = None if integrity is None else integrity.rows.mac(table.name, values)
        return {**values, "mac": mac}

    def _verify(self, table: Table, row: Any, what: str) -> None:
        """Refuse a row that does not carry a valid MAC (when the store has a row key)."""
        integrity = self._store.integrity
        if integrity is None:
            return
        mapping = row._mapping
        values = {c.name: mapping[c.name] for c in table.columns if c.name != "mac"}
        integrity.rows.check(table.name, values, mapping.get("mac"), what)

    def _note(self, change: tuple[Any, ...]) -> None:
        """A floor change, applied when this transaction commits."""
        if self._store.integrity is not None:
            self._changes.append(change)

    @property
    def floors(self) -> Floors | None:
        integrity = self._store.integrity
        return None if integrity is None else integrity.floors
