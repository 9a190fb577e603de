"""One SPM and policy for all the launcher's tests (starting an SPM takes seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.launcher.world import World


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("run"))
    try:
        w.submit()
        yield w
    finally:
        w.spm.stop()
