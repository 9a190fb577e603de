"""A Flower SuperNode inside the TEE, as one site's service of the policy.

``secfl run ... --service site-1 --volume site-1-data=site-1.secfl -- PYTHON -m secfl.flower
supernode --fab-sha256 H -- flower-supernode --superlink HOST:PORT
--auth-supernode-private-key '$SECFL_FILES/flower/node.key'
--node-config 'data-path="$SECFL_VOLUMES/site-1-data"' --isolation process
--host 127.0.0.1 --port P``

1. Checks the Flower flags (:mod:`secfl.flower._flags`): TLS on, the node key
   injected by ``secfl run``, process isolation, no run-time installs.
2. Writes the node key (released by the SPM as PEM) in the OpenSSH form Flower reads,
   in place, in the private RAM folder.
3. Starts the relay (:mod:`secfl.flower._relay`): Flower connects to it on loopback,
   and it to the SuperLink's gate, by mutual TLS with this site's attested
   certificate, accepting only the attested, unrevoked ``superlink`` instance.
   (A policy made before the relay gives ``--root-certificates``, the policy's Flower
   CA: then Flower connects directly and trusts any certificate of that CA, which is
   said in the log.)
4. Starts ``flower-supernode`` with the SuperExec secret and its Runtime API over TLS
   with a certificate made here (its key in the RAM folder, its CA's never written:
   the SuperExec and the app processes take tasks and messages from this Flower only,
   never from a process that bound the loopback port first), and its own SuperExec
   (:mod:`secfl.flower._exec`): a ClientApp runs only for a run whose FAB has one of
   the ``--fab-sha256`` digests (on the measured command line, so approved by the
   board); any other run gets an error reply and nothing of it runs, and the refusal
   goes to the SPM's audit log (``fl.flower.fab-refused``, with this site's session).

The ClientApp reads its data where ``node_config`` says (the site's data volume,
opened and checked by ``secfl run``, as a folder in RAM); it knows nothing of secfl.
Exit: flower-supernode's own exit code.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from secfl._internal import files
from secfl.errors import FlowerError
from secfl.flower._attested import SUPERLINK, AttestedTls
from secfl.flower._audit import SpmAudit
from secfl.flower._flags import FlowerCommand, parse_flower
from secfl.flower._relay import Relay
from secfl.flower._tls import tls_files
from secfl.flower._wrap import (
    Child,
    PrivatePaths,
    check_health_address,
    check_loopback,
    clean_env,
    host_port,
    scrub_environment,
    venv_program,
)

__all__ = ["SuperNodeOptions", "main", "openssh_key"]

log = logging.getLogger("secfl.flower")

_SHA256 = re.compile(r"[0-9a-f]{64}")
#: How long the relay's loopback certificate and its CA are valid (days): as long as a
#: run can last. Nothing renews them, and at 30 days a SuperNode that ran longer lost
#: its SuperLink for good (Flower gives up on a certificate error); their keys stay in
#: the wrapper's RAM folder and die with the run.
RELAY_CERT_DAYS = 3650


@dataclass
class SuperNodeOptions:
    fab_sha256: list[str]
    poll: float = 0.25


def openssh_key(path: Path) -> None:
    """Rewrite the EC private key at ``path`` (PEM from the SPM) as OpenSSH, 0600, in place."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = files.read_bounded(path, 65536)
    if data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        return
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise FlowerError(
            f"flower: {path.name} is not a PEM private key: the policy injects "
            "$$SECFL::NAME:key$$ of an ecdsa-p256 secret there"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FlowerError(f"flower: {path.name} is not an EC key (Flower needs a NIST EC key)")
    ssh = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    files.write_private(path, ssh, fsync=False)


def _connection(
    cmd: FlowerCommand, env: dict[str, str], paths: PrivatePaths
) -> tuple[list[str], Relay | None]:
    """Flower's command line, pointed at the relay (started here), or as it is for a
    policy that gives ``--root-certificates`` (made before the relay)."""
    if cmd.value("--root-certificates") is not None:
        log.warning(
            "secfl: --root-certificates given: this SuperNode trusts any SuperLink certificate "
            "of the policy's Flower CA, on a platform the board revoked too; make the policy "
            "again with `secfl flower policy` (mutual TLS with attested certificates)"
        )
        return cmd.argv, None
    address = cmd.value("--superlink") or ""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FlowerError(f"flower: flower-supernode --superlink {address[:80]} is not HOST:PORT")
    tls = AttestedTls.from_env(env, peers={SUPERLINK})
    loopback = tls_files(paths.wrapper / "relay", ["127.0.0.1"], days=RELAY_CERT_DAYS)
    inner = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    inner.minimum_version = ssl.TLSVersion.TLSv1_2
    inner.load_cert_chain(loopback["crt"], loopback["key"])
    relay = Relay(tls, host, int(port), inner)
    local = relay.start()
    tls.start()
    log.info("secfl: Flower reaches the SuperLink at %s through the relay (attested mutual TLS)",
             address)  # fmt: skip
    argv = cmd.replaced("--superlink", f"127.0.0.1:{local}")
    return [*argv, "--root-certificates", str(loopback["ca"])], relay


def main(opts: SuperNodeOptions, flower_argv: list[str]) -> int:
    scrub_environment()  # before any connection: no proxy, no TLS key log
    env = dict(os.environ)
    pins = {h.lower() for h in opts.fab_sha256}
    if not pins or not all(_SHA256.fullmatch(h) for h in pins):
        raise FlowerError(
            "flower: supernode needs --fab-sha256 of the approved app (64 hex digits)"
        )
    cmd = parse_flower("supernode", flower_argv, env)
    host = cmd.value("--host")
    host = "127.0.0.1" if host is None else host  # what Flower gets is what is checked
    check_loopback("flower-supernode (Runtime API)", host)
    check_health_address(cmd.value("--health-server-address"))
    port = cmd.port(9094)
    openssh_key(Path(cmd.value("--auth-supernode-private-key") or ""))

    paths = PrivatePaths.create(env)
    secret_path, secret = paths.secret()
    child_env = clean_env(env, paths)
    flower, relay = _connection(cmd, env, paths)
    # The Runtime API over TLS with a key only this wrapper and Flower hold (in the RAM
    # folder; its CA's key is never written): the SuperExec and the app processes
    # check it, so a process that answers on the port in Flower's place (one that bound
    # it first) hands out no task, and feeds the approved ClientApp no message of its own.
    runtime = tls_files(paths.wrapper / "runtime", [host.strip("[]")], days=RELAY_CERT_DAYS)
    argv = [str(venv_program("flower-supernode")), *flower[1:],
            "--superexec-auth-secret-file", str(secret_path),
            "--ssl-certfile", str(runtime["crt"]), "--ssl-keyfile", str(runtime["key"]),
            "--ssl-ca-certfile", str(runtime["ca"])]  # fmt: skip
    node = Child.start("flower-supernode", argv, child_env, paths.work)

    from flwr.supercore.constant import TaskType

    from secfl.flower._exec import Executor, start_thread

    audit = SpmAudit(env, relay.tls.ident.token if relay is not None else None)
    executor = Executor(
        address=host_port(host, port), secret=secret, allowed=frozenset(pins),
        task_type=TaskType.CLIENT_APP,
        env=child_env, cwd=paths.work, token_dir=paths.wrapper, poll=opts.poll,
        ca_file=str(runtime["ca"]),
        on_refusal=lambda r: audit.report(
            "fab-refused", {"run_id": str(r.run_id), "fab_sha256": r.fab_hash}
        ),
    )  # fmt: skip
    start_thread(executor)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if node.alive():
            node.proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        code = node.proc.wait()
    finally:
        executor.stop()
        node.stop()
        if relay is not None:
            relay.stop()
            relay.tls.stop()
        audit.close()
    return 128 - code if code < 0 else code
