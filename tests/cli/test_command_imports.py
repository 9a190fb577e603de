"""What a command loads: what it needs, not what another way of running it does.

The suite and a walkthrough start hundreds of `secfl` processes, most of whose time is
Python importing modules. Reading an SPM's audit log over HTTPS (`secfl audit show
--spm`) needs neither SQLAlchemy nor the SPM's store, which reading its database does;
checking its database (`secfl audit verify --data`) needs no HTTPS server. Each probe
runs the command in a fresh interpreter (this one has loaded everything).
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.imports import modules_loaded


def loaded_by(argv: list[str], modules: tuple[str, ...]) -> tuple[int, str, list[str]]:
    """Run `secfl ARGV` in a fresh interpreter: its exit code, its standard error, and
    which of ``modules`` it loaded."""
    code = f"from secfl.cli.main import main\nprint('exit', main({argv!r}))"
    loaded, done = modules_loaded(code, modules)
    exit_line = [line for line in done.stdout.splitlines() if line.startswith("exit ")][-1]
    return int(exit_line.removeprefix("exit ")), done.stderr, loaded


def test_reading_the_audit_log_over_https_loads_no_database() -> None:
    with socket.socket() as sock:  # a port nobody listens on: the command fails to connect
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["audit", "show", "--spm", f"https://127.0.0.1:{port}", "--spm-pin", "ab" * 32]
    code, error, loaded = loaded_by(argv, ("sqlalchemy", "secfl.spm._store"))
    assert code == 1 and "cannot reach" in error, error  # it got as far as asking the SPM
    assert loaded == []


def test_verifying_an_spms_database_loads_no_server(
    tmp_path: Path, sim: tuple[Path, bytes]
) -> None:
    """`secfl audit verify --data` checks the database as the SPM's start does, but
    serves nothing: not uvicorn, FastAPI or the SPM's service."""
    from secfl.spm._server import open_spm

    open_spm(tmp_path / "data", platform="simulated", sim_dir=sim[0]).close()
    argv = ["audit", "verify", "--data", str(tmp_path / "data")]
    code, error, loaded = loaded_by(argv, ("uvicorn", "fastapi", "secfl.spm._service"))
    assert code == 0, error
    assert loaded == []
