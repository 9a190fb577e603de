"""The wrappers' checks, before any Flower process starts: each refusal is one line
naming the check. No Flower needed (``secfl.flower._wrap`` imports none)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secfl._internal.x509util import private_pem
from secfl.errors import FlowerError
from secfl.flower._flags import expand, parse_flower
from secfl.flower._gate import FleetGate
from secfl.flower._nodes import load_node_keys
from secfl.flower._superlink import load_fab
from secfl.flower._supernode import openssh_key
from secfl.flower._wrap import PrivatePaths, check_loopback, clean_env
from tests.flower.test_fab_contents import fab as made_fab


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    files = tmp_path / "files"
    (files / "flower").mkdir(parents=True)
    for name in ("ca.pem", "node.key", "superlink.crt", "superlink.key"):
        (files / "flower" / name).write_text("x")
    return {"SECFL_FILES": str(files), "SECFL_VOLUMES": str(files / "volumes")}


NODE = ["flower-supernode", "--superlink", "link:9092",
        "--root-certificates", "$SECFL_FILES/flower/ca.pem",
        "--auth-supernode-private-key", "${SECFL_FILES}/flower/node.key",
        "--node-config", 'data-path="$SECFL_VOLUMES/site-1-data"',
        "--isolation", "process"]  # fmt: skip
LINK = ["flower-superlink", "--ssl-certfile", "$SECFL_FILES/flower/superlink.crt",
        "--ssl-keyfile", "$SECFL_FILES/flower/superlink.key",
        "--ssl-ca-certfile", "$SECFL_FILES/flower/ca.pem", "--enable-supernode-auth",
        "--isolation", "process", "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", "9093"]  # fmt: skip


def refused(role: str, argv: list[str], env: dict[str, str]) -> str:
    with pytest.raises(FlowerError) as info:
        parse_flower(role, argv, env)
    message = str(info.value)
    assert message.startswith("flower: ") and "\n" not in message
    return message


def test_the_genuine_commands_pass_with_their_paths_expanded(env: dict[str, str]) -> None:
    node = parse_flower("supernode", NODE, env)
    assert node.value("--root-certificates") == env["SECFL_FILES"] + "/flower/ca.pem"
    assert node.value("--auth-supernode-private-key") == env["SECFL_FILES"] + "/flower/node.key"
    assert node.value("--node-config") == f'data-path="{env["SECFL_VOLUMES"]}/site-1-data"'
    link = parse_flower("superlink", LINK, env)
    assert "--enable-supernode-auth" in link.switches
    assert link.argv[0] == "flower-superlink" and len(link.argv) == len(LINK)


def test_the_relay_takes_the_superlinks_address_and_nothing_else(env: dict[str, str]) -> None:
    """The wrapper points Flower at its relay: only ``--superlink``'s value changes,
    not a value that happens to read "--superlink", nor a switch's neighbour."""
    argv = [*NODE[:1], "--max-retries", "--superlink", *NODE[1:]]
    node = parse_flower("supernode", argv, env)
    out = node.replaced("--superlink", "127.0.0.1:4242")
    assert out[1:3] == ["--max-retries", "--superlink"]
    assert "link:9092" not in out
    assert out[3:5] == ["--superlink", "127.0.0.1:4242"]
    assert len(out) == len(node.argv)


@pytest.mark.parametrize(
    ("role", "change", "check"),
    [
        ("supernode", ["--insecure"], "--insecure is refused: it turns TLS off"),
        ("supernode", ["--ins"], "flag '--ins' is not one secfl checks"),
        ("supernode", ["--allow-runtime-dependency-installation"], "installs packages"),
        ("supernode", ["--superexec-auth-secret-file", "s"], "creates the SuperExec secret"),
        ("supernode", ["--superlink", "other:1"], "--superlink given twice"),
        ("supernode", ["stray"], "takes no argument 'stray'"),
        # the wrapper serves the Runtime API with a TLS key of its own (an impostor on the
        # port fed the approved ClientApp: test_runtime_impostor.py)
        ("supernode", ["--ssl-keyfile", "k"], "Runtime API with a TLS key of its own"),
        ("supernode", ["--ssl-ca-certfile=c"], "Runtime API with a TLS key of its own"),
        ("superlink", ["--insecure"], "--insecure is refused"),
        ("superlink", ["--simulation"], "accepts no SuperNodes"),
        ("superlink", ["--control-api-address", "0.0.0.0:9093"], "must stay inside the TEE"),
        ("superlink", ["--auth-list-public-keys", "k.csv"], "registers the attested keys"),
        # an empty host binds Flower's servers to every interface (a hostile review)
        ("supernode", ["--host="], "--host has an empty value"),
        ("supernode", ["--host", ""], "--host has an empty value"),
        ("supernode", ["--health-server-address", " "], "has an empty value"),
    ],
)
def test_flags_that_weaken_a_service_are_refused(
    env: dict[str, str], role: str, change: list[str], check: str
) -> None:
    base = NODE if role == "supernode" else LINK
    assert check in refused(role, [*base, *change], env)


