"""A SuperNode under secfl runs only the board-approved app, even for a SuperLink that
would run anything.

The SuperLink here is plain Flower (TLS, node authentication, subprocess isolation):
it stands for a SuperLink whose TEE was compromised, or reached on loopback, which is
the only way another app's messages could reach the SuperNodes (secfl's own SuperLink
refuses to run another ServerApp: tests/flower/test_federation.py). ``flwr run`` of
the Flower CLI submits a modified app. The SuperNode is secfl's
wrapper, given the files ``secfl run`` would inject (a CA, a node key, a data folder)
in a folder standing for ``$SECFL_FILES``; its command line pins the approved FAB.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from secfl.flower._local import build_fab, free_port, node_key_files, site_arrays
from secfl.flower._plain import PlainFlower

APP = Path(__file__).resolve().parents[2] / "examples" / "flower"
CONFIG = ["num-server-rounds=1", "min-nodes=1", "fraction-evaluate=0.0"]


def _apps(root: Path) -> Path:
    """Copies of the example app and of a modified one (its ClientApp scales updates)."""
    good = root / "good" / "flower"
    bad = root / "bad" / "flower"
    for copy in (good, bad):
        shutil.copytree(APP, copy, ignore=shutil.ignore_patterns("*.fab", "__pycache__"))
    client = bad / "flowerapp" / "client_app.py"
    client.write_text(client.read_text().replace("ArrayRecord(model.state_dict())",
                                                 "ArrayRecord({k: v * 10 for k, v in "
                                                 "model.state_dict().items()})"))  # fmt: skip
    return good, bad


@pytest.mark.timeout(600)
def test_a_supernode_runs_only_the_approved_fab(flower_python: Path, tmp_path: Path) -> None:
    good, bad = _apps(tmp_path / "apps")
    good_sha = hashlib.sha256(build_fab(good, flower_python, tmp_path / "good.fab")).hexdigest()
    bad_sha = hashlib.sha256(build_fab(bad, flower_python, tmp_path / "bad.fab")).hexdigest()
    assert good_sha != bad_sha
    # The approved app runs on this very wrapper in test_federation.py (its SuperNodes).

    plain = PlainFlower(tmp_path / "plain", python=flower_python)
    try:
        plain.start_superlink()
        plain.wait_superlink()
        keys = node_key_files(tmp_path / "keys", "node")
        plain.register(keys["pub"])

        # What `secfl run` would have injected and opened for this site.
        private = tmp_path / "secfl-files"
        (private / "flower").mkdir(parents=True)
        shutil.copy(plain.tls["ca"], private / "flower" / "ca.pem")
        shutil.copy(keys["key"], private / "flower" / "node.key")
        (private / "volumes" / "data").mkdir(parents=True)
        arrays = site_arrays(1)[0]
        np.savez(private / "volumes" / "data" / "train.npz", x=arrays["x"], y=arrays["y"])
        env = {**os.environ, "SECFL_FILES": str(private),
               "SECFL_VOLUMES": str(private / "volumes")}  # fmt: skip
        node = plain.start("secfl-supernode", [
            str(flower_python), "-m", "secfl.flower", "supernode", "--fab-sha256", good_sha,
            "--", "flower-supernode", "--superlink", f"127.0.0.1:{plain.port}",
            "--root-certificates", "$SECFL_FILES/flower/ca.pem",
            "--auth-supernode-private-key", "$SECFL_FILES/flower/node.key",
            "--node-config", 'data-path="$SECFL_VOLUMES/data"', "--isolation", "process",
            "--host", "127.0.0.1", "--port", str(free_port()),
        ], env)  # fmt: skip

        refused = plain.run(bad, CONFIG)
        plain.wait_run(refused)
        assert "aggregate_train: Received 0 results and 1 failures" in plain.log(refused)
        assert f"fab: run {refused} brings app sha256 {bad_sha[:16]}" in node.text()
        installed = private / "flower-home" / "apps"
        assert not any(bad_sha[:8] in p.name for p in installed.glob("*")), "the app ran"

        assert node.proc.poll() is None  # it refused that run and serves on
    finally:
        plain.stop()
