"""What the host sets in the environment of `secfl run` reaches the Flower wrappers:
none of it may send their loopback traffic through a proxy of its own or write their TLS
secrets where it reads them. Found by a hostile review; real processes (the SuperNode
wrapper, flower-supernode and flwr-clientapp from the Flower venv, a real SPM)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import pytest

from secfl.errors import FlowerError
from secfl.flower._local import free_port, node_key_files, tls_files

SRC = Path(__file__).resolve().parents[2] / "src"
APPROVED = "ab" * 32


def _field(n: int, payload: bytes) -> bytes:
    return bytes([(n << 3) | 2, len(payload)]) + payload


def _forged_task() -> bytes:
    # AcquireTaskResponse{task: Task{task_id: 5, run_id: 7, fab_hash: APPROVED}, token: "tok"}
    task = b"\x08\x05" + b"\x18\x07" + _field(9, APPROVED.encode())
    return _field(1, task) + _field(2, b"tok")


class HostProxy:
    """What the hostile host runs at HTTP_PROXY: records every request, forges one task."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[str] = []
        self.forged = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip())
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                target = lines[0].split(" ")[1]
                self.seen.append(target)
                body = b""
                if target.endswith("/acquire-task") and not self.forged:
                    self.forged, body = True, _forged_task()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/protobuf\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )


def _fleet_seen(proxy: HostProxy) -> bool:
    return any("superlink.invalid:9092" in s for s in proxy.seen)


