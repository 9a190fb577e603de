"""``secfl spm serve``: assemble the SPM from its data folder and serve it over HTTPS.

The HTTPS server is uvicorn, but every connection is owned by
:mod:`secfl._internal.httpguard`: it does the TLS handshake itself and gives each
connection a deadline for its handshake and request headers (``header_timeout``,
10 s), for its body (``body_timeout``, 30 s) and for its answer (60 s), and caps
the open connections below the process's file limit (raised to the hard limit at
start), evicting the oldest stalled connection when a new one arrives at the cap.
uvicorn itself cannot do this: it has no header or body timeout, and
``limit_concurrency`` counts a connection only once its headers are complete.
So half-sent requests and silent sockets cannot make the SPM unreachable.

An SPM whose database already holds its state never makes itself a new master key:
that key could not open anything, and a restored ``master.key`` would then find a
database re-keyed under the wrong one (:func:`open_spm`).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secfl._internal.files import atomic_write, memory_file
from secfl._internal.httpguard import Guard, Limits, file_budget
from secfl._internal.x509util import private_pem
from secfl.errors import IntegrityError, SpmError
from secfl.spm._amd_crl import AmdCrls, describe
from secfl.spm._identity import (
    IDENTITY_AAD,
    IDENTITY_META,
    SpmIdentity,
    code_measurement,
    new_key,
    self_signed,
)
from secfl.spm._masterkey import KEY_FILE, MasterKey, load_or_create_master_key
from secfl.spm._service import Spm
from secfl.spm._status_index import StatusIndex
from secfl.spm._store import Store
from secfl.tee._platforms import platform_by_name

__all__ = ["GRACEFUL_SHUTDOWN", "open_spm", "open_store", "serve"]

#: Where in the data folder the SPM caches Intel collateral (signed by Intel: untrusted).
COLLATERAL_DIR = "collateral-cache"

#: Seconds a stopping SPM waits for requests under way (uvicorn's graceful timeout);
#: an idle connection is not waited for
#: (:meth:`~secfl._internal.httpparser.GuardedHttp.shutdown`).
GRACEFUL_SHUTDOWN = 5


def open_spm(
    data_dir: Path | str,
    *,
    db_url: str | None = None,
    platform: str = "auto",
    sim_dir: Path | str | None = None,
    names: Sequence[str] = (),
    pccs_url: str | None = None,
    pccs_timeout: float | None = None,
    new_anchor: bool = False,
    amd_crls: AmdCrls | None = None,
) -> Spm:
    """The SPM of ``data_dir``: master key, store (SQLite there unless ``db_url``),
    its sealed TLS identity (created on first start) and its platform; with
    ``pccs_url``, the PCCS (or Intel PCS) whose collateral appraises Intel TCBs, which
    has ``pccs_timeout`` seconds for each fetch (default
    :data:`~secfl.spm._collateral.FETCH_TIMEOUT`). ``amd_crls``: AMD's CRLs
    (``--amd-crl DIR``) or the opt-out (``--no-amd-crl``); None, neither: SEV-SNP
    evidence is refused (:mod:`secfl.spm._amd_crl`). ``new_anchor``: see
    :func:`~secfl.spm._state.verify_state` (the start is then logged with
    ``new_anchor``, where the board sees it)."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not os.path.lexists(data / KEY_FILE):  # never a new key for an existing SPM
        _refuse_without_master_key(data, db_url)
    master = load_or_create_master_key(data)
    status = StatusIndex()
    store = open_store(data, master, db_url, status, new_anchor=new_anchor)
    identity = _identity(store, master, list(names))
    tee = platform_by_name(platform, sim_dir=sim_dir)
    measurement = code_measurement() if tee.name == "simulated" else None
    collateral = None
    if pccs_url is not None:
        # here, not at the top: an SPM without --pccs never loads the fetching (httpx),
        # a fifth of its start (a suite starts hundreds of SPMs)
        from secfl.spm._collateral import FETCH_TIMEOUT, CollateralSource

        timeout = FETCH_TIMEOUT if pccs_timeout is None else pccs_timeout
        collateral = CollateralSource(pccs_url, data / COLLATERAL_DIR, timeout=timeout)
    spm = Spm(
        store, master, tee, identity,
        measurement=measurement, status_index=status, collateral=collateral,
        amd_crls=amd_crls,
    )  # fmt: skip
    started: dict[str, object] = {
        "tls_spki_sha256": identity.spki_sha256,
        "platform": tee.name,
        "measurement": measurement,
    }
    if pccs_url is not None:
        started["pccs"] = pccs_url
    started["amd_crl"] = describe(amd_crls)
    made = store.integrity is not None and store.integrity.anchor_made
    if made:
        started["new_anchor"] = True
    with store.transaction() as tx:
        if made:  # an event of its own: `secfl audit show --event spm.new-anchor`
            tx.audit.append("spm.new-anchor", None, {"tls_spki_sha256": identity.spki_sha256})
        tx.audit.append("spm.started", None, started)
    return spm


