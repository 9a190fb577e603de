"""Shared fixtures: the real vendor evidence in ``../shared/testvectors``.

Tests that need it skip, saying why, where the folder is absent (a user's clone);
CI always has it. Set ``SECFL_TESTVECTORS`` to point elsewhere.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

_DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "testvectors"


def testvectors_dir() -> Path | None:
    path = Path(os.environ.get("SECFL_TESTVECTORS", _DEFAULT)).resolve()
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The testvectors folder, or a skip that names where it was looked for."""
    path = testvectors_dir()
    if path is None:
        where = Path(os.environ.get("SECFL_TESTVECTORS", _DEFAULT))
        pytest.skip(f"real vendor evidence not found at {where} (set SECFL_TESTVECTORS)")
    return path


def utc(text: str) -> datetime:
    """An ISO date or datetime, as an aware UTC datetime."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
