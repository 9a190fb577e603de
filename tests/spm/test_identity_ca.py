"""A new version cannot make another CA the identity CA. Found by a hostile review:
version 1 released an ordinary CA's private key to a site (and an x509 secret it issued,
named ``aggregator``); version 2 made that CA the identity CA, and the SPM accepted it.
Its key's holder could then answer, in TLS, to any service's name and to every
``s<serial>.<service>`` name collaborators pin. A real SPM process."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import enroll
from secfl.tee import _simulated as simulated
from tests.spm.harness import COLLABORATOR_MR, Board, SpmProcess, make_sim, policy_document


def _doc(board: Board, sim: bytes, version: int, predecessor: str, identity: str) -> str:
    doc = yaml.safe_load(policy_document("fed", board, sim, version=version,
                                         predecessor=predecessor))  # fmt: skip
    doc["secrets"].append({"name": "web-ca", "kind": "x509-ca", "common_name": "fed web CA"})
    if identity == "fl-ca":  # version 1: the site gets the web CA's key and a certificate
        doc["secrets"].append({"name": "web", "kind": "x509", "issuer": "web-ca",
                               "common_name": "web", "sans": ["aggregator"]})  # fmt: skip
        doc["services"][1]["secrets"] = ["web-ca", "web"]
    doc["identity_ca"] = identity
    return yaml.safe_dump(doc, sort_keys=False)


def test_a_new_version_keeps_its_identity_ca(tmp_path: Path) -> None:
    sim = make_sim(tmp_path / "sim")
    board = Board.create()
    proc = SpmProcess(tmp_path / "data", tmp_path / "sim", None).start()
    try:
        with SpmClient(proc.url, pin=proc.pin) as client:
            v1 = _doc(board, sim, 1, "", "fl-ca")
            client.submit_policy(v1, board.sign(v1, "alice", "bob"))
            site = enroll(client, simulated.SimulatedPlatform(tmp_path / "sim"), "fed",
                          "collaborator", measurement=COLLABORATOR_MR)  # fmt: skip
            assert "BEGIN" in site.secrets["web-ca"]["key"]  # the site holds that CA's key
            v2 = _doc(board, sim, 2, client.policy("fed")["digest"], "web-ca")
            with pytest.raises(SpmRefused) as refused:
                client.submit_policy(v2, board.sign(v2, "alice", "bob"))
            assert str(refused.value).startswith(
                "identity_ca: version 1 names 'fl-ca', this one 'web-ca': the identity CA "
                "cannot change"
            ), str(refused.value)
            assert client.policy("fed")["version"] == 1
    finally:
        proc.stop()