def test_runtime_api_traffic_never_reaches_a_host_proxy(
    tmp_path: Path, flower_python: Path
) -> None:
    """The SuperNode's Runtime API is plaintext on loopback, and gRPC and httpx honour
    HTTP_PROXY: with the host's proxy set when it started `secfl run`, the proxy saw the
    task token, the FAB, the model and the update, and answered in Flower's place (a
    forged task with the approved FAB hash ran the host's own ClientApp in the TEE).
    The review of the fix: `Http_Proxy` (urllib reads any case) still did; and dropping
    every proxy cut off sites whose only way out is one. Loopback now never goes through
    a proxy, whatever the host sets, and the Fleet connection (TLS to the policy's CA)
    still may."""
    private = tmp_path / "secfl-files"
    (private / "flower").mkdir(parents=True)
    shutil.copy(
        tls_files(tmp_path / "tls", ["superlink.local"])["ca"], private / "flower" / "ca.pem"
    )
    shutil.copy(node_key_files(tmp_path / "keys", "node")["key"], private / "flower" / "node.key")
    (private / "volumes" / "data").mkdir(parents=True)
    proxy = HostProxy()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({
        "PYTHONPATH": str(SRC),
        "SSLKEYLOGFILE": str(tmp_path / "host-keys.log"),
        "SECFL_FILES": str(private),
        "SECFL_VOLUMES": str(private / "volumes"),
        # set by the hostile host that runs `secfl run`; nothing measures it
        "Http_Proxy": f"http://127.0.0.1:{proxy.port}",
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}",
        "No_Proxy": "",
    })  # fmt: skip
    log = (tmp_path / "node.log").open("wb")
    proc = subprocess.Popen(
        [str(flower_python), "-m", "secfl.flower", "supernode", "--fab-sha256", APPROVED,
         "--", "flower-supernode", "--superlink", "superlink.invalid:9092",
         "--root-certificates", "$SECFL_FILES/flower/ca.pem",
         "--auth-supernode-private-key", "$SECFL_FILES/flower/node.key",
         "--node-config", 'data-path="$SECFL_VOLUMES/data"', "--isolation", "process",
         "--host", "127.0.0.1", "--port", str(free_port())],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        # the Fleet connection's first attempt shows the SuperNode up (a fixed 6 s was too
        # short on a loaded machine); the old code's first Runtime API call came within 3 s
        started, deadline = time.monotonic(), time.monotonic() + 60
        while not _fleet_seen(proxy) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(max(4.0, started + 6 - time.monotonic()))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    loopback = sorted({s for s in proxy.seen if "127.0.0.1" in s or "localhost" in s})
    assert loopback == [], (
        f"the TEE's loopback Runtime API traffic went to the host's proxy: {loopback} "
        f"(the proxy forged a task: {proxy.forged})"
    )
    assert _fleet_seen(proxy), (
        f"the Fleet connection no longer takes the site's proxy: {proxy.seen}"
    )


@pytest.mark.timeout(120)
def test_the_spm_client_writes_no_tls_secrets_to_a_host_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secfl.flower._audit import SpmAudit
    from secfl.tee import _simulated as simulated

    sim = tmp_path / "sim"
    simulated.init(sim, force=True)
    ready = tmp_path / "ready.json"
    spm = subprocess.Popen(
        [sys.executable, "-m", "secfl.cli.main", "spm", "serve", "--data", str(tmp_path / "spm"),
         "--listen", "127.0.0.1:0", "--platform", "simulated", "--sim-dir", str(sim),
         "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        doc = json.loads(ready.read_text())
        identity = tmp_path / "files" / ".secfl"
        identity.mkdir(parents=True)
        (identity / "session.token").write_text("the-service-session-token")
        keylog = tmp_path / "host-disk" / "keys.log"
        keylog.parent.mkdir()
        monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))  # the host's, inherited from secfl run
        audit = SpmAudit(
            {
                "SECFL_POLICY": "flower",
                "SECFL_IDENTITY": str(identity),
                "SECFL_SPM_URL": doc["url"],
                "SECFL_SPM_PIN": doc["tls_spki_sha256"],
            }
        )
        audit.report("run-started", {"run_id": "1"})  # refused (no such policy): TLS happened
        audit.close()
    finally:
        spm.terminate()
        spm.wait(15)
    leaked = keylog.read_text() if keylog.exists() else ""
    assert "CLIENT_" not in leaked and "SECRET" not in leaked, (
        "the TEE's TLS secrets to the SPM were written to the host's SSLKEYLOGFILE:\n"
        + leaked[:300]
    )


def test_flowers_health_service_stays_on_loopback() -> None:
    """The wrappers kept Flower's APIs on loopback but let --health-server-address (gRPC
    without TLS) listen anywhere."""
    from secfl.flower._wrap import check_health_address

    for address in (None, "127.0.0.1:9099", "[::1]:9099"):
        check_health_address(address)
    # a name, localhost included, resolves as the host's /etc/hosts says
    for address in ("0.0.0.0:9099", "10.0.0.1:9099", "localhost:9099"):
        with pytest.raises(FlowerError, match="health service .* not on loopback"):
            check_health_address(address)


@contextlib.contextmanager
def _recording_upstream(tls: dict[str, Path]) -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    """A stand-in for flower-superlink on loopback (TLS): records (path, body) of each POST."""
    seen: list[tuple[str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            seen.append((self.path, body))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls["crt"]), str(tls["key"]))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_truncated_request_body_is_not_forwarded(tmp_path: Path) -> None:
    """A request cut off mid-body (a FIN from anyone on the path) reached Flower as if
    whole, under the SuperNode's signed headers (which do not cover the body)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from secfl.flower._gate import FleetGate, serve, server_context
    from secfl.flower._tls import loopback_context

    tls = tls_files(tmp_path, ["superlink.local", "127.0.0.1"])
    site = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    with _recording_upstream(tls) as (upstream, seen):
        port = free_port()
        gate = FleetGate(f"https://127.0.0.1:{upstream}",
                         loopback_context(str(tls["ca"]), str(tls["crt"])), [site])  # fmt: skip
        server, thread = serve(
            gate, "127.0.0.1", port, server_context(str(tls["crt"]), str(tls["key"]))
        )
        try:
            deadline = time.monotonic() + 10
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
            context = ssl.create_default_context(cafile=str(tls["ca"]))
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
            head = (
                "POST /v1/fleet/push-messages HTTP/1.1\r\nHost: x\r\n"
                f"flwr-public-key: {b64encode(site).decode()}\r\n"
                "content-type: application/protobuf\r\ncontent-length: 100000\r\n\r\n"
            )
            conn.sendall(head.encode() + b"\x0a\x02\x08\x01")  # 4 of the 100000 bytes
            time.sleep(0.5)
            conn.close()  # the rest never comes
            time.sleep(1.5)
        finally:
            server.should_exit = True
            thread.join(10)
    assert seen == [], f"the gate forwarded a truncated body to Flower: {seen!r}"
