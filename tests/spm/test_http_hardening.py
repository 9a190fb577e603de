"""The SPM's HTTP surface and its start under hostile conditions, with real
`secfl spm serve` processes on loopback.

- Slow clients: hundreds of connections that stall in their TLS handshake, their
  headers or their body must neither exhaust a small file limit nor stay open.
- Refusals: every one is ``{"error": "<check>: ..."}`` and never echoes the input.
- Start: a master key that is a directory, a garbled audit head, or a missing
  master key next to an existing database are refused in one line.
"""

from __future__ import annotations

import json
import re
import selectors
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from secfl.spm.client import SpmClient
from tests.spm.conftest import drop_pg_database, fresh_pg_database
from tests.spm.harness import make_sim, raw_http

pytestmark = pytest.mark.heavy(45)  # seconds on one worker: scheduled first

SECFL = [sys.executable, "-m", "secfl.cli.main"]
ERROR_LINE = re.compile(r"^error: [^\n]+\n$")
#: The file limit the flooded SPMs run under, and how many stalled sockets flood them.
NOFILE, FLOOD = 256, 300
HEADER_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim")
    make_sim(path)
    return path


@dataclass
class Served:
    url: str
    pin: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


def _serve_args(data: Path, sim: Path, *extra: str) -> list[str]:
    return [
        *SECFL, "spm", "serve", "--data", str(data), "--listen", "127.0.0.1:0",
        "--platform", "simulated", "--sim-dir", str(sim), *extra,
    ]  # fmt: skip


@contextmanager
def serving(data: Path, sim: Path, *extra: str, nofile: int | None = None) -> Iterator[Served]:
    """`secfl spm serve` in a child process (under ``ulimit -n nofile``), until the block ends."""
    ready, log = data.with_suffix(".ready.json"), data.with_suffix(".log")
    ready.unlink(missing_ok=True)

    # a shell sets the limit and execs the SPM, not a ``preexec_fn``: that forks this
    # test process, whose gRPC (loaded by earlier tests) can abort the fork's child
    limit = () if nofile is None else ("sh", "-c", f'ulimit -n {nofile} && exec "$@"', "sh")
    args = [*limit, *_serve_args(data, sim, "--ready-file", str(ready), *extra)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, f"the SPM exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"the SPM did not start: {log.read_text()}"
            time.sleep(0.05)
        doc = json.loads(ready.read_text())
        host, port = doc["url"].removeprefix("https://").rsplit(":", 1)
        yield Served(doc["url"], doc["tls_spki_sha256"], host, int(port), proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _attacker_tls() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # an attacker does not care who answers
    return context


def stall(spm: Served, count: int, *, tls: bool, partial: bytes = b"") -> list[socket.socket]:
    """Up to ``count`` connections that stop halfway (in the TLS handshake when not
    ``tls``, else after sending ``partial``); bounded in count, failures and time."""
    context, socks, failures = _attacker_tls(), [], 0
    deadline = time.monotonic() + 30
    while len(socks) < count and failures < 5 and time.monotonic() < deadline:
        raw = None
        try:
            raw = socket.create_connection((spm.host, spm.port), timeout=2)
            sock: socket.socket = raw
            if tls:
                sock = context.wrap_socket(raw)
                sock.sendall(partial)
            socks.append(sock)
            time.sleep(0.001)  # lets the kernel's accept queue drain; still a flood
        except OSError:
            failures += 1
            if raw is not None:
                raw.close()
    return socks


def is_closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (a non-blocking peek; TLS records such as
    session tickets are not a close)."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True  # reset, or a TLS connection cut without close-notify


def closed_by_server(socks: list[socket.socket], within: float) -> tuple[int, float]:
    """Wait up to ``within`` seconds for the server to close ``socks``: (how many it
    closed, seconds until the last one)."""
    selector = selectors.DefaultSelector()
    for s in socks:
        selector.register(s, selectors.EVENT_READ)
    start, closed, last = time.monotonic(), 0, 0.0
    try:
        while closed < len(socks) and time.monotonic() - start < within:
            for key, _ in selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if is_closed(sock):
                    selector.unregister(sock)
                    closed, last = closed + 1, time.monotonic() - start
    finally:
        selector.close()
    return closed, last


def health_in(spm: Served, seconds: float) -> float:
    """GET /v1/health by an honest, pinned client; how long it took (at most ``seconds``)."""
    start = time.monotonic()
    with SpmClient(spm.url, pin=spm.pin, timeout=seconds) as client, raw_http(client) as http:
        reply = http.get("/v1/health")
    assert reply.status_code == 200 and reply.json()["status"] == "ok"
    return time.monotonic() - start


def still_open(socks: list[socket.socket]) -> int:
    return sum(not is_closed(s) for s in socks)


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with suppress(OSError):
            s.close()


# --- item 8: slow clients ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "partial"),
    [(True, b"GET /v1/health HTTP/1.1\r\nHost: spm\r\nX-Slow: "), (False, b"")],
    ids=["half-sent-headers", "silent-before-tls"],
)
def test_stalled_connections_cannot_lock_out_clients(
    tmp_path: Path, sim: Path, tls: bool, partial: bytes
) -> None:
    """300 stalled connections against an SPM with a 256-file limit: an honest client
    is still answered at once, and the server closes the stalled ones itself."""
    timeout = ["--header-timeout", str(HEADER_TIMEOUT)]
    with serving(tmp_path / "data", sim, *timeout, nofile=NOFILE) as spm:
        socks = stall(spm, FLOOD, tls=tls, partial=partial)
        try:
            assert len(socks) == FLOOD, f"{len(socks)} connections got in: {spm.log.read_text()}"
            took = health_in(spm, 3.0)
            assert took < 3.0
            # Served while stalled connections are still open: not because they timed out.
            assert still_open(socks) >= 20
            closed, last = closed_by_server(socks, HEADER_TIMEOUT + 6)
            assert closed == len(socks), f"{len(socks) - closed} stalled connections stayed open"
            assert last >= HEADER_TIMEOUT * 0.5  # the newest ones lived out their timeout
            assert health_in(spm, 3.0) < 3.0
        finally:
            close_all(socks)
        assert spm.proc.poll() is None


def test_a_slow_body_is_cut_off(tmp_path: Path, sim: Path) -> None:
    """Headers complete, then the body stalls: closed after --body-timeout."""
    with serving(tmp_path / "data", sim, "--body-timeout", "2") as spm:
        head = (
            b"POST /v1/policies HTTP/1.1\r\nHost: spm\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"document": '
        )
        socks = stall(spm, 5, tls=True, partial=head)
        try:
            assert len(socks) == 5
            start = time.monotonic()
            closed, _ = closed_by_server(socks, 8)
            assert closed == 5 and time.monotonic() - start >= 1.0
        finally:
            close_all(socks)


def test_connection_limits_are_checked(tmp_path: Path, sim: Path) -> None:
    for option, value in (("--header-timeout", "0"), ("--max-connections", "1")):
        done = subprocess.run(
            _serve_args(tmp_path / "data", sim, option, value),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1 and ERROR_LINE.match(done.stderr), done.stderr
        assert done.stderr.startswith("error: connections: ")


# --- JSON refusals, never echoing the input ------------------------------------------------


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory, sim: Path) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("spm") / "data", sim) as served:
        yield served


