"""What the local Flower federations share: the Flower venv's Python, free ports,
FABs built with ``flwr build``, the example's data dealt to sites, processes with
their logs, test TLS and node keys. No Flower is imported (it runs as processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secfl.errors import FlowerError
from secfl.flower._tls import tls_files

__all__ = [
    "ROOT",
    "Process",
    "build_fab",
    "flower_python",
    "free_port",
    "node_key_files",
    "site_arrays",
    "tls_files",
]

ROOT = Path(__file__).resolve().parents[3]


def flower_python() -> Path:
    """The Flower venv's Python: ``$SECFL_FLOWER_PYTHON``, else ``.venv-flwr`` of this
    checkout (``bash scripts/flwr-venv.sh`` makes it)."""
    given = os.environ.get("SECFL_FLOWER_PYTHON")
    path = Path(given) if given else ROOT / ".venv-flwr" / "bin" / "python"
    if not path.is_file():
        raise FlowerError(
            f"flower: no Flower venv at {path}: run `bash scripts/flwr-venv.sh` (or set "
            "SECFL_FLOWER_PYTHON to a Python with flwr==1.41.*, torch and secfl installed)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_fab(app: Path, python: Path, out: Path) -> bytes:
    """``flwr build`` of the app folder ``app`` with the Flower venv; the FAB's bytes,
    also written to ``out``. A path ending in ``.fab`` is taken as it is."""
    if app.is_file() and app.suffix == ".fab":
        data = app.read_bytes()
    else:
        if not (app / "pyproject.toml").is_file():
            raise FlowerError(f"flower: {app} is not a Flower app (no pyproject.toml)")
        flwr = python.parent / "flwr"
        with tempfile.TemporaryDirectory(prefix="secfl-fab-") as tmp:
            env = {**os.environ, "FLWR_HOME": tmp, "FLWR_TELEMETRY_ENABLED": "0",
                   "FLWR_DISABLE_UPDATE_CHECK": "1"}  # fmt: skip
            done = subprocess.run(
                [str(flwr), "build", "--app", str(app.resolve())], cwd=tmp, env=env,
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            fabs = sorted(Path(tmp).glob("*.fab"))
            if done.returncode != 0 or len(fabs) != 1:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise FlowerError(f"flower: `flwr build` of {app} failed: {tail[0][:200]}")
            data = fabs[0].read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return data


def site_arrays(sites: int, seed: int = 42) -> list[dict[str, Any]]:
    """scikit-learn's digits, shuffled once and dealt to ``sites`` sites (as the example
    app's simulation partitioning does): per site ``x`` (float32, /16) and ``y``."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    return [{"x": x[i::sites], "y": y[i::sites]} for i in range(sites)]


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 3) -> str:
        return " | ".join(self.text().strip().splitlines()[-lines:])


def node_key_files(folder: Path, name: str) -> dict[str, Path]:
    """A SuperNode key pair: the private key as PEM (``key``: what the SPM releases and
    secfl's wrapper converts) and in OpenSSH form (``ssh``: what plain Flower reads),
    the public key in OpenSSH form (``pub``: what `flwr supernode register` reads)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from secfl._internal import files
    from secfl._internal.x509util import private_pem

    key = ec.generate_private_key(ec.SECP256R1())
    folder.mkdir(parents=True, exist_ok=True)
    out = {kind: folder / f"{name}.{kind}" for kind in ("key", "ssh", "pub")}
    files.write_private(out["key"], private_pem(key), fsync=False)
    ssh = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    files.write_private(out["ssh"], ssh, fsync=False)
    out["pub"].write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return out
