"""A Flower run ends once the board approves a new version of its policy. Found by a
hostile review: the native aggregator stops between rounds then (a new version is a new
run), but the SuperLink never asked: it went on training under the version it attested
to (its run config, FAB and output key; the sites the new one dropped refused by the
revocation list only), and the SPM refused every event it wrote from then on (its
session superseded), run-finished and the output's tag included. It now asks every
10 s and stops in one line.

Real processes: an SPM and the SuperLink under `secfl run` (the simulated TEE), the
example app (``examples/flower``)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import yaml

from secfl.errors import FlowerError
from secfl.flower._federation import LocalFlowerFederation
from secfl.flower._local import flower_python
from secfl.policy._canonical import digest
from secfl.policy._document import load_policy
from secfl.policy._signatures import sign_policy
from secfl.spm.client import SpmClient

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFlowerFederation]:
    try:
        flower_python()
    except FlowerError as exc:
        pytest.skip(str(exc))
    fed = LocalFlowerFederation(tmp_path_factory.mktemp("flower"), sites=2, rounds=1)
    try:
        yield fed
    finally:
        fed.stop()


def test_the_superlink_stops_at_a_new_policy_version(fed: LocalFlowerFederation) -> None:
    fed.start_spm()
    fed.prepare()
    fed.submit_policy()
    link = fed.start_superlink()
    fed.wait_gate()

    text = (fed.work / f"{fed.policy_name}.policy.yaml").read_text()
    doc = yaml.safe_load(text)
    doc.update(version=2, predecessor=digest(load_policy(text)))
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    policy = load_policy(text)
    with SpmClient(fed.spm_url, pin=fed.spm_pin) as client:
        client.submit_policy(
            text, [sign_policy(policy, fed.board[n][0], n) for n in ("alice", "bob")]
        )

    try:
        code = link.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the SuperLink goes on under version 1: {link.tail()}")
    out = link.text()
    assert code != 0
    assert "the board approved a new version of 'flower'" in out, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