def open_store(
    data: Path,
    master: MasterKey,
    db_url: str | None = None,
    status: StatusIndex | None = None,
    *,
    new_anchor: bool = False,
) -> Store:
    """The SPM's store, treated as untrusted (:mod:`secfl.spm._integrity`): rows MAC'd
    under a key derived from the master key, the audit head anchored in ``data``, and
    the whole database verified (log, anchor, every row) before it is used; on the way,
    ``status`` (if given) takes in the verified log."""
    from secfl.spm._integrity import ANCHOR_FILE, Anchor, Integrity
    from secfl.spm._state import log_unlogged_secrets, unreadable, verify_state

    integrity = Integrity(
        master.derive("store-rows"),
        anchor=Anchor(data / ANCHOR_FILE, master.derive("store-anchor")),
    )
    audit_key = master.derive("audit-head")
    store = Store(
        db_url or f"sqlite:///{data / 'spm.db'}", audit_key=audit_key, integrity=integrity
    )
    try:
        store.create_all()
        verify_state(store, audit_key, status, new_anchor=new_anchor)
        log_unlogged_secrets(store)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        store.close()  # a value no SPM wrote (text for a number, say): one line, no traceback
        raise unreadable(exc) from None
    except BaseException:
        store.close()
        raise
    return store


def _refuse_without_master_key(data: Path, db_url: str | None) -> None:
    """:class:`SpmError` if the database (or the data folder's audit anchor) already
    holds an SPM's state: a new master key could open none of it, so none is made."""
    from secfl.spm._integrity import ANCHOR_FILE

    sqlite_file = None if db_url else data / "spm.db"
    held = (data / ANCHOR_FILE).exists()
    shown = str(sqlite_file)
    if not held and (sqlite_file is None or sqlite_file.exists()):
        store = Store(db_url or f"sqlite:///{sqlite_file}")
        shown = shown if sqlite_file is not None else store.url  # no password
        try:
            store.create_all()
            with store.read() as tx:
                held = tx.meta.get(IDENTITY_META) is not None or tx.audit.head()[0] > 0
        finally:
            store.close()
    if held:
        raise SpmError(
            f"secrets: the master key {data / KEY_FILE} is missing but this SPM's state is "
            f"in {shown}, which no new key can open; restore master.key from its backup "
            "(docs/operations.md: The SPM's master key and backups)"
        )


