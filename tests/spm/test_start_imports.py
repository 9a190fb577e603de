"""What an SPM's start loads: what serving needs, not what only some starts use.

A suite and a walkthrough start hundreds of SPMs, and most of a start is Python
importing modules: a module loaded for what the SPM was not started with (the PCCS
fetching, without ``--pccs``; PostgreSQL's dialect, on SQLite) is paid for at every
start. The probe opens an SPM on SQLite and builds its app in a fresh interpreter
(this one has loaded everything), as `secfl spm serve` does before it listens.
"""

from __future__ import annotations

from pathlib import Path

from tests.imports import modules_loaded

#: Modules an SPM on SQLite without ``--pccs`` has no use for: the PCCS fetching (httpx,
#: :mod:`secfl.spm._collateral`), and SQLAlchemy's PostgreSQL dialect.
NOT_LOADED = (
    "httpx",
    "secfl.spm._collateral",
    "secfl._internal.httpcache",
    "sqlalchemy.dialects.postgresql",
)


def loaded_at_start(tmp_path: Path, sim_dir: Path) -> list[str]:
    """Which of :data:`NOT_LOADED` an SPM's start loads."""
    code = (
        "from secfl.spm._app import create_app\n"
        "from secfl.spm._server import open_spm\n"
        f"spm = open_spm({str(tmp_path / 'data')!r}, platform='simulated',"
        f" sim_dir={str(sim_dir)!r})\n"
        "create_app(spm)\n"
        "spm.close()\n"
    )
    return modules_loaded(code, NOT_LOADED)[0]


def test_an_spm_on_sqlite_started_without_pccs_loads_neither(
    tmp_path: Path, sim: tuple[Path, bytes]
) -> None:
    assert loaded_at_start(tmp_path, sim[0]) == []
