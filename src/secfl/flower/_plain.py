"""Plain Flower on loopback, without secfl: the benchmark's baseline, and in tests a
SuperLink secfl does not control (standing for a compromised one)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from secfl.errors import FlowerError
from secfl.flower._local import Process, flower_python, free_port, tls_files

__all__ = ["PlainFlower"]


@dataclass
class PlainFlower:
    """Plain Flower on loopback, no secfl: a TLS SuperLink (subprocess isolation, node
    authentication optional), SuperNodes, and ``flwr run`` / ``flwr ls`` of the Flower
    CLI. The baseline of the benchmark, and a SuperLink secfl does not control in tests."""

    work: Path
    python: Path = field(default_factory=flower_python)
    node_auth: bool = True
    processes: dict[str, Process] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work = Path(self.work).resolve()
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        self.home = self.work / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.tls = tls_files(self.work / "tls", ["127.0.0.1", "localhost"])
        self.port = free_port()
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.tls["ca"]}"\n'
        )

    def env(self, home: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
        env.update(
            {
                "FLWR_HOME": str(home or self.home),
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "PYTHONUNBUFFERED": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                # As often as secfl's SuperExec looks for tasks (Flower's default: 1 s).
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25",
                "PATH": f"{self.python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        return env  # fmt: skip

    def start_superlink(self) -> Process:
        argv = [str(self.python.parent / "flower-superlink"),
                "--ssl-certfile", str(self.tls["crt"]), "--ssl-keyfile", str(self.tls["key"]),
                "--ssl-ca-certfile", str(self.tls["ca"]), "--isolation", "subprocess",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        if self.node_auth:
            argv.append("--enable-supernode-auth")
        return self._spawn("superlink", argv, self.env())

    def wait_superlink(self, timeout: float = 120.0) -> None:
        import ssl

        import httpx

        context = ssl.create_default_context(cafile=str(self.tls["ca"]))
        context.keylog_filename = None  # type: ignore[assignment]  # never SSLKEYLOGFILE
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=context, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.processes["superlink"].proc.poll() is not None:
                    tail = self.processes["superlink"].tail()
                    raise FlowerError(f"flower: the plain SuperLink exited: {tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"https://127.0.0.1:{self.port}/health").status_code == 200:
                        return
                time.sleep(0.2)
        raise FlowerError("flower: the plain SuperLink did not start")

    def flwr(self, *args: str, timeout: float = 300.0) -> str:
        done = subprocess.run(
            [str(self.python.parent / "flwr"), *args], capture_output=True, text=True,
            env=self.env(), cwd=self.work, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise FlowerError(f"flower: `flwr {' '.join(args[:2])}` failed: {' | '.join(tail)}")
        return done.stdout

    def register(self, public_key: Path) -> None:
        self.flwr("supernode", "register", str(public_key), "local")

    def start_supernode(self, name: str, data: Path, key: Path | None = None) -> Process:
        home = self.work / f"home-{name}"
        home.mkdir(exist_ok=True)
        argv = [str(self.python.parent / "flower-supernode"),
                "--superlink", f"127.0.0.1:{self.port}",
                "--root-certificates", str(self.tls["ca"]),
                "--node-config", f'data-path="{data}"', "--isolation", "subprocess",
                "--host", "127.0.0.1", "--port", str(free_port())]  # fmt: skip
        if key is not None:
            argv += ["--auth-supernode-private-key", str(key)]
        return self._spawn(name, argv, self.env(home))

    def run(self, app: Path, run_config: list[str]) -> int:
        """``flwr run APP local --run-config ...``: the run's ID."""
        args = ["run", str(app), "local"]
        for item in run_config:
            args += ["--run-config", item]
        text = self.flwr(*args)
        for word in text.split():
            if word.isdigit() and len(word) > 6:
                return int(word)
        raise FlowerError(f"flower: `flwr run` printed no run ID: {text.strip()[-200:]}")

    def status(self, run_id: int) -> str:
        doc = json.loads(self.flwr("ls", "local", "--run-id", str(run_id), "--format", "json"))
        runs = doc.get("runs", [])
        return str(runs[0].get("status", "")) if runs else ""

    def log(self, run_id: int) -> str:
        """The run's log as the ServerApp pushed it (``flwr log RUN local --show``)."""
        return self.flwr("log", str(run_id), "local", "--show")

    def wait_run(self, run_id: int, timeout: float = 600.0) -> str:
        """The run's final status, once its ServerApp's task finished (the SuperLink logs
        it; ``flwr ls`` is asked once then: each Flower CLI call takes seconds)."""
        link = self.processes["superlink"]
        pattern = re.compile(rf"Finished task \d+ of run {run_id}\b")
        deadline = time.monotonic() + timeout
        while not pattern.search(link.text()):
            if link.proc.poll() is not None or time.monotonic() > deadline:
                raise FlowerError(f"flower: run {run_id} did not finish: {link.tail()}")
            time.sleep(0.2)
        for _ in range(50):
            status = self.status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(0.2)
        raise FlowerError(f"flower: run {run_id} is {status!r} after its task finished")

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        return self._spawn(name, argv, env)

    def stop(self) -> None:
        for p in reversed(list(self.processes.values())):
            if p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGTERM)
        for p in self.processes.values():
            try:
                p.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        log = self.work / "logs" / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.work, start_new_session=True)  # fmt: skip
        self.processes[name] = p = Process(name, proc, log)
        return p