def _identity(store: Store, master: MasterKey, names: list[str]) -> SpmIdentity:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with store.transaction() as tx:
        sealed = tx.meta.get(IDENTITY_META)
        if sealed is None and tx.audit.head()[0] > 0:
            raise IntegrityError(
                "integrity: the SPM's sealed TLS identity is missing from a database that "
                "already has an audit log (deleted outside the SPM); restore the database "
                "from a backup: a new identity would break every party's pin"
            )
        if sealed is None:
            key = new_key()
            pem = private_pem(key)
            tx.meta.put(IDENTITY_META, master.seal(pem, IDENTITY_AAD))
        else:
            loaded = serialization.load_pem_private_key(master.open(sealed, IDENTITY_AAD), None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise SpmError("spm: the sealed identity key is not an EC key")
            key = loaded
    return SpmIdentity(key=key, cert=self_signed(key, names))


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """TCP sockets listening on ``host:port`` (every address a name has, as asyncio
    binds them; port 0: any free one), for :func:`serve`. An address that cannot be
    had (in use, not this machine's) is an :class:`SpmError` in one line, before the
    SPM opens anything."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise SpmError(f"listen: cannot resolve '{host}': {exc}") from None
    sockets: list[socket.socket] = []
    for family, kind, proto, _, address in dict.fromkeys(found):
        sock = socket.socket(family, kind, proto)
        if sockets and port == 0:  # every address on the one free port the first got
            address = (address[0], sockets[0].getsockname()[1], *address[2:])
        sockets.append(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio: "::" takes no IPv4 connections
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)  # at once: another process bound to it fails here, not later
        except OSError as exc:
            for made in sockets:
                made.close()
            why = exc.strerror or type(exc).__name__
            raise SpmError(
                f"listen: cannot listen on {host}:{port}: {why.lower()}; stop the process "
                "that holds it or give another --listen"
            ) from None
    return sockets


def serve(
    spm: Spm,
    host: str,
    port: int,
    *,
    ready_file: Path | str | None = None,
    log_level: str = "warning",
    limits: Limits | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve ``spm`` over HTTPS until interrupted. With ``ready_file``, write
    ``{"url", "tls_spki_sha256", "measurement"}`` there once listening. ``limits``:
    the connection timeouts and cap (:mod:`secfl._internal.httpguard`), fitted to the
    process's file limit."""
    import uvicorn

    from secfl.spm._app import create_app

    limits = file_budget(limits or Limits())
    guard = Guard(limits, _tls_context(spm))
    config = uvicorn.Config(
        create_app(spm),
        host=host,
        port=port,
        http=guard.protocol_class(),  # TLS, timeouts and the cap: secfl._internal.httpguard
        ws="none",  # no WebSocket: an upgrade is refused (secfl._internal.httpguard)
        loop="asyncio",  # see secfl._internal.httpguard: uvloop reads before start_tls can run
        backlog=limits.backlog,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=max(1, round(limits.keep_alive)),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        proxy_headers=False,
        server_header=False,
    )

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if ready_file is None or not self.servers:
                return
            bound = self.servers[0].sockets[0].getsockname()
            url_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            doc = {
                "url": f"https://{url_host}:{bound[1]}",
                "tls_spki_sha256": spm.identity.spki_sha256,
                "measurement": spm.measurement,
            }
            atomic_write(ready_file, json.dumps(doc).encode(), fsync=False)

        async def shutdown(self, sockets: Any = None) -> None:
            await super().shutdown(sockets=sockets)
            # here, not after run(): uvicorn raises the SIGTERM it caught again once
            # it has shut down, and the process ends there
            spm.close()

    _Server(config).run(sockets=sockets)


def _tls_context(spm: Spm) -> ssl.SSLContext:
    """The server's TLS context (TLS 1.2+, HTTP/1.1) with the SPM's sealed identity.

    The ssl module loads a key only from a file: it is given an anonymous memory file
    (:func:`secfl._internal.files.memory_file`), which no SIGKILL leaves behind (a file
    in a folder in RAM, even one removed at once, outlived a kill in between)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    with (
        memory_file(spm.identity.cert_pem, "spm-cert.pem") as cert_file,
        memory_file(spm.identity.key_pem, "spm-key.pem") as key_file,
    ):
        context.load_cert_chain(cert_file, key_file)
    return context
