"""Transaction operations on the meta table: small named values (the schema version,
the audit head MAC, the sealed SPM identity...)."""

from __future__ import annotations

from sqlalchemy import delete

from secfl.errors import IntegrityError
from secfl.spm._tx_base import TxBase
from secfl.spm.schema import INSERT, Q_META_GET, Q_META_UPDATE, meta_table


class MetaOps(TxBase):
    """The meta key/value table (part of :class:`secfl.spm.store.Tx`)."""

    def get_meta(self, key: str) -> bytes | None:
        row = self._c().execute(Q_META_GET, {"b_key": key}).first()
        if row is None:
            return None
        if not isinstance(row.value, bytes | bytearray | memoryview):
            raise IntegrityError(f"integrity: the meta value '{key}' is corrupt (not bytes)")
        return bytes(row.value)

    def set_meta(self, key: str, value: bytes) -> None:
        conn = self._w()
        done = conn.execute(Q_META_UPDATE, {"b_key": key, "b_value": bytes(value)})
        if done.rowcount == 0:
            conn.execute(INSERT[meta_table], {"key": key, "value": bytes(value)})

    def delete_meta(self, key: str) -> None:
        self._w().execute(delete(meta_table).where(meta_table.c.key == key))
