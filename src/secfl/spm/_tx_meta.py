"""``tx.meta``: small named values (the schema version, the audit head MAC, the sealed
SPM identity...)."""

from __future__ import annotations

from secfl.errors import IntegrityError
from secfl.spm._schema import INSERT, Q_META_GET, Q_META_UPDATE, meta_table
from secfl.spm._tx_base import TxView

__all__ = ["Meta"]


class Meta(TxView):
    """The meta key/value table."""

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, None if there is none."""
        row = self._c().execute(Q_META_GET, {"b_key": key}).first()
        if row is None:
            return None
        if not isinstance(row.value, bytes | bytearray | memoryview):
            raise IntegrityError(f"integrity: the meta value '{key}' is corrupt (not bytes)")
        return bytes(row.value)

    def put(self, key: str, value: bytes) -> None:
        """Insert or replace the value of ``key``."""
        conn = self._w()
        done = conn.execute(Q_META_UPDATE, {"b_key": key, "b_value": bytes(value)})
        if done.rowcount == 0:
            conn.execute(INSERT[meta_table], {"key": key, "value": bytes(value)})
