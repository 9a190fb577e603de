"""One transaction of the SPM's store, and its operations grouped by concern.

A :class:`Tx` comes from :meth:`Store.transaction <secfl.spm._store.Store.transaction>`
(write) or :meth:`Store.read <secfl.spm._store.Store.read>` (read only) and is valid
only inside its ``with`` block. What it can do is reached through one view per
concern, each defined in the module named after it::

    with store.transaction() as tx:
        value = tx.counters.increment("fl", "round")                 # _tx_counters
        tx.audit.append("counter.incremented", "fl", {"value": value})  # _tx_audit

========================  =====================================================
``tx.meta``               small named values (:mod:`secfl.spm._tx_meta`)
``tx.audit``              the hash-chained log and its head (:mod:`~secfl.spm._tx_audit`)
``tx.policies``           policy versions (:mod:`~secfl.spm._tx_policies`)
``tx.secrets``            sealed secret values (:mod:`~secfl.spm._tx_policies`)
``tx.data_keys``          wrapped policy data keys (:mod:`~secfl.spm._tx_policies`)
``tx.nonces``             spent nonces (:mod:`~secfl.spm._tx_sessions`)
``tx.sessions``           attestation sessions (:mod:`~secfl.spm._tx_sessions`)
``tx.counters``           monotonic counters (:mod:`~secfl.spm._tx_counters`)
``tx.volume_tags``        volume releases (:mod:`~secfl.spm._tx_counters`)
``tx.certificates``       issued certificates (:mod:`~secfl.spm._tx_certs`)
``tx.revocations``        the board's revocations (:mod:`~secfl.spm._tx_certs`)
========================  =====================================================

The views share this object's connection, so everything done in one block commits
or rolls back together. The transaction itself keeps what spans the views: whether
it may write, the floor changes to apply once it commits (:meth:`Tx.note`), and
savepoints (:meth:`Tx.savepoint`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection

from secfl.errors import SpmError
from secfl.spm._tx_audit import AuditLog
from secfl.spm._tx_certs import Certificates, Revocations
from secfl.spm._tx_counters import Counters, VolumeTags
from secfl.spm._tx_meta import Meta
from secfl.spm._tx_policies import DataKeys, Policies, Secrets
from secfl.spm._tx_sessions import Nonces, Sessions

if TYPE_CHECKING:
    from secfl.spm._integrity import Floors, Integrity

__all__ = ["Tx"]


class Tx:
    """One transaction over ``conn``: its views, its floor changes, its savepoints.

    ``integrity`` (row MACs and floors) and ``audit_key`` (the head MAC) come from
    the store; without them rows and the head are taken as they are (tests, tools).
    """

    def __init__(
        self,
        conn: Connection,
        *,
        writable: bool,
        dialect: Literal["sqlite", "postgresql"],
        integrity: Integrity | None,
        audit_key: bytes | None,
    ) -> None:
        self._conn = conn
        self._writable = writable
        self._open = True
        self.dialect = dialect
        self.integrity = integrity
        self._audit_key = audit_key
        #: Floor changes (secfl.spm._integrity.Floors.apply) to make once this commits.
        self._changes: list[tuple[Any, ...]] = []
        #: A read's floor epoch as it began, before its snapshot: a floor raised after
        #: it may be a commit the snapshot predates (:class:`~secfl.spm._integrity.Floors`).
        self._reader: int | None = (
            None if writable or integrity is None else integrity.floors.begin_read()
        )
        self.since: int | None = self._reader

    # --- the views ----------------------------------------------------------------------

    @cached_property
    def meta(self) -> Meta:
        return Meta(self)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self, self._audit_key)

    @cached_property
    def policies(self) -> Policies:
        return Policies(self)

    @cached_property
    def secrets(self) -> Secrets:
        return Secrets(self)

    @cached_property
    def data_keys(self) -> DataKeys:
        return DataKeys(self)

    @cached_property
    def nonces(self) -> Nonces:
        return Nonces(self)

    @cached_property
    def sessions(self) -> Sessions:
        return Sessions(self)

    @cached_property
    def counters(self) -> Counters:
        return Counters(self)

    @cached_property
    def volume_tags(self) -> VolumeTags:
        return VolumeTags(self)

    @cached_property
    def certificates(self) -> Certificates:
        return Certificates(self)

    @cached_property
    def revocations(self) -> Revocations:
        return Revocations(self)

    # --- the transaction ----------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self._writable

    def connection(self) -> Connection:
        """The SQLAlchemy connection, while the transaction is open."""
        if not self._open:
            raise SpmError("store: this transaction is finished")
        return self._conn

    def write_connection(self) -> Connection:
        """:meth:`connection`, refused in a read-only transaction."""
        if not self._writable:
            raise SpmError("store: a read-only transaction cannot write")
        return self.connection()

    def close(self) -> None:
        """End the transaction: any later use of it is an :class:`SpmError`."""
        if self._open and self._reader is not None and self.integrity is not None:
            self.integrity.floors.end_read(self._reader)
        self._open = False

    @property
    def floors(self) -> Floors | None:
        """The SPM's floors (:mod:`secfl.spm._integrity`), None without integrity."""
        return None if self.integrity is None else self.integrity.floors

    def note(self, change: tuple[Any, ...]) -> None:
        """A floor change (:meth:`Floors.apply <secfl.spm._integrity.Floors.apply>`),
        applied only when this transaction commits."""
        if self.integrity is not None:
            self._changes.append(change)

    @property
    def changes(self) -> tuple[tuple[Any, ...], ...]:
        """The floor changes noted so far (those of rolled-back savepoints removed)."""
        return tuple(self._changes)

    @contextmanager
    def savepoint(self) -> Iterator[Tx]:
        """A nested transaction: if the block raises, only its changes roll back
        (the audit head and the noted floor changes included) and the outer
        transaction goes on."""
        self.audit.flush_head()
        nested = self.write_connection().begin_nested()
        changes = len(self._changes)
        try:
            yield self
        except BaseException:
            nested.rollback()
            del self._changes[changes:]
            self.audit.reload_head()
            raise
        self.audit.flush_head()
        nested.commit()
