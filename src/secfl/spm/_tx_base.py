"""The plumbing every part of :class:`secfl.spm.store.Tx` shares: its connection, whether
it may write, and the audit head it carries until commit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table
from sqlalchemy.exc import IntegrityError

from secfl.errors import SpmError
from secfl.spm.schema import INSERT

if TYPE_CHECKING:
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
