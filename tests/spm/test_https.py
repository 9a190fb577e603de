"""The SPM client's HTTPS (secfl.spm._https) against a real TLS server on loopback:
connections are kept and reused (also past descriptor 1024), one the server closed while
idle is not (and costs no failed request), the certificate is verified, an answer cut
short is an error and not a shorter answer, a request that went out is not sent again
after a broken answer, answers are bounded in size, and a server that stops answering
times out."""

from __future__ import annotations

import os
import resource
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from secfl.flower._local import tls_files
from secfl.spm import _https
from secfl.spm._https import ConnectFailed, PinnedHttps, RequestFailed


@dataclass
class Served:
    port: int
    ca: Path
    #: The client port of each request, in order: equal ports are one kept connection.
    peers: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def self_signed(folder: Path) -> dict[str, Path]:
    """A self-signed certificate for 127.0.0.1, as the SPM presents one."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from secfl._internal.x509util import general_names, private_pem

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spm")])
    now = datetime.now(UTC) - timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(general_names(["127.0.0.1"])), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ca": folder / "crt.pem", "crt": folder / "crt.pem", "key": folder / "key.pem"}
    files["crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(private_pem(key))
    return files


@contextmanager
def tls_server(
    tmp_path: Path, host: str = "127.0.0.1", files: dict[str, Path] | None = None
) -> Iterator[Served]:
    files = files or tls_files(tmp_path / "tls", [host])
    state = Served(0, files["ca"])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.do_GET()

        def do_GET(self) -> None:
            state.peers.append(self.client_address[1])
            state.paths.append(self.path)
            state.hosts.append(self.headers.get("Host", ""))
            if self.path == "/hang":
                state.release.wait(30)
                return
            if self.path == "/drop":  # read, then closed without a word: acted on, or not
                self.close_connection = True
                return
            if self.path == "/slow":
                state.release.wait(0.3)
            if self.path == "/short":  # announces 100 bytes, sends 10, closes
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b'{"ok": tru')
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if self.path == "/junk":  # bytes that are no TLS record, under TLS's feet
                raw = socket.socket(fileno=os.dup(self.connection.fileno()))
                raw.sendall(b"\x17\x03\x03\x00\x05junk!")
                raw.close()
                self.close_connection = True
                return
            body = b"x" * 1000 if self.path == "/big" else b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            # "/bye": the server drops the connection once idle, as the SPM does with an
            # idle keep-alive connection, without a "Connection: close" to warn of it
            self.close_connection = self.path == "/bye"

        def log_message(self, *args: object) -> None:
            pass

    class Httpd(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    httpd = Httpd((host, 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["crt"], files["key"])
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
    state.port = httpd.server_address[1]
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()


def client(
    served: Served,
    ca: Path | None = None,
    timeout: float = 10.0,
    host: str = "127.0.0.1",
    prefix: str = "",
) -> PinnedHttps:
    context = ssl.create_default_context(cafile=str(ca or served.ca))
    return PinnedHttps(host, served.port, context, timeout, prefix=prefix)


def test_requests_share_one_kept_connection(tmp_path: Path) -> None:
    with tls_server(tmp_path) as served:
        http = client(served)
        for _ in range(5):
            assert http.request("GET", "/ok") == (200, b'{"ok": true}')
        http.close()
    assert len(served.peers) == 5 and len(set(served.peers)) == 1


def test_a_connection_the_server_closed_while_idle_is_not_reused(tmp_path: Path) -> None:
    with tls_server(tmp_path) as served:
        http = client(served)
        assert http.request("GET", "/bye").status == 200
        # the next request goes out on a new connection, not into the closed one (which
        # would fail, and a failed POST may be one the server acted on)
        for _ in range(50):
            conn = http._idle[0] if http._idle else None
            if conn is None or not _https._still_open(conn):
                break
            threading.Event().wait(0.01)
        assert http.request("GET", "/ok").status == 200
        http.close()
    assert len(served.peers) == 2 and served.peers[0] != served.peers[1]


def test_the_certificate_is_verified(tmp_path: Path) -> None:
    other = tls_files(tmp_path / "other", ["127.0.0.1"])  # another CA's certificate
    with tls_server(tmp_path) as served:
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            client(served, ca=other["ca"]).request("GET", "/ok")
        assert client(served).request("GET", "/ok").status == 200  # the right one passes


def test_an_answer_too_large_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_https, "MAX_BODY", 999)
    with tls_server(tmp_path) as served, pytest.raises(RequestFailed, match="larger than 999"):
        client(served).request("GET", "/big")


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    with tls_server(tmp_path) as served, pytest.raises(RequestFailed, match="timed out"):
        client(served, timeout=0.5).request("GET", "/hang")


def test_an_answer_cut_short_is_an_error_not_a_shorter_answer(tmp_path: Path) -> None:
    # TLS without close_notify reads as an end of stream: only the announced length tells
    with tls_server(tmp_path) as served:
        http = client(served)
        with pytest.raises(ConnectFailed, match="cut short"):
            http.request("GET", "/short")
        assert http._idle == []  # nor is its connection kept


def test_a_request_that_went_out_is_not_sent_again(tmp_path: Path) -> None:
    # a broken answer to a POST (here: bytes that are no TLS record) is not a failure to
    # connect: sent again, a counter increment would be one the SPM may have made
    with tls_server(tmp_path) as served, pytest.raises(RequestFailed):
        client(served).request("POST", "/junk", body=b"{}")
    assert served.paths == ["/junk"]


def test_kept_connections_are_reused_past_descriptor_1024(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip(f"needs 1200 open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = []
    try:
        while not held or held[-1] < 1100:  # the next descriptors are above 1024
            held.append(os.dup(0))
        with tls_server(tmp_path) as served:
            http = client(served)
            for _ in range(3):
                assert http.request("GET", "/ok").status == 200
            assert http._idle and http._idle[0].sock is not None
            assert http._idle[0].sock.fileno() >= 1024
            http.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(set(served.peers)) == 1


def test_the_host_header_and_a_path_prefix(tmp_path: Path) -> None:
    try:
        server = tls_server(tmp_path, "::1")
        served = server.__enter__()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        http = client(served, host="::1", prefix="/spm")
        assert http.request("GET", "/ok").status == 200
        http.close()
    finally:
        server.__exit__(None, None, None)
    assert served.hosts == [f"[::1]:{served.port}"] and served.paths == ["/spm/ok"]


def test_a_dot_segment_in_a_path_is_refused(tmp_path: Path) -> None:
    with tls_server(tmp_path) as served, pytest.raises(RequestFailed, match="'..' segment"):
        client(served).request("GET", "/v1/policies/../audit")
    assert served.paths == []


def test_closing_during_a_request_keeps_no_connection(tmp_path: Path) -> None:
    with tls_server(tmp_path) as served:
        http = client(served)
        answers: list[int] = []
        slow = threading.Thread(target=lambda: answers.append(http.request("GET", "/slow")[0]))
        slow.start()
        threading.Event().wait(0.1)
        http.close()
        slow.join(10)
        assert answers == [200] and http._idle == []


def test_a_request_whose_answer_was_lost_is_sent_again_only_when_harmless(
    tmp_path: Path,
) -> None:
    from cryptography import x509

    from secfl.errors import SpmError
    from secfl.spm._report_data import spki_sha256
    from secfl.spm.client import SpmClient

    files = self_signed(tmp_path / "spm")
    with tls_server(tmp_path, files=files) as served:
        cert = x509.load_pem_x509_certificate(files["crt"].read_bytes())
        url = f"https://127.0.0.1:{served.port}"
        with SpmClient(url, pin=spki_sha256(cert.public_key()), timeout=10) as spm:
            with pytest.raises(SpmError, match="not sent again: the SPM may have acted on it"):
                spm._request("POST", "/drop", json={"event": "x"})
            assert served.paths == ["/drop"]  # a report, say: not logged twice
            with pytest.raises(SpmError, match="failed"):
                spm._request("POST", "/drop", json={"expect": 1}, resend=True)
            assert served.paths == ["/drop"] * 3  # a named increment: sent again
            with pytest.raises(SpmError, match="failed"):
                spm._request("GET", "/drop")
            assert served.paths == ["/drop"] * 5  # a read: sent again


def test_a_small_body_goes_out_in_the_same_record_as_its_headers(tmp_path: Path) -> None:
    """One TLS record a request (the SPM's event loop woke twice for headers, then body):
    the server's first read, which returns at most one record, holds the body too."""
    files = tls_files(tmp_path / "tls", ["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["crt"], files["key"])
    listener = socket.create_server(("127.0.0.1", 0))
    first: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(10)
            first.append(tls.recv(1 << 16))
            while b'"increment": 1}' not in first[-1]:
                first.append(tls.recv(1 << 16))
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    ca = ssl.create_default_context(cafile=str(files["ca"]))
    http = PinnedHttps("127.0.0.1", listener.getsockname()[1], ca, 10.0)
    body = b'{"increment": 1}'
    assert http.request("POST", "/v1/x", body=body) == (200, b"{}")
    server.join(10)
    listener.close()
    assert first[0].startswith(b"POST /v1/x HTTP/1.1\r\n") and first[0].endswith(b"\r\n\r\n" + body)
