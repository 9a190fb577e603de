"""The SPM sends nothing to a collector the host names.

FastAPI (0.165 and later) configures OpenTelemetry export from the environment when
``FASTAPI_OTEL_AUTO_CONFIGURE=true`` and an OTLP endpoint are set. The environment of
a service in a TEE is the host's: it must not choose where the SPM's request traces
(routes, policy names, timings) go. A real `secfl spm serve`, a real collector socket.
"""

from __future__ import annotations

import socket
from pathlib import Path

from secfl.spm.client import SpmClient
from tests.spm.harness import SpmProcess


def test_the_hosts_telemetry_variables_send_nothing_anywhere(
    tmp_path: Path, sim: tuple[Path, bytes]
) -> None:
    collector = socket.create_server(("127.0.0.1", 0))
    collector.settimeout(3.0)
    endpoint = f"http://127.0.0.1:{collector.getsockname()[1]}"
    spm = SpmProcess(
        tmp_path / "data",
        sim[0],
        None,
        env={
            "FASTAPI_OTEL_AUTO_CONFIGURE": "true",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "100",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    ).start()
    try:
        with SpmClient(spm.url, pin=spm.pin) as client:
            for _ in range(3):
                client.nonce()
            client.audit()
        try:
            conn, _ = collector.accept()
            conn.close()
            reached = True
        except TimeoutError:
            reached = False
        assert not reached, "the SPM connected to the host's collector"
    finally:
        spm.stop()
        collector.close()
    log = (spm.log.read_text() if spm.log else "").lower()
    assert "telemetry" not in log, log