@pytest.fixture(scope="module")
def http(spm: Served) -> Iterator[httpx.Client]:
    with SpmClient(spm.url, pin=spm.pin, timeout=10) as client, raw_http(client) as http:
        yield http


def one_error(reply: httpx.Response) -> str:
    doc = reply.json()
    assert isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"], str)
    assert "\n" not in doc["error"] and re.match(r"^[a-z][a-z0-9_.*-]*: ", doc["error"]), doc
    return doc["error"]


def test_an_invalid_header_is_refused_without_echoing_it(http: httpx.Client) -> None:
    token = "SeCrEtToKeN" * 30  # longer than the header's max_length
    reply = http.post(
        "/v1/policies/p/counters/round/increment", headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 422
    error = one_error(reply)
    assert error.startswith("header.authorization: ")
    assert "SeCrEtToKeN" not in reply.text


BAD_CONDITIONS = [
    {"expect": 10**400}, {"expect": -1}, {"expect": 2**62 + 1}, {"expect": "3"},
    {"expect": True}, {"expect": 1, "more": 2}, [1],
]  # fmt: skip


@pytest.mark.parametrize("body", BAD_CONDITIONS)
def test_an_increment_condition_out_of_bounds_is_one_line(http: httpx.Client, body: object) -> None:
    reply = http.post("/v1/policies/p/counters/round/increment", json=body,
                      headers={"Authorization": "Bearer x"})  # fmt: skip
    assert reply.status_code == 422, reply.text
    assert one_error(reply).startswith("body")


def test_an_invalid_body_field_is_refused_without_echoing_it(http: httpx.Client) -> None:
    fields = {"nonce": "not-hex-PRIVATE-VALUE", "evidence": "{}", "hpke_public_key": "00"}
    reply = http.post("/v1/policies/p/services/aggregator/attest", json=fields)
    assert reply.status_code == 422
    error = one_error(reply)
    assert "body.nonce" in error and "body.csr" in error
    assert "PRIVATE-VALUE" not in reply.text


@pytest.mark.parametrize(
    "body",
    [b"{not json PRIVATE", b"[" * 100_000, b'{"document": "x", "signatures": "PRIVATE"}'],
    ids=["garbage", "deeply-nested", "wrong-type"],
)
def test_malformed_bodies_are_one_line(http: httpx.Client, body: bytes) -> None:
    reply = http.post("/v1/policies", content=body, headers={"content-type": "application/json"})
    assert 400 <= reply.status_code < 500
    one_error(reply)
    assert "PRIVATE" not in reply.text


def test_an_oversized_body_is_a_json_413(http: httpx.Client) -> None:
    big = b"{" + b" " * (2 << 20) + b"}"
    expected = {"error": "body: larger than the limit of 1048576 bytes"}
    for path in ("/v1/policies", "/v1/health", "/v1/policies/p/counters/c/increment"):
        reply = http.post(path, content=big, headers={"content-type": "application/json"})
        assert (reply.status_code, reply.json()) == (413, expected), path

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what arrives
        for _ in range(40):
            yield b" " * 65536

    json_type = {"content-type": "application/json"}
    reply = http.post("/v1/policies", content=chunks(), headers=json_type)
    assert (reply.status_code, reply.json()) == (413, expected)


def test_unknown_routes_and_methods_are_json(http: httpx.Client) -> None:
    assert one_error(http.get("/v1/nothing-here")) == "http: Not Found"
    assert one_error(http.delete("/v1/health")) == "http: Method Not Allowed"


def _raw_exchange(spm: Served, request: bytes) -> bytes:
    """Send ``request`` over a fresh TLS connection; everything answered until close."""
    raw = socket.create_connection((spm.host, spm.port), timeout=10)
    with raw, _attacker_tls().wrap_socket(raw) as sock:
        sock.sendall(request)
        answer = b""
        with suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"\x00\x01 not http\r\n\r\n", 400, "http: not a valid HTTP/1.1 request"),
        (
            b"GET /v1/health HTTP/1.1\r\nHost: spm\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n",
            431,
            "headers: larger than the limit of 65536 bytes",
        ),
        (
            b"GET /v1/health HTTP/1.1\r\nHost: spm\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            400,
            "http: no protocol upgrade is served",
        ),
        (
            b"POST /v1/audit HTTP/1.1\r\nHost: spm\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
            b"Content-Length: 2\r\n\r\n{}",
            400,
            "http: no protocol upgrade is served",
        ),
    ],
    ids=["garbage", "headers-too-large", "websocket", "h2c"],
)
def test_protocol_level_refusals_are_json(
    spm: Served, request_bytes: bytes, status: int, error: str
) -> None:
    """Refusals made before any route (by the HTTP parser) are JSON too; headers are
    bounded (httptools alone takes megabytes of them). A protocol upgrade is refused
    before the app sees it (found by a review of the Flower gate, which shares this
    guard: where a WebSocket library is installed, uvicorn took an upgraded connection
    from the guard, which counted it as busy until the request deadline, and 256 of
    them locked every client out; an h2c upgrade's request went on with its body cut
    off)."""
    answer = _raw_exchange(spm, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert json.loads(body) == {"error": error}


def test_the_schema_describes_the_refusals(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    invalid = schema["paths"]["/v1/policies"]["post"]["responses"]["422"]
    assert invalid["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert "HTTPValidationError" not in schema["components"]["schemas"]


# --- item 14: starting on a broken or foreign data folder --------------------------------


def _refused(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and ERROR_LINE.match(done.stderr), (done.returncode, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    return done.stderr.removeprefix("error: ")


def test_a_master_key_that_is_a_directory_is_one_line(tmp_path: Path, sim: Path) -> None:
    data = tmp_path / "data"
    (data / "master.key").mkdir(parents=True)
    for args in (_serve_args(data, sim), [*SECFL, "audit", "verify", "--data", str(data)]):
        error = _refused(args)
        assert error.startswith("secrets: ") and "is a directory" in error


@pytest.fixture(params=["sqlite-in-data", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: the SQLite database in the data folder; else a fresh PostgreSQL URL."""
    if request.param == "sqlite-in-data":
        yield None
        return
    server = request.getfixturevalue("pg_url")
    url, name = fresh_pg_database(server)
    try:
        yield url
    finally:
        drop_pg_database(server, name)


def _execute(data: Path, db: str | None, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Run ``sql`` (``?`` placeholders) on the SPM's database, as someone with access to it."""
    if db is None:
        with sqlite3.connect(data / "spm.db") as conn:
            return list(conn.execute(sql, params))
    with psycopg.connect(db.replace("+psycopg", ""), autocommit=True) as conn:
        cursor = conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
        return list(cursor.fetchall()) if cursor.description else []


def _started_once(data: Path, sim: Path, db: str | None) -> None:
    with serving(data, sim, *(("--db", db) if db else ())):
        pass


@pytest.fixture(scope="module")
def started_in_data(tmp_path_factory: pytest.TempPathFactory, sim: Path) -> Path:
    """The data folder of an SPM (its SQLite database in it) started once and stopped:
    made once per module, copied by each test that changes it."""
    data = tmp_path_factory.mktemp("once") / "data"
    _started_once(data, sim, None)
    return data


def _a_started_spm(request: pytest.FixtureRequest, data: Path, sim: Path, db: str | None) -> None:
    """``data`` (and ``db``) as an SPM leaves them once it started and stopped: a copy of
    :func:`started_in_data` on SQLite, a start of its own on PostgreSQL."""
    if db is None:
        shutil.copytree(request.getfixturevalue("started_in_data"), data)
    else:
        _started_once(data, sim, db)


DEEP = "[" * 100_000 + "]" * 100_000


def test_a_garbled_audit_log_is_one_line(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Path, db: str | None
) -> None:
    """Someone with the database writes values no SPM wrote into the audit head (text,
    huge or negative numbers) or an entry (text for its number, nesting that overflows
    a JSON parser): `spm serve` and `audit verify --data` refuse in one line."""
    data = tmp_path / "data"
    _a_started_spm(request, data, sim, db)
    extra = ["--db", db] if db else []
    [(seq,)] = _execute(data, db, "SELECT seq FROM audit_head")
    [(detail,)] = _execute(data, db, "SELECT detail FROM audit WHERE seq = 1")
    head = ("integrity: the audit head row is corrupt",)
    unreadable = "integrity: the database holds a value the SPM cannot read"
    values = ["-5", "9223372036854775807"]
    if db is None:  # SQLite keeps whatever type it is given
        values += ["'garbage'", "x'00ff'"]
    restore_head = ("UPDATE audit_head SET seq = ?", (seq,))
    restore_detail = ("UPDATE audit SET detail = ? WHERE seq = 1", (detail,))
    changes = [
        (f"UPDATE audit_head SET seq = {value}", (), restore_head, head)  # noqa: S608
        for value in values
    ]
    changes.append(
        ("UPDATE audit SET detail = ? WHERE seq = 1", (DEEP,), restore_detail,
         ("audit: entry 1 ", f"{unreadable} (RecursionError"))
    )  # fmt: skip
    if db is None:
        changes.append(
            ("UPDATE audit SET seq = 'x' WHERE seq = 1", (),
             ("UPDATE audit SET seq = 1 WHERE seq = 'x'", ()),
             ("audit: entry ", "audit: an entry was modified", f"{unreadable} (ValueError"))
        )  # fmt: skip
    for change, params, (undo, undo_params), expected in changes:
        _execute(data, db, change, *params)
        for args in (
            _serve_args(data, sim, *extra),
            [*SECFL, "audit", "verify", "--data", str(data), *extra],
        ):
            error = _refused(args)
            assert error.startswith(expected), (change[:60], error)
        _execute(data, db, undo, *undo_params)
    _started_once(data, sim, db)  # every change undone: the SPM starts again


def test_a_missing_master_key_is_not_replaced(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Path, db: str | None
) -> None:
    """An SPM whose database holds its state refuses to start without its master key,
    and makes no new one."""
    data = tmp_path / "data"
    _a_started_spm(request, data, sim, db)
    (data / "master.key").unlink()
    extra = ["--db", db] if db else []
    error = _refused(_serve_args(data, sim, *extra))
    assert error.startswith("secrets: the master key ") and "missing" in error
    assert "restore master.key from its backup" in error and "operations.md" in error
    assert not (data / "master.key").exists()
    (data / "audit.anchor").unlink()  # the database alone gives the SPM away as well
    assert _refused(_serve_args(data, sim, *extra)).startswith("secrets: the master key ")
    assert not (data / "master.key").exists()
    if db is not None:  # and so it does for a new data folder
        other = tmp_path / "other"
        assert _refused(_serve_args(other, sim, *extra)).startswith("secrets: the master key ")
        assert not (other / "master.key").exists()
