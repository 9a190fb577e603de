"""``secfl spm serve``: assemble the SPM from its data folder and serve it over HTTPS."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from secfl._internal.x509util import private_pem
from secfl.errors import SpmError
from secfl.spm.identity import (
    IDENTITY_AAD,
    IDENTITY_META,
    Identity,
    code_measurement,
    new_key,
    self_signed,
)
from secfl.spm.masterkey import MasterKey, load_or_create_master_key
from secfl.spm.service import Spm
from secfl.spm.store import Store
from secfl.tee.platforms import platform_by_name


def open_spm(
    data_dir: Path | str,
    *,
    db_url: str | None = None,
    platform: str = "auto",
    sim_dir: Path | str | None = None,
    names: Sequence[str] = (),
) -> Spm:
    """The SPM of ``data_dir``: master key, store (SQLite there unless ``db_url``),
    its sealed TLS identity (created on first start) and its platform."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    master = load_or_create_master_key(data)
    store = Store(db_url or f"sqlite:///{data / 'spm.db'}", audit_key=master.derive("audit-head"))
    store.create_all()
    identity = _identity(store, master, list(names))
    tee = platform_by_name(platform, sim_dir=sim_dir)
    measurement = code_measurement() if tee.name == "simulated" else None
    spm = Spm(store, master, tee, identity, measurement=measurement)
    with store.transaction() as tx:
        tx.append_audit(
            "spm.started",
            None,
            {
                "tls_spki_sha256": identity.spki_sha256,
                "platform": tee.name,
                "measurement": measurement,
            },
        )
    return spm


def _identity(store: Store, master: MasterKey, names: list[str]) -> Identity:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with store.transaction() as tx:
        sealed = tx.get_meta(IDENTITY_META)
        if sealed is None:
            key = new_key()
            pem = private_pem(key)
            tx.set_meta(IDENTITY_META, master.seal(pem, IDENTITY_AAD))
        else:
            loaded = serialization.load_pem_private_key(master.open(sealed, IDENTITY_AAD), None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise SpmError("spm: the sealed identity key is not an EC key")
            key = loaded
    return Identity(key=key, cert=self_signed(key, names))


def serve(
    spm: Spm,
    host: str,
    port: int,
    *,
    ready_file: Path | str | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``spm`` over HTTPS until interrupted. With ``ready_file``, write
    ``{"url", "tls_spki_sha256", "measurement"}`` there once listening."""
    import uvicorn

    from secfl.spm.app import create_app

    secret_dir = Path(tempfile.mkdtemp(prefix="secfl-spm-tls-", dir=_private_tmp()))
    cert_file, key_file = secret_dir / "cert.pem", secret_dir / "key.pem"
    try:
        cert_file.write_bytes(spm.identity.cert_pem)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(spm.identity.key_pem)
        config = uvicorn.Config(
            create_app(spm),
            host=host,
            port=port,
            ssl_certfile=str(cert_file),
            ssl_keyfile=str(key_file),
            log_level=log_level,
            access_log=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
            proxy_headers=False,
            server_header=False,
        )
        config.load()  # reads the key into the SSL context; the files can go now
    finally:
        for f in (key_file, cert_file):
            with suppress(FileNotFoundError):
                f.unlink()
        with suppress(OSError):
            secret_dir.rmdir()

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
            tmp = Path(f"{ready_file}.tmp")
            tmp.write_text(json.dumps(doc))
            tmp.replace(ready_file)

    _Server(config).run()


def _private_tmp() -> str | None:
    """A RAM-backed folder for the moment the TLS key must be a file (uvicorn's API)."""
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a 0700 folder inside it
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
