"""Idle connections to the aggregator. Found by a hostile review: anyone who reaches its
port held 1100 TCP connections open without starting TLS; under a file limit of 1024
they took every descriptor, no collaborator could join, and the aggregator could not
create its checkpoint. Now its connections are capped below what its file limit
allows, and a connection that does not finish its handshake in time is closed.

Real processes: the aggregator under ``ulimit -n 1024``, the flood from another, a
collaborator joining from a third."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secfl.fl._transport import HANDSHAKE_TIMEOUT_MS

pytestmark = pytest.mark.timeout(150)

REPO = Path(__file__).resolve().parents[2]

#: The aggregator (in its own process): says its port, then on "probe" creates files
#: beside its checkpoints and says whether it could.
AGGREGATOR = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from secfl.tasks import get_task
from secfl.tasks._split import split
from tests.fl.fedkit import Federation, site
work = Path(sys.argv[1])
fed = Federation(get_task("digits"), split("digits", 2, seed=1, out=work / "shards"))
agg = fed.aggregator({"rounds": 1, "min_clients": 1}, services=[site(0)], directory=work / "ckpt")
(work / "authority.json").write_text(json.dumps(fed.authority))
(work / "port").write_text(str(agg.port))
while not (work / "stop").exists():
    if (work / "probe").exists():
        (work / "probe").unlink()
        try:
            kept = [open(work / "ckpt" / f"probe-{i}", "w") for i in range(32)]
            print("files: ok", flush=True)
            for f in kept:
                f.close()
        except OSError as exc:
            print("files:", exc, flush=True)
    time.sleep(0.05)
agg.server.stop(None)
"""

#: A collaborator (in its own process): one Join.
JOIN = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from secfl.fl import _messages as msg
from secfl.fl._transport import Client
from tests.fl.fedkit import AGGREGATOR, identity, site
work = Path(sys.argv[1])
authority = json.loads((work / "authority.json").read_text())
client = Client(f"127.0.0.1:{(work / 'port').read_text()}", identity(authority, site(0)),
                server_name=AGGREGATOR, timeout=10)
request = msg.encode({"kind": "join", "samples": 10})
try:
    print("join:", msg.decode(client.unary(msg.JOIN, request))[0]["kind"])
except Exception as exc:
    print("join failed:", type(exc).__name__)
"""

#: The flood (in its own process): idle TCP connections, held until killed.
FLOOD = r"""
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
held = []
for _ in range(1100):
    try:
        held.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5))
    except OSError:
        pass
print("holding", len(held), flush=True)
time.sleep(120)
"""


def _python(script: str, *args: str, limit: int | None = None) -> list[str]:
    argv = [sys.executable, "-c", script, *args]
    return ["sh", "-c", f'ulimit -n {limit} && exec "$@"', "sh", *argv] if limit else argv


def _join(work: Path) -> str:
    done = subprocess.run(_python(JOIN, str(work), str(REPO)), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    return done.stdout.strip() or done.stderr.strip()[-300:]


def test_idle_connections_neither_starve_the_aggregators_files_nor_lock_peers_out(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    server = subprocess.Popen(
        _python(AGGREGATOR, str(tmp_path), str(REPO), limit=1024),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    flood = None
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "port").exists():
            assert server.poll() is None and time.monotonic() < deadline, "no aggregator"
            time.sleep(0.1)
        assert _join(tmp_path) == "join: welcome"
        flood = subprocess.Popen(
            _python(FLOOD, (tmp_path / "port").read_text()), stdout=subprocess.PIPE, text=True
        )
        assert flood.stdout is not None
        assert flood.stdout.readline().startswith("holding ")
        started = time.monotonic()
        (tmp_path / "probe").touch()
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "files: ok"  # its own files: still room
        # the flood's connections never finish a handshake: closed once it is overdue,
        # while the flood still holds its end, and a collaborator joins again
        time.sleep(max(0.0, HANDSHAKE_TIMEOUT_MS / 1000 + 2 - (time.monotonic() - started)))
        assert flood.poll() is None
        assert _join(tmp_path) == "join: welcome"
    finally:
        if flood is not None:
            flood.kill()
            flood.wait(10)
        (tmp_path / "stop").touch()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
