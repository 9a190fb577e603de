"""The Fleet gate (:func:`secfl.flower._gate.serve`) against protocol upgrades, in the
Flower venv, where it runs and where uvicorn finds a WebSocket library; run with that
venv's Python: ``python gate_upgrade_probe.py WORKDIR``. Prints one JSON object: what
a WebSocket upgrade and an h2c upgrade were answered, how many connections the gate's
guard still counted after many upgrades, what an ordinary Fleet call got then, and what
reached the upstream."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from secfl.flower._gate import FleetGate, serve, server_context
from secfl.flower._tls import loopback_context, tls_files

KEY = b"-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"
UPGRADES = 40
seen: list[tuple[str, int]] = []  # (path, body bytes) of each request upstream


async def flower(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Stands for flower-superlink's Fleet API."""
    if scope["type"] == "http":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append((scope["path"], len(body)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(work: Path) -> None:
    tls = tls_files(work, ["localhost", "127.0.0.1"])
    up, port = free(), free()
    upstream = uvicorn.Server(
        uvicorn.Config(
            flower,
            host="127.0.0.1",
            port=up,
            log_level="critical",
            ssl_certfile=str(tls["crt"]),
            ssl_keyfile=str(tls["key"]),
            lifespan="off",
            loop="asyncio",
        )
    )
    threading.Thread(target=upstream.run, daemon=True).start()
    gate = FleetGate(
        f"https://127.0.0.1:{up}", loopback_context(str(tls["ca"]), str(tls["crt"])), [KEY]
    )
    server, _ = serve(gate, "127.0.0.1", port, server_context(str(tls["crt"]), str(tls["key"])))
    while not (server.started and upstream.started):
        time.sleep(0.05)
    client = ssl.create_default_context(cafile=str(tls["ca"]))

    def send(data: bytes, wait: float = 1.0) -> str:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with raw, client.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(data)
            sock.settimeout(wait)
            out = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    out += chunk
        return out.split(b"\r\n", 1)[0].decode(errors="replace")

    key = base64.b64encode(KEY)
    call = (
        b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"flwr-public-key: " + key + b"\r\n\r\nhi"
    )
    websocket = (
        b"GET /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nflwr-public-key: " + key + b"\r\n\r\n"
    )
    h2c = (
        b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: h2c\r\nContent-Length: 2\r\nflwr-public-key: " + key + b"\r\n\r\nhi"
    )
    out: dict[str, Any] = {"websocket": send(websocket, 0.3), "h2c": send(h2c, 0.3)}
    for _ in range(UPGRADES):
        send(websocket, 0.2)
    time.sleep(0.5)
    guard = server.config.http.guard  # type: ignore[attr-defined]
    out["live"] = len(guard.live)
    out["call"] = send(call)
    out["seen"] = seen
    print(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
