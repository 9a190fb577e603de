"""An impostor at the SPM's address: any TLS key, and every request answered
`400 {"error": MESSAGE}` (MESSAGE from argv[2], JSON). Writes its port to argv[1].
With ``--answers`` as argv[3], argv[2] is a JSON object instead: the last part of a
request's path -> the raw body answered to it with `200` (an SPM that lies)."""

import datetime
import ipaddress
import json
import ssl
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spm")])
now = datetime.datetime.now(datetime.UTC)
cert = (
    x509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=1))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
    )
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    .sign(key, hashes.SHA256())
)
folder = Path(tempfile.mkdtemp())
(folder / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
(folder / "k.pem").write_bytes(
    key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
)
answers = sys.argv[3:] == ["--answers"]
body = json.dumps({"error": json.loads(sys.argv[2])}).encode() if not answers else b""
bodies = {k: v.encode() for k, v in json.loads(sys.argv[2]).items()} if answers else {}


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if answers:
            name = self.path.split("?")[0].rstrip("/").split("/")[-2]  # /v1/policies/NAME/x
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(bodies[name])))
            self.end_headers()
            self.wfile.write(bodies[name])
            return
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *a: object) -> None:
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(folder / "c.pem", folder / "k.pem")
server.socket = ctx.wrap_socket(server.socket, server_side=True)
Path(sys.argv[1]).write_text(str(server.server_address[1]))
server.serve_forever()
