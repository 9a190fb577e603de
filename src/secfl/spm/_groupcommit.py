"""Group commit: many threads' writes in one transaction, one durable commit.

Every operation still commits before its caller returns (durable before the
reply), but operations that arrive while a commit is in flight wait for the next
one together, so a burst of N increments costs one fsync instead of N. Each
operation runs in its own savepoint: one that raises is rolled back alone and
its caller gets the exception; the others commit.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError

from secfl.spm._engine import db_error
from secfl.spm._store import Store
from secfl.spm._tx import Tx

__all__ = ["GroupCommit"]

T = TypeVar("T")


@dataclass
class _Op(Generic[T]):
    fn: Callable[[Tx], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    #: Set for :meth:`GroupCommit.run_async`: resolved on its event loop.
    future: asyncio.Future[T] | None = None

    def finish(self) -> None:
        if self.future is None:
            self.done.set()
            return
        self.future.get_loop().call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        assert self.future is not None
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.result)


class GroupCommit:
    """Run ``fn(tx)`` calls from any thread in shared transactions of ``store``."""

    def __init__(self, store: Store, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Op[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def run(self, fn: Callable[[Tx], T]) -> T:
        """``fn(tx)`` committed durably; its exception, or a failed commit, re-raised here."""
        op: _Op[T] = _Op(fn)
        self._ensure_thread()
        self._queue.put(op)
        op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result

    async def run_async(self, fn: Callable[[Tx], T]) -> T:
        """:meth:`run` for an event loop: awaits the commit without holding a thread."""
        op: _Op[T] = _Op(fn, future=asyncio.get_running_loop().create_future())
        self._ensure_thread()
        self._queue.put(op)
        assert op.future is not None
        return await op.future

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="secfl-group-commit", daemon=True
                    )
                    self._thread.start()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[_Op[Any]]) -> None:
        try:
            with self.store.transaction() as tx:
                if len(batch) == 1:  # alone: its failure rolls back the whole transaction
                    op = batch[0]
                    try:
                        op.result = op.fn(tx)
                    except Exception as exc:
                        op.error = _one_line(exc)
                        raise
                    return
                for op in batch:
                    try:
                        with tx.savepoint():
                            op.result = op.fn(tx)
                    except Exception as exc:
                        op.error = _one_line(exc)
        except BaseException as exc:  # the commit itself failed: nothing of the batch holds
            for op in batch:
                if op.error is None:
                    op.error = _one_line(exc)
        finally:
            for op in batch:
                op.finish()


def _one_line(exc: BaseException) -> BaseException:
    """A database failure as :func:`~secfl.spm._engine.db_error`'s one line (a table the
    host dropped answered with SQLAlchemy's traceback); anything else as it is."""
    return db_error(exc) if isinstance(exc, DBAPIError) else exc
