"""An imported secret is released only under versions approved by the board its owner
sealed it for: a hostile review's attacks on that rule, against a real `secfl spm
serve` process (SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from secfl.spm import _sealing as sv
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import AGGREGATOR_MR, Board, SpmProcess, policy_document

pytestmark = [pytest.mark.timeout(240), pytest.mark.heavy(30)]


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory, sim: tuple[Path, bytes]) -> Iterator[SpmProcess]:
    proc = SpmProcess(tmp_path_factory.mktemp("owner") / "data", sim[0], None).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(spm: SpmProcess) -> Iterator[SpmClient]:
    with SpmClient(spm.url, pin=spm.pin) as c:
        yield c


def _submit(client: SpmClient, board: Board, doc: dict[str, Any], *who: str) -> dict[str, Any]:
    text = yaml.safe_dump(doc)
    return client.submit_policy(text, board.sign(text, *who))


def _next(
    board: Board, sim: tuple[Path, bytes], name: str, before: dict[str, Any], version: int
) -> dict[str, Any]:
    return yaml.safe_load(
        policy_document(name, board, sim[1], version=version, predecessor=before["digest"])
    )


def _with_secret(doc: dict[str, Any], sealed: str) -> dict[str, Any]:
    doc["secrets"].append({"name": "data", "kind": "imported", "sealed": sealed})
    doc["services"][0]["inject"]["env"]["DATA_KEY"] = "$$SECFL::data:hex$$"
    return doc


def test_a_withdrawn_secret_is_not_taken_up_again_by_a_board_its_owner_never_sealed_for(
    client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    """Alice, required on the board, sealed her key for that board. Version 2 (which
    she signs) withdraws the key and no longer requires her; version 3, signed by bob
    and carol alone, names the key again with the sealed value copied from version 1.
    Imported afresh, it would not open (the board that approved version 3 is not the
    one alice sealed it for); the SPM took up the row version 1 stored, and bob and
    carol's workload received alice's key."""
    name = "withdrawn"
    first = yaml.safe_load(policy_document(name, board, sim[1]))
    first["board"]["required"] = ["alice"]
    members = [m["public_key"] for m in first["board"]["members"]]
    binding = sv.board_binding(members, 2, [board.public["alice"].decode()])
    sealed = sv.seal_imported(b"alice-data-key", client.public_key(), name, "data", binding)
    v1 = _submit(client, board, _with_secret(first, sealed), "alice", "bob")
    v2 = _submit(client, board, _next(board, sim, name, v1, 2), "alice", "bob")  # withdrawn
    again = _with_secret(_next(board, sim, name, v2, 3), sealed)
    with pytest.raises(SpmRefused, match=f"not sealed to this SPM for policy '{name}' under"):
        _submit(client, board, again, "bob", "carol")
    assert client.policy(name)["version"] == 2
    platform = simulated.SimulatedPlatform(sim[0])
    got = enroll(client, platform, name, "aggregator", measurement=AGGREGATOR_MR)
    assert "data" not in got.secrets


def test_a_withdrawn_secret_its_owners_board_names_again_is_released(
    client: SpmClient, board: Board, sim: tuple[Path, bytes]
) -> None:
    """The same board withdraws the key and names it again: it opens (the row stored
    before is the same value)."""
    name = "returned"
    first = yaml.safe_load(policy_document(name, board, sim[1]))
    members = [m["public_key"] for m in first["board"]["members"]]
    sealed = sv.seal_imported(
        b"hospital-key", client.public_key(), name, "data", sv.board_binding(members, 2)
    )
    v1 = _submit(client, board, _with_secret(first, sealed), "alice", "bob")
    v2 = _submit(client, board, _next(board, sim, name, v1, 2), "alice", "bob")
    _submit(client, board, _with_secret(_next(board, sim, name, v2, 3), sealed), "bob", "carol")
    platform = simulated.SimulatedPlatform(sim[0])
    got = enroll(client, platform, name, "aggregator", measurement=AGGREGATOR_MR)
    assert got.render("data", "hex") == b"hospital-key".hex()