@pytest.mark.parametrize(
    ("role", "drop", "check"),
    [
        ("supernode", "--auth-supernode-private-key", "needs --auth-supernode-private-key"),
        ("superlink", "--enable-supernode-auth", "needs --enable-supernode-auth"),
        ("superlink", "--disable-runtime-dependency-installation", "needs --disable-runtime"),
        ("superlink", "--ssl-keyfile", "needs --ssl-keyfile"),
    ],
)
def test_required_flags(env: dict[str, str], role: str, drop: str, check: str) -> None:
    argv = list(NODE if role == "supernode" else LINK)
    i = argv.index(drop)
    del argv[i : i + (1 if drop.startswith("--enable") or drop.startswith("--disable") else 2)]
    assert check in refused(role, argv, env)


def test_an_empty_superlink_host_is_refused_not_taken_for_loopback(env: dict[str, str]) -> None:
    """Found by a hostile review: ``--host=`` passed the loopback check as 127.0.0.1,
    and uvicorn bound Flower's Control API (no authentication) to 0.0.0.0 and [::]."""
    i = LINK.index("--host")
    argv = [*LINK[:i], "--host=", *LINK[i + 2 :]]
    assert "--host has an empty value: give one or leave the flag out" in refused(
        "superlink", argv, env
    )


def test_ports_are_checked(env: dict[str, str]) -> None:
    assert parse_flower("supernode", [*NODE, "--port", "9095"], env).port(9094) == 9095
    assert parse_flower("supernode", NODE, env).port(9094) == 9094
    with pytest.raises(FlowerError, match="--port 99999 is not a port"):
        parse_flower("supernode", [*NODE, "--port", "99999"], env).port(9094)


def test_apps_run_only_through_secfls_superexec(env: dict[str, str]) -> None:
    argv = [a if a != "process" else "subprocess" for a in NODE]
    assert "needs --isolation process" in refused("supernode", argv, env)


def test_keys_must_be_the_ones_secfl_run_injected(env: dict[str, str], tmp_path: Path) -> None:
    own = tmp_path / "own.key"
    own.write_text("x")
    argv = [str(own) if a.endswith("node.key") else a for a in NODE]
    assert "not a file secfl run injected" in refused("supernode", argv, env)
    argv = [a.replace("ca.pem", "missing.pem") for a in NODE]
    assert "does not exist: the policy must inject it" in refused("supernode", argv, env)
    unset = {k: v for k, v in env.items() if k != "SECFL_FILES"}
    assert "$SECFL_FILES is not set: start this under `secfl run`" in refused(
        "supernode", NODE, unset
    )
    assert "runs 'flower-supernode', not 'flower-superlink'" in refused("supernode", LINK, env)


def test_only_secfl_folders_expand(env: dict[str, str]) -> None:
    assert expand("$HOME/$SECFL_FILES/x", env) == f"$HOME/{env['SECFL_FILES']}/x"


