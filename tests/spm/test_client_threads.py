"""One SpmClient used from two threads (the aggregator's overlapped commit and its main
thread): the connection to the SPM is made, and its key pinned, once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from secfl.spm import _client_transport
from secfl.spm.client import SpmClient
from tests.spm.harness import SpmProcess


@pytest.mark.timeout(120)
def test_threads_share_one_pinned_connection(
    tmp_path: Path, sim: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = SpmProcess(tmp_path / "data", sim[0], None).start()
    try:
        fetches: list[int] = []
        real = _client_transport.fetch_certificate

        def slow_fetch(*args: Any) -> Any:
            fetches.append(1)
            time.sleep(0.2)  # a slow first handshake: every thread arrives meanwhile
            return real(*args)

        monkeypatch.setattr(_client_transport, "fetch_certificate", slow_fetch)
        with SpmClient(proc.url, pin=proc.pin) as client:
            start = threading.Barrier(8)
            clients: list[Any] = []

            def use() -> None:
                start.wait()
                clients.append(client._connect())
                client.public_key()

            threads = [threading.Thread(target=use) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(fetches) == 1  # without the lock: one TLS fetch and client per thread
            assert len(clients) == 8 and all(c is clients[0] for c in clients)
    finally:
        proc.stop()
