"""A process on a SuperNode's Runtime API port runs nothing in the site, and gets nothing.

The SuperNode's Runtime API was plain HTTP on a loopback port the measured command line
fixes. A process that binds that port before the SuperNode starts (a host where
loopback is not inside the TEE, or any process beside the wrapper) answered secfl's
SuperExec in Flower's place: a task naming the approved FAB hash passed the SuperExec's
check (the SuperExec secret proves the SuperExec to Flower, not Flower to it), and the
``flwr-clientapp`` started for it installed and ran whatever FAB the impostor handed
out, with the site's files and data (here it copies the site's node key out); once the
app process installed only an approved FAB, the impostor still fed the approved
ClientApp a train message of its own (its model, its run config, a node config naming
the site's data) and got back the model trained on the site's data. The wrapper now
serves the Runtime API over TLS with a key it makes in the TEE's RAM, and the SuperExec
and the app processes check it: no task is taken from another process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from secfl.flower._local import build_fab, free_port, node_key_files
from secfl.flower._tls import tls_files

APP = Path(__file__).resolve().parents[2] / "examples" / "flower"
IMPOSTOR = Path(__file__).resolve().parent / "runtime_impostor.py"


@pytest.fixture
def flower_py(request: pytest.FixtureRequest) -> Path:
    """``$SECFL_FLOWER_PYTHON`` when set (a Flower venv importing this checkout's secfl),
    else the suite's Flower venv."""
    given = os.environ.get("SECFL_FLOWER_PYTHON")
    return Path(given) if given else Path(request.getfixturevalue("flower_python"))


def _apps(root: Path, marker: Path) -> tuple[Path, Path]:
    """The example app, and the host's: its ClientApp module, when imported, copies the
    site's node key where the host reads it."""
    good = root / "good" / "flower"
    bad = root / "bad" / "flower"
    for copy in (good, bad):
        shutil.copytree(APP, copy, ignore=shutil.ignore_patterns("*.fab", "__pycache__"))
    client = bad / "flowerapp" / "client_app.py"
    payload = (
        "import os as _os, pathlib as _p\n"
        f"_p.Path({str(marker)!r}).write_bytes("
        "(_p.Path(_os.environ['SECFL_FILES']) / 'flower' / 'node.key').read_bytes())\n"
    )
    future = "from __future__ import annotations\n"
    client.write_text(client.read_text().replace(future, future + payload))
    return good, bad


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


@pytest.mark.timeout(300)
def test_an_impostor_on_the_runtime_port_runs_nothing(flower_py: Path, tmp_path: Path) -> None:
    marker = tmp_path / "stolen-node-key"
    good, bad = _apps(tmp_path / "apps", marker)
    good_sha = hashlib.sha256(build_fab(good, flower_py, tmp_path / "good.fab")).hexdigest()
    bad_fab = tmp_path / "bad.fab"
    bad_sha = hashlib.sha256(build_fab(bad, flower_py, bad_fab)).hexdigest()
    assert good_sha != bad_sha

    # What `secfl run` would have injected for this site (a policy of the older form,
    # --root-certificates: no relay, and no SuperLink needed: Flower never gets that far).
    private = tmp_path / "secfl-files"
    (private / "flower").mkdir(parents=True)
    ca = tls_files(tmp_path / "tls", ["127.0.0.1"])["ca"]
    shutil.copy(ca, private / "flower" / "ca.pem")
    shutil.copy(node_key_files(tmp_path / "keys", "node")["key"], private / "flower" / "node.key")
    (private / "volumes" / "data").mkdir(parents=True)
    env = {**os.environ, "SECFL_FILES": str(private), "SECFL_VOLUMES": str(private / "volumes")}
    port = free_port()

    impostor_log = tmp_path / "impostor.log"
    node_log = tmp_path / "node.log"
    with open(impostor_log, "wb") as out:
        impostor = subprocess.Popen([str(flower_py), str(IMPOSTOR), str(port), str(bad_fab),
                                     good_sha, "--stall"], stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
    node = None
    try:
        assert _wait(lambda: "listening" in impostor_log.read_text(), 60), impostor_log.read_text()
        with open(node_log, "wb") as out:
            node = subprocess.Popen([
                str(flower_py), "-m", "secfl.flower", "supernode", "--fab-sha256", good_sha,
                "--", "flower-supernode", "--superlink", "127.0.0.1:9",
                "--root-certificates", "$SECFL_FILES/flower/ca.pem",
                "--auth-supernode-private-key", "$SECFL_FILES/flower/node.key",
                "--node-config", 'data-path="$SECFL_VOLUMES/data"', "--isolation", "process",
                "--host", "127.0.0.1", "--port", str(port),
            ], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)  # fmt: skip
        # (the impostor keeps flower-supernode stalled: the wrapper runs on)
        assert _wait(lambda: "connection" in impostor_log.read_text(), 60), node_log.read_text()
        _wait(marker.exists, 40)  # the SuperExec keeps asking it for tasks
        asked = impostor_log.read_text()
        assert not marker.exists(), "the host's ClientApp ran in the site"
        # (the Runtime API is TLS with the wrapper's key: no task is taken from the
        # impostor; were one, the app process would refuse its FAB: "handed this task")
        assert "/acquire-task" not in asked and "served fab" not in asked, asked
        assert not (private / "flower-home" / "apps").exists() or not any(
            bad_sha[:8] in p.name for p in (private / "flower-home" / "apps").glob("*")
        ), "the host's app was installed"
    finally:
        for proc in (node, impostor):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _site(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """What `secfl run` would have injected for a site (a policy of the older form,
    --root-certificates: no relay, and no SuperLink needed), its data folder holding
    the example app's ``train.npz``."""
    import numpy as np

    private = tmp_path / "secfl-files"
    (private / "flower").mkdir(parents=True)
    ca = tls_files(tmp_path / "tls", ["127.0.0.1"])["ca"]
    shutil.copy(ca, private / "flower" / "ca.pem")
    shutil.copy(node_key_files(tmp_path / "keys", "node")["key"], private / "flower" / "node.key")
    data = private / "volumes" / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(data / "train.npz", x=rng.random((40, 64), dtype=np.float32),
             y=rng.integers(0, 10, 40).astype(np.int64))  # fmt: skip
    return data, {**os.environ, "SECFL_FILES": str(private),
                  "SECFL_VOLUMES": str(private / "volumes")}  # fmt: skip


def _supernode(flower_py: Path, sha: str, port: int) -> list[str]:
    return [
        str(flower_py), "-m", "secfl.flower", "supernode", "--fab-sha256", sha,
        "--", "flower-supernode", "--superlink", "127.0.0.1:9",
        "--root-certificates", "$SECFL_FILES/flower/ca.pem",
        "--auth-supernode-private-key", "$SECFL_FILES/flower/node.key",
        "--node-config", 'data-path="$SECFL_VOLUMES/data"', "--isolation", "process",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "own-tls"])
def test_an_impostor_on_the_runtime_port_gets_no_work_from_the_approved_app(
    flower_py: Path, tmp_path: Path, tls: bool
) -> None:
    """The approved ClientApp, fed by a process on the SuperNode's Runtime API port, ran
    the impostor's train message (its model, its run config, its node config pointing
    at the site's data) and pushed the model it trained on the site's data back to that
    process. The Runtime API is now TLS with a key only the wrapper holds: the
    SuperExec takes no task from another process, plain or with a certificate of its
    own, and no app process starts."""
    good = tmp_path / "app" / "flower"
    shutil.copytree(APP, good, ignore=shutil.ignore_patterns("*.fab", "__pycache__"))
    fab = tmp_path / "good.fab"
    sha = hashlib.sha256(build_fab(good, flower_py, fab)).hexdigest()
    data, env = _site(tmp_path)
    port = free_port()
    impostor_log = tmp_path / "impostor.log"
    node_log = tmp_path / "node.log"
    argv = [str(flower_py), str(IMPOSTOR), str(port), str(fab), sha, str(data)]
    with open(impostor_log, "wb") as out:
        impostor = subprocess.Popen([*argv, *(["--tls"] if tls else [])], stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
    node = None
    try:
        assert _wait(lambda: "listening" in impostor_log.read_text(), 60), impostor_log.read_text()
        with open(node_log, "wb") as out:
            node = subprocess.Popen(_supernode(flower_py, sha, port), stdout=out,
                                    stderr=subprocess.STDOUT, env=env, cwd=tmp_path)  # fmt: skip
        reply = "reply: train_loss"
        assert _wait(lambda: "connection" in impostor_log.read_text(), 60), node_log.read_text()
        _wait(lambda: reply in impostor_log.read_text(), 40)  # the SuperExec keeps asking
        asked = impostor_log.read_text()
        assert node.poll() is None, node_log.read_text()[-3000:]  # (stalled, as the host can)
        assert reply not in asked, "the approved ClientApp trained for the impostor: " + asked
        assert "served fab" not in asked, asked
        assert "/acquire-task" not in asked, asked  # no task taken from it at all
    finally:
        for proc in (node, impostor):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
