"""A Flower SuperLink inside the TEE, as the policy's ``superlink`` service.

``secfl run ... --service superlink --volume app=app.secfl -- PYTHON -m secfl.flower
superlink --fab '$SECFL_VOLUMES/app/app.fab' --fab-sha256 H --nodes '$SECFL_FILES/flower/nodes.pem'
--listen 0.0.0.0:9092 --mutual-tls [--run-config 'num-server-rounds=3'] -- flower-superlink
--ssl-certfile ... --enable-supernode-auth --isolation process --host 127.0.0.1 --port P
--disable-runtime-dependency-installation``

1. Checks the Flower flags (:mod:`secfl.flower._flags`) and the app: the FAB must have
   the SHA-256 on the (measured) command line.
2. Starts ``flower-superlink`` on loopback with the SuperExec secret.
3. Registers the SuperNode keys the policy released to it (the public halves of the
   attested sites' node keys): with ``--enable-supernode-auth`` no other key joins,
   and while the run lasts it unregisters any other key that appears in Flower's
   registry (:mod:`secfl.flower._nodes`).
4. Serves the Fleet API, and only it, on ``--listen``, and only to the policy's node
   keys (:mod:`secfl.flower._gate`); with ``--mutual-tls`` (every policy ``secfl
   flower policy`` makes) over mutual TLS with this instance's attested certificate,
   to the policy's attested, unrevoked sites only (:mod:`secfl.flower._attested`).
5. Submits the approved FAB as the one run, with the board's run config; nobody
   else can submit (the Control API never leaves the TEE).
6. Runs its own SuperExec (:mod:`secfl.flower._exec`) for that run alone: only the
   approved ServerApp runs, with the board's run config (another run of the same FAB,
   started on the loopback Control API, is refused: ``fl.flower.run-refused``).
7. Waits for the run to end, and reports each step to the SPM's audit log
   (``fl.flower.*``, with the session ``secfl run`` opened). With ``--output`` the
   ServerApp's working folder (its saved model) is sealed as a shield volume under
   the key in ``--output-key``, and nothing of it stays on the host in plaintext.

Exit 0 when the run completed, 1 when it failed or was stopped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from secfl._internal.files import TooLarge, read_bounded
from secfl.errors import FlowerError, SecflError
from secfl.flower._attested import AttestedTls
from secfl.flower._audit import SpmAudit
from secfl.flower._control import control_client, start_run, wait_run
from secfl.flower._fab import check_fab
from secfl.flower._flags import expand, parse_flower
from secfl.flower._nodes import NodeWatch, load_node_keys, register
from secfl.flower._superlink_output import check_output, read_output_key, seal_output
from secfl.flower._tls import loopback_context
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

if TYPE_CHECKING:
    from secfl.fl._workload_identity import WorkloadIdentity
    from secfl.flower._exec import Refusal

__all__ = ["SuperLinkOptions", "main"]

log = logging.getLogger("secfl.flower")

#: Flower's own limit on a FAB (``flwr.common.constant.FAB_MAX_SIZE``).
FAB_MAX = 10 * 1024 * 1024
#: Tasks the SuperExec refused that go to the SPM's audit log one by one in a run; past
#: them one ``refusal-flood`` entry, and ``run-finished`` counts them all. (Each was an
#: entry, and the log is kept for ever and replayed at every start: an insider's runs on
#: the loopback Control API, a small FAB each, grew it without bound.)
MAX_AUDITED_REFUSALS = 8
#: How often the SuperLink asks the SPM whether the policy has a new version.
POLICY_SECONDS = 10.0


@dataclass
class SuperLinkOptions:
    fab: str
    fab_sha256: str
    nodes: str
    listen: str
    run_config: list[str] = field(default_factory=list)
    output: str | None = None
    output_key: str | None = None
    poll: float = 0.25
    start_timeout: float = 120.0
    #: The gate serves this instance's attested certificate and admits only the
    #: policy's attested sites (mutual TLS, :mod:`secfl.flower._attested`).
    mutual_tls: bool = False


def _private_file(value: str, what: str, env: dict[str, str]) -> Path:
    path = Path(expand(value, env))
    root = env.get("SECFL_FILES", "")
    if not root or Path(os.path.realpath(root)) not in Path(os.path.realpath(path)).parents:
        raise FlowerError(
            f"flower: {what} {value[:80]} is not a file secfl run injected: use $SECFL_FILES/..."
        )
    return path


def load_fab(value: str, sha256: str, env: dict[str, str]) -> bytes:
    """The FAB to submit; its SHA-256 must be the measured ``--fab-sha256``."""
    path = Path(expand(value, env))
    try:
        data = read_bounded(path, FAB_MAX)
    except TooLarge:
        raise FlowerError(
            f"flower: {path} is larger than Flower's {FAB_MAX}-byte FAB limit"
        ) from None
    except OSError as exc:
        raise FlowerError(f"flower: cannot read the FAB {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256.lower():
        raise FlowerError(
            f"fab: {path.name} has sha256 {digest[:16]}..., the measured --fab-sha256 is "
            f"{sha256[:16]}...: not the board-approved app"
        )
    check_fab(data)
    return data


def _wait_healthy(link: Child, base: str, context: ssl.SSLContext, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=context, timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if not link.alive():
                raise FlowerError(
                    f"flower: flower-superlink exited {link.proc.returncode} while starting"
                )
            try:
                if client.get(base + "/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise FlowerError(f"flower: flower-superlink did not answer in {timeout:.0f} s")


def main(opts: SuperLinkOptions, flower_argv: list[str]) -> int:
    scrub_environment()  # before any connection: no proxy, no TLS key log
    env = dict(os.environ)
    cmd = parse_flower("superlink", flower_argv, env)
    host = cmd.value("--host")
    host = "127.0.0.1" if host is None else host  # what Flower gets is what is checked
    check_loopback("flower-superlink (Fleet, Control and Runtime APIs)", host)
    check_health_address(cmd.value("--health-server-address"))
    port = cmd.port(8000)
    database = cmd.value("--database")
    if database is not None and database != ":flwr-in-memory:":
        _private_file(database, "--database", env)
    if cmd.value("--log-file") is not None:
        _private_file(cmd.value("--log-file") or "", "--log-file", env)
    fab = load_fab(opts.fab, opts.fab_sha256, env)
    nodes = load_node_keys(_private_file(opts.nodes, "--nodes", env), named=opts.mutual_tls)
    listen_host, _, listen_port = opts.listen.rpartition(":")
    if not listen_host or not listen_port.isdigit():
        raise FlowerError(f"flower: --listen {opts.listen} is not HOST:PORT")
    if any(c.endswith(".toml") for c in opts.run_config):
        raise FlowerError("flower: --run-config takes KEY=VALUE pairs (a file is not measured)")
    output_key: bytes | None = None
    if opts.output:
        if not opts.output_key:
            raise FlowerError("flower: --output needs --output-key (the model owner's key file)")
        output_key = read_output_key(_private_file(opts.output_key, "--output-key", env))
        check_output(Path(opts.output))

    paths = PrivatePaths.create(env)
    secret_path, secret = paths.secret()
    child_env = clean_env(env, paths)
    argv = [str(venv_program("flower-superlink")), *cmd.argv[1:],
            "--superexec-auth-secret-file", str(secret_path)]  # fmt: skip
    ca_file = cmd.value("--ssl-ca-certfile") or ""
    cert_file = cmd.value("--ssl-certfile") or ""
    context = loopback_context(ca_file, cert_file)  # the name checked is the service's
    base = f"https://{host_port(host, port)}"
    attested = _gate_tls(opts, env, cert_file, cmd.value("--ssl-keyfile") or "")
    audit = SpmAudit(env, attested.ident.token if isinstance(attested, AttestedTls) else None)
    link = Child.start("flower-superlink", argv, child_env, paths.work)
    gate_server = None
    executor = None
    try:
        _wait_healthy(link, base, context, opts.start_timeout)
        control = control_client(base, context)
        node_ids = register(control, nodes)
        audit.report(
            "nodes-registered",
            {"nodes": [
                {"node_id": str(n), "site": nodes[k] or "",
                 "key_sha256": hashlib.sha256(k).hexdigest()}
                for n, k in zip(node_ids, nodes, strict=True)
            ]},
        )  # fmt: skip
        print(f"secfl: registered {len(node_ids)} attested SuperNode keys", flush=True)

        from flwr.supercore.constant import TaskType

        from secfl.flower._exec import Executor, start_thread
        from secfl.flower._gate import FleetGate, serve

        watch = NodeWatch(control, list(nodes), audit)
        watch.check()  # nothing else registered before the gate opens
        if isinstance(attested, AttestedTls):
            gate = FleetGate(base, context, nodes, peers=attested.check)
            tls = attested
            gate_server, gate_thread = serve(
                gate, listen_host, int(listen_port), lambda: tls.server
            )
            attested.start()
        else:
            gate = FleetGate(base, context, nodes)
            gate_server, gate_thread = serve(gate, listen_host, int(listen_port), attested)
        _wait_listening(gate_server, gate_thread, link, opts.start_timeout)
        print(f"secfl: the Fleet API is served on {opts.listen} (nothing else)", flush=True)

        run_id = start_run(control, fab, opts.run_config)
        digest = hashlib.sha256(fab).hexdigest()
        audit.report(
            "run-started",
            {"run_id": str(run_id), "fab_sha256": digest, "run_config": list(opts.run_config)},
        )
        print(f"secfl: started run {run_id} of app sha256 {digest[:16]}...", flush=True)
        refusals = RefusalAudit(audit)
        # Started once the run is known, and for it alone: the executor ran the ServerApp
        # of any run of the approved FAB, so an insider's StartRun of that FAB on the
        # loopback Control API, with a run config of its own, ran beside the board's
        # (and every SuperNode trained for it: found by a hostile review).
        executor = Executor(
            address=host_port(host, port),
            secret=secret,
            allowed=frozenset({opts.fab_sha256.lower()}),
            task_type=TaskType.SERVER_APP,
            env=child_env,
            cwd=paths.work,
            token_dir=paths.wrapper,
            poll=opts.poll,
            ca_file=ca_file,
            on_refusal=refusals,
            runs=frozenset({run_id}),
        )
        start_thread(executor)

        current = PolicyWatch(attested.ident) if isinstance(attested, AttestedTls) else None

        def tick() -> None:
            watch.due()
            gate.report()
            if current is not None:
                current.due()

        status = wait_run(control, run_id, link, executor, tick)
        ok = status.startswith("finished:completed")
        detail: dict[str, Any] = {
            "run_id": str(run_id), "status": status, "foreign_nodes": watch.removed,
            "gate_refused": gate.refused, "refused_tasks": refusals.count,
        }  # fmt: skip
        unsealed = None
        if ok and opts.output and output_key is not None:
            try:
                detail["output_tag"] = seal_output(paths.work, Path(opts.output), output_key)
            except FlowerError as exc:
                detail["output_error"] = unsealed = str(exc)
        audit.report("run-finished", detail)
        print(f"secfl: run {run_id} {status}", flush=True)
        control.close()
        if unsealed is not None:
            raise FlowerError(unsealed)
        return 0 if ok else 1
    finally:
        if executor is not None:
            executor.stop()
        if gate_server is not None:
            gate_server.should_exit = True
        if isinstance(attested, AttestedTls):
            attested.stop()
        link.stop()
        audit.close()


class PolicyWatch:
    """Ends the run once the board approved a new version of the policy, as the native
    aggregator does between rounds: the SuperLink kept training under the version it
    attested to, the sites the new one dropped refused but its run config, its FAB and
    its output key those of the old one, and none of its events recorded (the SPM
    refuses a superseded session's). Asked every :data:`POLICY_SECONDS`; an SPM that
    does not answer is asked again (the revocation list's staleness shuts the gate)."""

    def __init__(self, ident: WorkloadIdentity) -> None:
        self.ident = ident
        self.asked = time.monotonic()

    def due(self) -> None:
        if time.monotonic() - self.asked < POLICY_SECONDS:
            return
        self.asked = time.monotonic()
        try:
            current = self.ident.spm().policy(self.ident.policy).get("digest")
        except SecflError as exc:
            log.warning("secfl: could not read the policy's current version (%s)", exc)
            return
        if current != self.ident.policy_digest:
            raise FlowerError(
                f"flower: the board approved a new version of '{self.ident.policy}': this run "
                "stops here; start the SuperLink and the SuperNodes again with `secfl run` "
                "to begin the new run"
            )


class RefusalAudit:
    """The SuperExec's refusals into the audit log: the first
    :data:`MAX_AUDITED_REFUSALS` one by one, then one ``refusal-flood``; all counted."""

    def __init__(self, audit: SpmAudit) -> None:
        self.audit = audit
        self.count = 0

    def __call__(self, refusal: Refusal) -> None:
        self.count += 1
        if self.count <= MAX_AUDITED_REFUSALS:
            self.audit.report(
                f"{refusal.kind}-refused",
                {"run_id": str(refusal.run_id), "fab_sha256": refusal.fab_hash},
            )
        elif self.count == MAX_AUDITED_REFUSALS + 1:
            self.audit.report("refusal-flood", {"audited": MAX_AUDITED_REFUSALS})
            print(f"secfl: more than {MAX_AUDITED_REFUSALS} tasks refused in this run (runs "
                  "started on the loopback Control API): the rest are counted in "
                  "fl.flower.run-finished, not written one by one", flush=True)  # fmt: skip


def _gate_tls(
    opts: SuperLinkOptions, env: dict[str, str], cert_file: str, key_file: str
) -> AttestedTls | ssl.SSLContext:
    """The gate's TLS: this instance's attested certificate and the sites' checked
    (``--mutual-tls``), or, for a policy made before it, the policy's SuperLink
    certificate, which SuperNodes trust whatever platform holds it."""
    if opts.mutual_tls:
        return AttestedTls.from_env(env)
    from secfl.flower._gate import server_context

    log.warning(
        "secfl: the gate serves the policy's SuperLink certificate to any client: SuperNodes "
        "trust it on a platform the board revoked too; make the policy again with `secfl "
        "flower policy` (mutual TLS with attested certificates)"
    )
    return server_context(cert_file, key_file)


def _wait_listening(server: Any, thread: threading.Thread, link: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or not link.alive() or time.monotonic() > deadline:
            raise FlowerError("flower: the Fleet gate did not start (is --listen free?)")
        time.sleep(0.05)