def test_a_private_folder_named_to_end_a_flags_string_is_refused(
    flower_python: Path, tmp_path: Path
) -> None:
    """Found by a hostile review: the host chooses where ``secfl run`` makes its private
    folder (``$TMPDIR`` when /dev/shm is not writable), so what ``$SECFL_VOLUMES``
    expands to. A quote in it ended the node config's string: Flower's own parser read
    ``data-path`` as a folder of the host's, and the ClientApp trained on the host's
    files instead of the site's shielded volume. A folder with a quote, a backslash or
    a space in its name is refused, in one line, before anything starts."""
    host = tmp_path / "host-data"
    host.mkdir()
    files = tmp_path / 'host-data" x="' / "secfl-run-1"  # $TMPDIR, then the launcher's own
    (files / "flower").mkdir(parents=True)
    for name in ("ca.pem", "node.key"):
        (files / "flower" / name).write_text("x")
    env = {"SECFL_FILES": str(files), "SECFL_VOLUMES": str(files / "volumes")}
    # what Flower makes of the node config that expansion gave before the check
    value = 'data-path="$SECFL_VOLUMES/site-1-data"'.replace("$SECFL_VOLUMES", env["SECFL_VOLUMES"])
    probe = (
        "import json, sys\n"
        "from flwr.common.config import parse_config_args\n"
        "print(json.dumps(parse_config_args([sys.argv[1]])))\n"
    )
    done = subprocess.run([str(flower_python), "-c", probe, value], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["data-path"] == str(host)
    message = refused("supernode", NODE, env)
    assert "$SECFL_FILES" in message and "a quote, a backslash or a space" in message
    for name in ("a b", "a\\b", "a'b", "a\nb"):
        other = {**env, "SECFL_VOLUMES": str(tmp_path / name / "volumes")}
        with pytest.raises(FlowerError, match="a quote, a backslash or a space"):
            expand('data-path="$SECFL_VOLUMES/site-1-data"', other)


def test_flowers_own_apis_stay_on_loopback() -> None:
    for host in ("127.0.0.1", "::1", "[::1]"):
        check_loopback("x", host)
    # a name, localhost included, is the host's to resolve (its /etc/hosts): a hostile
    # review had Flower's plaintext API bound to every interface through it
    for host in ("0.0.0.0", "10.0.0.1", "link.example", "localhost"):  # noqa: S104 - refused
        with pytest.raises(FlowerError, match="not on loopback"):
            check_loopback("x", host)


def test_flower_gets_no_inherited_flwr_or_python_settings(env: dict[str, str]) -> None:
    paths = PrivatePaths.create(env)
    base = {"FLWR_INTERNAL_GRPC_CONTROL_API": "1", "FLWR_HOME": "/home/x", "PATH": "/bin",
            "PYTHONPATH": "/evil", "LD_PRELOAD": "/evil.so", "HOME": "/root",
            "PYTHONUNBUFFERED": "1", "TMPDIR": "/tmp", "TMP": "/tmp"}  # fmt: skip
    out = clean_env(base, paths)
    assert "FLWR_INTERNAL_GRPC_CONTROL_API" not in out
    assert "PYTHONPATH" not in out and "LD_PRELOAD" not in out
    assert out["FLWR_HOME"] == str(paths.home) and out["HOME"] == "/root"
    assert out["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert out["FLWR_TELEMETRY_ENABLED"] == "0"
    # installing a FAB unpacks the app's code in a temporary folder: the private one
    assert out["TMPDIR"] == out["TEMP"] == out["TMP"] == str(paths.tmp)
    assert (paths.tmp.stat().st_mode & 0o777) == 0o700
    assert (paths.home.stat().st_mode & 0o777) == 0o700
    with pytest.raises(FlowerError, match="already exists in \\$SECFL_FILES"):
        PrivatePaths.create(env)


def test_the_superlink_submits_only_the_measured_fab(env: dict[str, str], tmp_path: Path) -> None:
    fab = tmp_path / "app.fab"
    data = made_fab()  # (what a FAB holds: tests/flower/test_fab_contents.py)
    fab.write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    assert load_fab(str(fab), good, env) == data
    with pytest.raises(FlowerError, match="^fab: app.fab has sha256 .* not the board-approved"):
        load_fab(str(fab), "0" * 64, env)


def test_node_keys_are_read_as_flower_compares_them(tmp_path: Path) -> None:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    pems = [
        k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for k in keys
    ]
    path = tmp_path / "nodes.pem"
    path.write_bytes(b"\n".join(pems) + b"\n")
    assert load_node_keys(path) == dict.fromkeys(pems)  # an earlier policy's: no sites named
    with pytest.raises(FlowerError, match="key 1 names no site .* `secfl flower policy`"):
        load_node_keys(path, named=True)
    path.write_bytes(b"service: site-1\n" + pems[0] + b"service: site-2\n" + pems[1])
    assert load_node_keys(path, named=True) == {pems[0]: "site-1", pems[1]: "site-2"}
    path.write_bytes(b"service: site-1\n" + pems[0] + b"service: site-1\n" + pems[1])
    with pytest.raises(FlowerError, match="names site 'site-1' twice"):
        load_node_keys(path, named=True)
    path.write_bytes(b"service: ../x\n" + pems[0])
    with pytest.raises(FlowerError, match="key 1 names a site that is not a service name"):
        load_node_keys(path, named=True)
    path.write_bytes(pems[0] + pems[0])
    with pytest.raises(FlowerError, match="names a node key twice"):
        load_node_keys(path)
    path.write_bytes(b"")
    with pytest.raises(FlowerError, match="holds no public key"):
        load_node_keys(path)


def test_the_node_key_is_rewritten_for_flower_in_place(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "node.key"
    path.write_bytes(private_pem(key))
    openssh_key(path)
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = serialization.load_ssh_private_key(data, None)
    assert loaded.public_key() == key.public_key()  # type: ignore[comparison-overlap]
    path.write_text("not a key")
    with pytest.raises(FlowerError, match="is not a PEM private key"):
        openssh_key(path)


def test_the_package_imports_no_flower(flower_python: Path) -> None:
    """``import secfl.flower`` (the policy side) pulls in no Flower, even where Flower is
    installed; its strategies need Flower and say so where it is not."""
    probe = (
        "import sys, secfl.flower, secfl.flower._policy, secfl.flower._wrap\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'flwr'], 'flwr imported'\n"
        "from secfl.flower import SecflStrategy\n"
        "assert 'flwr' in sys.modules\n"
    )
    done = subprocess.run([str(flower_python), "-c", probe], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    import secfl.flower

    with pytest.raises(ImportError, match="is a Flower strategy: import it where Flower is"):
        _ = secfl.flower.SecflStrategy


def _node_keys(n: int) -> list[bytes]:
    """``n`` SuperNode public keys, as Flower registers them (SPKI PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return [
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for _ in range(n)
    ]


def test_the_gate_serves_the_fleet_api_and_nothing_else(tmp_path: Path) -> None:
    """What never reaches Flower (answered by the gate itself, 403, 404 or 413, one line)."""
    import asyncio
    from base64 import b64encode

    import httpx

    from secfl.flower._gate import MAX_BODY, FleetGate
    from secfl.flower._local import tls_files

    ca = tls_files(tmp_path, ["127.0.0.1"])["ca"]
    site, other = _node_keys(2)
    gate = FleetGate(
        "https://127.0.0.1:9", ssl.create_default_context(cafile=ca), [site]
    )  # nothing listens upstream
    mine = {"flwr-public-key": b64encode(site).decode()}
    foreign = {"flwr-public-key": b64encode(other).decode()}
    both = [("flwr-public-key", b64encode(k).decode()) for k in (site, other)]

    async def calls() -> list[tuple[int, str]]:
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="https://gate") as client:
            replies = [
                await client.post("/v1/control/start-run", content=b"x", headers=mine),
                await client.post("/v1/runtime/acquire-task", content=b"x", headers=mine),
                await client.get("/v1/fleet/pull-messages", headers=mine),
                await client.post("/v1/fleet/not-a-call", content=b"x", headers=mine),
                await client.post("/v1/fleet/pull-messages?x=1", content=b"x", headers=mine),
                await client.get("/docs"),
                await client.post(
                    "/v1/fleet/push-object", content=b"\0" * (MAX_BODY + 1), headers=mine
                ),
                # a key of its own (an insider may have registered it with Flower)
                await client.post("/v1/fleet/activate-node", content=b"x", headers=foreign),
                await client.post("/v1/fleet/pull-messages", content=b"x"),  # no key
                # two keys: Flower and the gate could read either
                await client.post("/v1/fleet/pull-messages", content=b"x", headers=both),
                await client.post(  # not base64
                    "/v1/fleet/pull-messages", content=b"x", headers={"flwr-public-key": "*"}
                ),
                await client.post("/v1/fleet/pull-messages", content=b"x", headers=mine),
            ]
        return [(r.status_code, r.json()["error"]) for r in replies]

    out = asyncio.run(calls())
    assert [code for code, _ in out] == [404] * 6 + [413] + [403] * 4 + [502]
    assert out[0][1].startswith("gate: only the Fleet API is served here")
    assert out[6][1] == f"gate: request larger than {MAX_BODY} bytes"
    assert {error for _, error in out[7:11]} == {
        "gate: the request's SuperNode key is not one of the policy's attested nodes"
    }
    assert out[11][1].startswith("gate: the SuperLink did not answer")  # forwarded: no upstream
    assert gate.refused == 10 and gate.forwarded == 0


@contextlib.contextmanager
def _gate(tmp_path: Path, gate: FleetGate | None = None) -> Iterator[tuple[int, str]]:
    """The real gate over TLS on loopback (nothing listens upstream); its port and CA."""
    from secfl.flower._gate import serve, server_context
    from secfl.flower._local import tls_files

    tls = tls_files(tmp_path, ["127.0.0.1"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gate = gate or FleetGate(
        "https://127.0.0.1:9", ssl.create_default_context(cafile=tls["ca"]), []
    )
    server, thread = serve(
        gate, "127.0.0.1", port, server_context(str(tls["crt"]), str(tls["key"]))
    )
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield port, str(tls["ca"])
    finally:
        server.should_exit = True
        thread.join(10)


def _tls(port: int, ca: str) -> ssl.SSLSocket:
    """A TLS connection to the gate on ``port``."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname="127.0.0.1")


def _all_of(conn: ssl.SSLSocket) -> bytes:
    """What the gate sends on ``conn`` until it closes it (3 s at most between reads)."""
    answer = b""
    conn.settimeout(3)
    with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError, OSError):
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def _trickle(conn: ssl.SSLSocket, stop: threading.Event) -> None:
    """A byte every 20 ms on ``conn`` until ``stop``."""
    with contextlib.suppress(OSError):
        while not stop.wait(0.02):
            conn.sendall(b"x")


def _answered(port: int, ca: str) -> int:
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=5) as client:
        return client.post(f"https://127.0.0.1:{port}/v1/control/x", content=b"x").status_code


def test_a_forwarded_answer_carries_each_header_once(tmp_path: Path) -> None:
    """From a review: the SuperLink's ``date`` and ``server`` went out beside the
    gate's own (a real upstream over TLS, as Flower's REST API writes both)."""
    from base64 import b64encode
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from secfl.flower._local import tls_files

    class Upstream(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)  # (with its own Server and Date)
            self.send_header("content-length", "2")
            self.send_header("x-flower", "kept")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    up = tls_files(tmp_path / "up", ["127.0.0.1"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(up["crt"]), str(up["key"]))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (site,) = _node_keys(1)
    gate = FleetGate(
        f"https://127.0.0.1:{server.server_port}",
        ssl.create_default_context(cafile=up["ca"]),
        [site],
    )
    key = {"flwr-public-key": b64encode(site).decode()}
    try:
        with _gate(tmp_path / "gate", gate) as (port, ca):
            trust = ssl.create_default_context(cafile=ca)
            with httpx.Client(verify=trust, base_url=f"https://127.0.0.1:{port}") as client:
                reply = client.post("/v1/fleet/pull-messages", content=b"x", headers=key)
                refused = client.post("/v1/control/x", content=b"x")
    finally:
        server.shutdown()
        server.server_close()
    assert (reply.status_code, reply.content, reply.headers["x-flower"]) == (200, b"ok", "kept")
    for answer in (reply, refused):
        names = [name.lower() for name, _ in answer.headers.raw]
        assert sorted(names) == sorted(set(names)) and names.count(b"date") == 1, names
        assert b"server" not in names


def test_a_header_that_never_ends_is_cut_off_not_buffered(tmp_path: Path) -> None:
    """One connection, no key needed, sends a request whose header never ends: the
    real gate closes it past MAX_HEAD instead of keeping every byte (with httptools
    alone, its memory grew by more than the bytes sent, without limit)."""
    from secfl._internal.httpparser import MAX_HEAD

    with _gate(tmp_path) as (port, ca):
        context = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nX-Long: ")
            sent, answer = 0, b""
            try:
                while sent < 16 * MAX_HEAD:
                    conn.sendall(b"a" * 4096)
                    sent += 4096
                answer = conn.recv(4096)
            except (ConnectionError, ssl.SSLError, TimeoutError):
                pass  # closed on us: what the gate should do
            assert sent < 16 * MAX_HEAD or answer.startswith(b"HTTP/1.1 4"), answer[:80]
        assert _answered(port, ca) == 404  # still serving others


@pytest.mark.parametrize(
    ("form", "with_key"), [("many fields", True), ("one value", True), ("one name", False)]
)
def test_trailers_that_never_end_are_cut_off_not_buffered(
    tmp_path: Path, form: str, with_key: bool
) -> None:
    """Found by hostile reviews: httptools adds a chunked body's trailers to the
    request's header list after the head, where the guard counted bytes, had ended; and
    it holds one field's name or value in a buffer of its own until the next field
    begins. Anyone who reached the gate (or the SPM, behind the same guard; a 403 for
    want of a node key leaves the connection open) could make it hold every trailer
    byte it sent. Every byte of a trailer section counts against MAX_HEAD now."""
    from base64 import b64encode

    from secfl._internal.httpparser import MAX_HEAD

    (site,) = _node_keys(1)
    gate = FleetGate("https://127.0.0.1:9", ssl.create_default_context(), [site])
    key = b"flwr-public-key: " + b64encode(site) + b"\r\n" if with_key else b""
    start, more = {
        "many fields": (b"", b"x-pad: " + b"a" * 8000 + b"\r\n"),
        "one value": (b"x-pad: ", b"a" * 8000),
        "one name": (b"x-pad", b"a" * 8000),
    }[form]
    head = (
        b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + key + b"\r\n1\r\nx\r\n0\r\n" + start
    )  # fmt: skip
    with _gate(tmp_path, gate) as (port, ca):
        context = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(head)
            sent = 0
            try:  # 64 MiB, 1024 times MAX_HEAD: far more than socket buffers take in
                while sent < 1024 * MAX_HEAD:
                    conn.sendall(more)
                    sent += len(more)
            except (ConnectionError, ssl.SSLError, TimeoutError):
                pass  # closed on us: what the gate should do
            assert sent < 1024 * MAX_HEAD, "the gate kept reading the trailers"
        assert _answered(port, ca) == 404


def test_stalled_connections_cannot_lock_supernodes_out_of_the_gate(tmp_path: Path) -> None:
    """300 connections that never finish a request (anyone who reaches the gate may
    open them): a SuperNode's request is still answered (uvicorn alone answered 503
    to every request while 256 such connections stayed open, for ever)."""
    with _gate(tmp_path) as (port, ca):
        context = ssl.create_default_context(cafile=ca)
        stalled = []
        try:
            for _ in range(300):
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
                conn.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                stalled.append(conn)
            assert _answered(port, ca) == 404  # through the gate, not 503
        finally:
            for conn in stalled:
                conn.close()


def test_requests_held_together_stay_within_the_gates_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: a node's key is public (the policy lists it), so anyone who
    reaches the gate could open 256 connections, each sending most of a 16 MiB body
    that names it and then nothing: 4 GiB held in the SuperLink's TEE. Past the budget
    a request is answered 503, and what a connection held goes when it goes. Each
    request's first MiB is not counted, so uploads that stall holding the whole budget
    keep no SuperNode's small calls out (the third review); and once stalled past
    STALL_SECONDS they are dropped to make room for a large one, which the third review
    found waiting until the guard's body deadline closed them."""
    from base64 import b64encode

    from secfl.flower import _gate as gate_module
    from secfl.flower._gate import FREE_BYTES

    monkeypatch.setattr(
        gate_module, "STALL_SECONDS", 3600.0, raising=False
    )  # nothing counts as stalled yet

    (site,) = _node_keys(1)
    key = {"flwr-public-key": b64encode(site).decode()}
    gate = FleetGate("https://127.0.0.1:9", ssl.create_default_context(), [site])
    gate.max_buffered = 3 << 20  # a budget of three MiB, in place of 1 GiB
    head = (
        b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"flwr-public-key: " + b64encode(site) + b"\r\n\r\n"
    )

    def forwarded(client: httpx.Client, port: int, size: int) -> bool:
        url = f"https://127.0.0.1:{port}/v1/fleet/push-object"
        reply = client.post(url, content=bytes(size), headers=key)
        return reply.json()["error"].startswith("gate: the SuperLink did not answer")

    with _gate(tmp_path, gate) as (port, ca):
        context = ssl.create_default_context(cafile=ca)
        client = httpx.Client(verify=context, timeout=10)
        held = []
        try:
            for _ in range(2):  # 3 MiB each of a 4 MiB body (2 MiB counted), then silence
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
                conn.sendall(head % (4 << 20) + bytes(3 << 20))
                held.append(conn)
                deadline = time.monotonic() + 10  # the first is all in before the second
                while len(held) == 1 and gate.buffered < 2 << 20:
                    assert time.monotonic() < deadline, gate.buffered
                    time.sleep(0.01)
            answer = held[-1].recv(4096)
            while answer and not answer.endswith(b"}"):  # the body may come apart
                answer += held[-1].recv(4096)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
            assert b"gate: too many requests under way; try again" in answer
            deadline = time.monotonic() + 10  # the refused one lets go of what it held
            while gate.buffered != 2 << 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert gate.buffered == 2 << 20 <= gate.max_buffered  # the first holds its 2 MiB
            assert forwarded(client, port, FREE_BYTES)  # a small call still passes
            assert not forwarded(client, port, FREE_BYTES + (2 << 20))  # a large one waits
            # ... until the first counts as stalled, even trickling a byte at a time
            # (the review of the first rule held the budget so): it is then dropped to
            # make room, but only for a request that dropping it admits
            monkeypatch.setattr(gate_module, "STALL_SECONDS", 0.2, raising=False)
            trickling = threading.Event()
            trickle = threading.Thread(target=_trickle, args=(held[0], trickling))
            trickle.start()
            try:
                time.sleep(0.3)
                assert not forwarded(client, port, FREE_BYTES + (3 << 20) + 1)  # too large
                assert gate.buffered >= 2 << 20  # ... so the stalled one was kept
                assert forwarded(client, port, FREE_BYTES + (2 << 20))
            finally:
                trickling.set()
                trickle.join(10)
            held[0].sendall(b"x")  # its next byte is answered 503
            answer = held[0].recv(4096)
            while answer and not answer.endswith(b"}"):
                answer += held[0].recv(4096)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
            assert b"gate: this request stalled and was dropped" in answer
        finally:
            for conn in held:
                conn.close()
        deadline = time.monotonic() + 10
        while gate.buffered and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gate.buffered == 0  # what the connections held went with them
        assert forwarded(client, port, FREE_BYTES + (2 << 20))  # served again
        client.close()


@pytest.mark.timeout(300)
def test_the_watch_unregisters_foreign_keys_and_stops_a_flood(
    flower_python: Path, tmp_path: Path
) -> None:
    """Against a real flower-superlink. Found by review of the watch's first version: a
    flood of registrations outpaced it (an insider's key stayed usable on loopback for
    35 s), past 64 keys it audited nothing, and one failed read of the registry ended
    the wrapper with a traceback."""
    import json

    from secfl.flower._nodes import MAX_FAILURES, MAX_FOREIGN

    done = subprocess.run(
        [str(flower_python), str(Path(__file__).with_name("watch_probe.py")), str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["clean"] == 0  # the policy's own keys stay
    assert out["removed"] == 2 and out["foreign_status"] == ["unregistered"]
    assert "unregistered" not in out["site_status"]
    assert [a["node_id"] for a in out["audited"]] == out["ids"]
    assert all(len(a["key_sha256"]) == 64 for a in out["audited"])
    assert out["flood"].startswith(
        f"flower: {MAX_FOREIGN + 1} node keys not in the policy were registered on the "
        "SuperLink's loopback Control API"
    )
    assert out["flood_events"] == [{"foreign": MAX_FOREIGN + 1, "registered_now": MAX_FOREIGN - 1}]
    assert out["failures"][:-1] == ["tried again later"] * (MAX_FAILURES - 1)
    assert out["failures"][-1].startswith(
        f"flower: the SuperLink's node registry could not be read {MAX_FAILURES} times in a row"
    )


@pytest.mark.parametrize("form", ["long field", "padded head", "padded trailers"])
def test_a_request_refused_for_its_head_never_reaches_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """Found by the fourth review: the parser went on through what one read delivered
    after a 431, so a request whose head had just been refused (its last field past
    MAX_HEAD, reported when the head ends), or one pipelined behind it, reached the
    app anyway, with that field dropped. And by the next review: a head or a chunked
    body's trailers padded with spaces (which no field counts) past MAX_HEAD, ending
    within one read, were parsed whole before the count saw them."""
    from base64 import b64encode

    from secfl._internal.httpparser import MAX_HEAD

    (site,) = _node_keys(1)
    gate = FleetGate("https://127.0.0.1:9", ssl.create_default_context(), [site])
    forwarded: list[bytes] = []

    async def forward(path: str, body: bytes, headers: Any, send: Any) -> None:
        forwarded.append(body)

    monkeypatch.setattr(gate, "_forward", forward)
    pad = b" " * (MAX_HEAD + 100)
    key = b"flwr-public-key: " + b64encode(site) + b"\r\n"
    request = {
        "long field": b"POST /v1/control/a HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * (MAX_HEAD + 10)
        + b"\r\nContent-Length: 0\r\n\r\n"
        + b"POST /v1/control/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "padded head": b"POST /v1/control/a HTTP/1.1\r\nHost: x\r\nX-Pad:" + pad
        + b"v\r\nContent-Length: 0\r\n\r\n",
        "padded trailers": b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\n" + key
        + b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Pad:" + pad + b"v\r\n\r\n",
    }[form]  # fmt: skip
    with _gate(tmp_path, gate) as (port, ca):
        with _tls(port, ca) as conn:
            conn.sendall(request)
            answer = _all_of(conn)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
        time.sleep(0.3)
        # no request reached the gate's app (it 404s the first two, forwards the third)
        assert gate.refused == 0 and forwarded == []
        assert _answered(port, ca) == 404 and gate.refused == 1  # others still served


def test_a_slow_request_never_drops_itself_and_goes_on_truncated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the second review of the stall rule: a request slower than the rule's
    pace is stalled itself, and when its last piece met a short budget it dropped its
    own body to make room, then was forwarded with only that last piece. (The gate as an
    ASGI app, in process: the pieces as uvicorn hands them over.)"""
    import asyncio
    from base64 import b64encode

    from secfl.flower import _gate as gate_module

    mib = 1 << 20
    monkeypatch.setattr(gate_module, "STALL_SECONDS", 0.2)
    (site,) = _node_keys(1)
    gate = FleetGate("https://127.0.0.1:9", ssl.create_default_context(), [site],
                     max_buffered=int(1.5 * mib))  # fmt: skip
    forwarded: list[int] = []

    async def forward(path: str, body: bytes, headers: Any, send: Any) -> None:
        forwarded.append(len(body))
        await gate_module._answer(send, 200, "ok")

    monkeypatch.setattr(gate, "_forward", forward)

    def scope(length: int) -> dict[str, Any]:
        headers = [(b"flwr-public-key", b64encode(site)), (b"content-length", b"%d" % length)]
        return {"type": "http", "method": "POST", "path": "/v1/fleet/push-object",
                "query_string": b"", "headers": headers}  # fmt: skip

    async def run() -> tuple[list[int], list[int]]:
        answers: dict[str, list[int]] = {"a": [], "b": []}
        queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        tasks = []
        for name, length in (("a", int(1.75 * mib)), ("b", 3 * mib)):
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            queues[name] = queue

            async def send(message: dict[str, Any], got: list[int] = answers[name]) -> None:
                if message["type"] == "http.response.start":
                    got.append(message["status"])

            tasks.append(asyncio.create_task(gate(scope(length), queue.get, send)))
        for name, size in (("a", mib), ("a", mib // 4), ("b", mib), ("b", int(0.9 * mib))):
            await queues[name].put({"type": "http.request", "body": bytes(size), "more_body": True})
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # both stalled now
        await queues["a"].put({"type": "http.request", "body": bytes(mib // 2), "more_body": False})
        await asyncio.wait_for(tasks[0], 5)
        await queues["b"].put({"type": "http.disconnect"})
        await asyncio.wait_for(tasks[1], 5)
        return answers["a"], answers["b"]

    a, _ = asyncio.run(run())
    assert a == [200] and forwarded == [int(1.75 * mib)]  # whole, the stalled other dropped
    assert gate.buffered == 0


@pytest.mark.parametrize(
    "form", ["pipelined after a body", "trailers after chunk data", "not padded, across a slice"]
)
def test_padding_behind_a_bodys_end_in_one_read_never_reaches_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """Found by the review of the slices: a body went to the parser whole, so a head (or
    a trailer section) padded past MAX_HEAD behind a body's end, in the same read, was
    parsed whole and its request reached the app. A slow moment of the event loop (one
    slow on_body here) lets the rest of the client's bytes arrive as one read."""
    from base64 import b64encode

    from secfl._internal import httpparser
    from secfl._internal.httpparser import MAX_HEAD

    (site,) = _node_keys(1)
    gate = FleetGate("https://127.0.0.1:9", ssl.create_default_context(), [site])
    forwarded: list[tuple[str, int]] = []

    async def forward(path: str, body: bytes, headers: Any, send: Any) -> None:
        forwarded.append((path, len(body)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    monkeypatch.setattr(gate, "_forward", forward)
    real_on_body, stalled = httpparser.GuardedHttp.on_body, []

    def on_body(self: Any, body: bytes) -> None:
        if not stalled:  # the loop is busy for a moment: the bytes pile up
            stalled.append(1)
            time.sleep(0.5)
        real_on_body(self, body)

    monkeypatch.setattr(httpparser.GuardedHttp, "on_body", on_body)
    pad, body = b" " * (MAX_HEAD + 100), b"x" * 8192
    key = b"flwr-public-key: " + b64encode(site) + b"\r\n"
    head = b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\n" + key
    first, rest = {
        "pipelined after a body": (
            head + b"Content-Length: 8192\r\n\r\n" + body[:1000],
            body[1000:] + b"POST /v1/fleet/pull-object HTTP/1.1\r\nHost: x\r\n" + key
            + b"X-Pad:" + pad + b"v\r\nContent-Length: 0\r\n\r\n"),
        "trailers after chunk data": (
            head + b"Transfer-Encoding: chunked\r\n\r\n2000\r\n" + body[:1000],
            body[1000:] + b"\r\n0\r\nX-Pad:" + pad + b"v\r\n\r\n"),
        # (and its review: a legitimate pipelined head that a body's slice cut in two
        # was refused, the body's bytes in that slice counted as its head)
        "not padded, across a slice": (
            head + b"Content-Length: %d\r\n\r\n" % (MAX_HEAD + 500) + b"x" * 1000,
            b"x" * (MAX_HEAD - 500) + b"POST /v1/fleet/pull-object HTTP/1.1\r\nHost: x\r\n"
            + key + b"X-Note: " + b"a" * 2000 + b"\r\nContent-Length: 0\r\n\r\n"),
    }[form]  # fmt: skip
    with _gate(tmp_path, gate) as (port, ca):
        with _tls(port, ca) as conn:
            conn.sendall(first)
            time.sleep(0.2)  # the server is in on_body's stall now
            conn.sendall(rest)
            answer = _all_of(conn)
        time.sleep(0.3)
    if form.startswith("not padded"):
        assert b"431" not in answer, answer[:200]
        assert forwarded == [
            ("/v1/fleet/push-object", MAX_HEAD + 500),
            ("/v1/fleet/pull-object", 0),
        ]
        return
    assert b"HTTP/1.1 431" in answer, answer[:200]
    # the first request, whole, reaches it when it is complete on its own; the padded
    # one never does
    assert forwarded == ([("/v1/fleet/push-object", 8192)] if form.startswith("pipe") else [])


def test_the_gate_refuses_protocol_upgrades_and_keeps_no_connection_for_them(
    flower_python: Path, tmp_path: Path
) -> None:
    """Found by a hostile review: in the Flower venv, where the gate runs, uvicorn finds
    a WebSocket library and handed an ``Upgrade: websocket`` request to it, before the
    gate's peer check (a revoked site could send it), taking the connection from the
    gate's guard: counted as busy until the request deadline (60 s), 256 of them sent
    in a second locked every SuperNode out. An h2c upgrade's request reached Flower with
    its body cut off. Each is refused now, in one line, and nothing reaches Flower."""
    import json

    done = subprocess.run(
        [str(flower_python), str(Path(__file__).with_name("gate_upgrade_probe.py")),
         str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["websocket"] == out["h2c"] == "HTTP/1.1 400 Bad Request", out
    assert out["live"] <= 1, out  # the upgrades' connections are gone, not counted busy
    assert out["call"] == "HTTP/1.1 200 OK", out
    assert out["seen"] == [["/v1/fleet/pull-messages", 2]], out  # the ordinary call alone


def test_an_apps_folder_is_never_on_its_tasks_import_path(
    flower_python: Path, tmp_path: Path
) -> None:
    """Found by a review: tasks ran as ``python -m ...`` in the folder where apps
    write, which Python puts first on ``sys.path``: a module an app left there (a
    ``flwr`` or ``secfl`` package) was imported in place of the real one by every later
    task. The executor starts them with ``-P``."""
    import json

    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [str(flower_python), str(Path(__file__).with_name("launch_probe.py")), str(work)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    argv = out["argv"]
    assert argv[argv.index("-m") + 1] == "secfl.flower._app_process"
    assert out["cwd"] == str(work)  # where the task runs...
    assert not {"", ".", str(work)} & set(out["path"])  # ...is not where it imports from
    assert "--token-file" in argv and "token" not in argv  # the token is in a file
