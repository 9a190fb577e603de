"""A Ctrl-C anywhere in the reader's clean-up leaves no plaintext behind. Found by a
hostile review: the wait for the helpers survived an interrupt, but the code before it
(cancelling the helpers, building the list of those to wait for) did not, so a Ctrl-C
that landed there returned without waiting for a helper at work, which then wrote its
chunk's plaintext into the caller's buffer after the reader had wiped it. The helpers
are now counted by the chunks they took (``_Ranges.settle``). Here the Ctrl-C comes
(``_thread.interrupt_main``) right after the first ``cancel()`` that finds a helper
running."""

from __future__ import annotations

import _thread
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secfl.shield import Volume, _parallel
from secfl.shield._reader import ChunkSource
from tests.shield import KEY
from tests.shield.test_parallel import CHUNK, WORKERS, raw_file, volume  # noqa: F401


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_parallel, "WORKERS", WORKERS)
    monkeypatch.setattr(_parallel, "READ_AHEAD", True)
    monkeypatch.setattr(_parallel, "RANGE_MIN_BYTES", 0)
    monkeypatch.setattr(_parallel, "_pool", None)
    yield
    if _parallel._pool is not None:
        _parallel._pool.shutdown(wait=True)


def test_no_plaintext_written_after_an_interrupted_read(
    pool: None, volume: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, files = volume
    open_chunk = ChunkSource.open_chunk
    helper_busy = threading.Event()
    slow_done = threading.Event()

    def slow_helper(self: ChunkSource, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread().name.startswith("secfl-shield") and not helper_busy.is_set():
            helper_busy.set()
            time.sleep(0.5)  # a chunk being decrypted when the reader gives up
            open_chunk(self, *args, **kwargs)
            slow_done.set()
            return
        if threading.current_thread() is threading.main_thread():
            helper_busy.wait(5)
        open_chunk(self, *args, **kwargs)

    cancel = concurrent.futures.Future.cancel
    fired: list[bool] = []

    def cancel_then_ctrl_c(self: concurrent.futures.Future[Any]) -> bool:
        done = cancel(self)
        if not done and not fired and threading.current_thread() is threading.main_thread():
            fired.append(True)
            _thread.interrupt_main()  # the operator's Ctrl-C, arriving now
        return done

    monkeypatch.setattr(ChunkSource, "open_chunk", slow_helper)
    monkeypatch.setattr(concurrent.futures.Future, "cancel", cancel_then_ctrl_c)
    with Volume.open(path, KEY) as v, raw_file(v, "big") as f:
        buffer = bytearray(100 * CHUNK)
        with pytest.raises(KeyboardInterrupt):
            f.readinto(buffer)
        assert fired
        wiped = bytes(buffer)
        assert wiped == bytes(len(buffer)), "the reader wiped the buffer"
        slow_done.wait(5)
        time.sleep(0.1)
        leaked = sum(1 for b in buffer if b)
        assert leaked == 0, (
            f"{leaked} bytes of plaintext were written into the caller's buffer after "
            "readinto raised KeyboardInterrupt and wiped it"
        )
