"""A service of role ``any`` runs no secfl aggregator: the SPM refuses its rounds and
findings (f7a6876), so the aggregator, and the policy checks, refuse it at the start."""

from __future__ import annotations

from pathlib import Path

import pytest

from secfl.errors import FlError

from .refresh_kit import secure_aggregator


def test_an_aggregator_of_role_any_is_refused_at_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile review of f7a6876: the SPM took rounds and the clone audit's
    findings from role ``aggregator`` only, but ``secfl aggregator`` still started as a
    service of role ``any`` (and ``secfl policy validate`` passed such a federation):
    it trained a whole round, then stopped when the SPM refused to commit it."""
    with pytest.raises(FlError, match=r"^policy: service 'agg' is not an aggregator \(its "
                       r"role is 'any', not 'aggregator'\)$"):  # fmt: skip
        secure_aggregator(tmp_path, monkeypatch, role="any")
