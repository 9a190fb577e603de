"""`secfl run` end to end: a real SPM process over loopback HTTPS, the simulated TEE,
real programs started through the launcher as processes."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from secfl.launcher.measurement import resolve_program, run_measurement
from secfl.shield import encrypt_directory
from secfl.spm.client import SpmClient
from secfl.spm.enroll import enroll
from secfl.tee import simulated
from tests.spm.harness import Board, SpmProcess, make_sim

WORKLOAD = textwrap.dedent(
    """\
    #!{python}
    import os, signal, sys, time
    files = os.environ["SECFL_FILES"]
    print("ARG", sys.argv[1:], flush=True)
    print("ENV", os.environ.get("API_TOKEN"), flush=True)
    print("FILE", open(os.path.join(files, "secrets", "token")).read(), flush=True)
    rows = open(os.path.join(os.environ["SECFL_VOLUMES"], "data", "rows.csv")).read()
    print("DATA", rows.strip().replace(chr(10), "|"), flush=True)
    print("FILES_DIR", files, flush=True)
    if "--wait" in sys.argv:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
        print("READY", flush=True)
        time.sleep(60)
    if "--die" in sys.argv:
        print("READY", flush=True)
        time.sleep(60)
    sys.exit(7)
    """
)


class World:
    """SPM, board, volumes and the policy the tests run against."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sim_dir = base / "sim"
        self.root = make_sim(self.sim_dir)
        self.spm = SpmProcess(base / "spm-data", self.sim_dir, None).start()
        self.board = Board.create()
        self.keys = {n: os.urandom(32) for n in ("code", "data")}
        (base / "code").mkdir()
        (base / "code" / "mytask").mkdir()
        (base / "code" / "mytask" / "__init__.py").write_text("NAME = 'mytask'\n")
        (base / "code" / "mytask" / "__main__.py").write_text(
            "import sys\nfrom mytask import NAME\nprint('MODULE', NAME, sys.argv[1:])\n"
            "from secfl.launcher import launch\n"
            "print('STREAM', launch.volumes['data'].read_bytes('rows.csv').decode().strip())\n"
        )
        self.code_tag = encrypt_directory(base / "code", base / "code.vol", self.keys["code"])
        self.data_v1 = self.data_volume(1, "a,b\n1,2\n")
        self.latest = self.data_v1  # the newest release recorded so far
        self.program = base / "workload.py"
        self.program.write_text(WORKLOAD.format(python=sys.executable))
        self.program.chmod(0o755)

    def data_volume(self, version: int, rows: str) -> Path:
        src = self.base / f"data-src-{version}"
        src.mkdir()
        (src / "rows.csv").write_text(rows)
        out = self.base / f"data-v{version}.vol"
        encrypt_directory(src, out, self.keys["data"], version=version)
        return out

    def argv(self, *extra: str) -> list[str]:
        return [str(self.program), "--key", "$$SECFL::api-token:hex$$", *extra]

    def measurement(self, argv: list[str], module: str | None = None) -> str:
        program = None if module else resolve_program(argv[0])
        shown = ["-m", module, *argv] if module else argv
        return run_measurement(program, shown, {"code": self.code_tag})

    def submit(self) -> None:
        run_argv = [self.argv(), self.argv("--wait"), self.argv("--die")]
        openssl = shutil.which("openssl") or "/usr/bin/openssl"
        tool_argv = [openssl, "dgst", "-sha256", "-hmac", "$$SECFL::api-token:hex$$",
                     str(self.base / "message.txt")]  # fmt: skip
        self.tool_argv = tool_argv
        (self.base / "message.txt").write_text("hello from the TEE\n")
        doc = {
            "name": "run",
            "version": 1,
            "board": {"members": self.board.members(), "threshold": 2},
            "platforms": {"accept": ["simulated"], "simulation_root": self.root.decode()},
            "identity_ca": "ca",
            "services": [
                {
                    "name": "worker",
                    "role": "any",
                    "measurements": {"simulated": [self.measurement(a) for a in run_argv]},
                    "volumes": ["code", "data"],
                    "inject": {
                        "env": {"API_TOKEN": "$$SECFL::api-token:base64$$"},
                        "files": {"/secrets/token": "$$SECFL::api-token:hex$$"},
                    },
                },
                {
                    "name": "tool",
                    "role": "any",
                    "measurements": {
                        "simulated": [run_measurement(resolve_program(openssl), tool_argv, {})]
                    },
                    "secrets": ["api-token"],
                },
                {
                    "name": "mod",
                    "role": "any",
                    "measurements": {"simulated": [self.measurement(["x"], module="mytask")]},
                    "volumes": ["code", "data"],
                },
            ],
            "secrets": [
                {"name": "ca", "kind": "x509-ca", "common_name": "run CA"},
                {"name": "api-token", "kind": "random", "size": 16},
                {"name": "code-key", "kind": "imported", "sealed": self.seal("code")},
                {"name": "data-key", "kind": "imported", "sealed": self.seal("data")},
            ],
            "volumes": [
                {"name": "code", "key": "code-key", "kind": "code", "tag": self.code_tag},
                {"name": "data", "key": "data-key", "counter": "data-version"},
            ],
            "counters": [{"name": "data-version"}],
        }
        document = yaml.safe_dump(doc, sort_keys=False)
        with SpmClient(self.spm.url, pin=self.spm.pin) as client:
            client.submit_policy(document, self.board.sign(document, "alice", "bob"))

    def seal(self, volume: str) -> str:
        from cryptography import x509

        from secfl.spm.secrets import seal_imported

        pem = subprocess.run(
            [sys.executable, "-c", "import ssl,sys; h,p=sys.argv[1].rsplit(':',1); "
             "print(ssl.get_server_certificate((h,int(p))))",
             self.spm.url.removeprefix("https://")],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        return seal_imported(self.keys[volume], key, "run", f"{volume}-key")  # type: ignore[arg-type]

    def run(
        self,
        service: str,
        argv: list[str],
        *,
        data: Path | None = None,
        module: str | None = None,
        wait: bool = True,
        attest_spm: bool = False,
    ) -> subprocess.Popen[str] | subprocess.CompletedProcess[str]:
        trust = (
            ["--spm-measurement", self.spm.measurement,
             "--sim-root", str(self.sim_dir / simulated.ROOT_CERT)]
            if attest_spm
            else ["--spm-pin", self.spm.pin]
        )  # fmt: skip
        args = [sys.executable, "-m", "secfl.cli.main", "run", "--spm", self.spm.url, *trust,
                "--policy", "run", "--service", service,
                "--platform", "simulated", "--sim-dir", str(self.sim_dir)]  # fmt: skip
        if service in ("worker", "mod"):
            args += ["--volume", f"code={self.base / 'code.vol'}",
                     "--volume", f"data={data or self.latest}"]  # fmt: skip
        if module:
            args += ["--module", module]
        args += ["--", *argv]
        if not wait:
            return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("run"))
    try:
        w.submit()
        yield w
    finally:
        w.spm.stop()


def _token(world: World) -> bytes:
    """The released api-token, as another attested 'tool' workload receives it."""
    with SpmClient(world.spm.url, pin=world.spm.pin) as client:
        platform = simulated.SimulatedPlatform(world.sim_dir)
        program = resolve_program(world.tool_argv[0])
        measurement = run_measurement(program, world.tool_argv, {})
        got = enroll(client, platform, "run", "tool", measurement=measurement)
    return bytes.fromhex(got.render("api-token", "hex"))


def test_workload_gets_its_secrets_and_exit_code(world: World) -> None:
    done = world.run("worker", world.argv())
    assert done.returncode == 7, done.stderr
    token = _token(world)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["ARG"] == str(["--key", token.hex()])
    import base64

    assert lines["ENV"] == base64.b64encode(token).decode()
    assert lines["FILE"] == token.hex()
    assert lines["DATA"] == "a,b|1,2"
    assert not Path(lines["FILES_DIR"]).exists(), "injected files must be gone after exit"


def test_changed_program_is_refused_and_not_started(world: World, tmp_path: Path) -> None:
    changed = tmp_path / "workload.py"
    changed.write_text(world.program.read_text() + "# one more line\n")
    changed.chmod(0o755)
    done = world.run("worker", [str(changed), "--key", "$$SECFL::api-token:hex$$"])
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().startswith("error: measurement:"), done.stderr


def test_an_unmodified_third_party_program_gets_a_secret(world: World) -> None:
    if not Path(world.tool_argv[0]).exists():
        pytest.skip("openssl is not installed")
    done = world.run("tool", world.tool_argv, attest_spm=True)  # SPM checked by attestation
    assert done.returncode == 0, done.stderr
    expected = hmac.new(_token(world).hex().encode(), b"hello from the TEE\n", hashlib.sha256)
    assert expected.hexdigest() in done.stdout


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap"])
def test_damaged_volumes_are_refused(world: World, tmp_path: Path, damage: str) -> None:
    data = bytearray(world.data_v1.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-20:]
    else:  # two bytes blocks far apart exchanged
        a, b = len(data) // 3, 2 * len(data) // 3
        data[a : a + 16], data[b : b + 16] = data[b : b + 16], data[a : a + 16]
    bad = tmp_path / f"{damage}.vol"
    bad.write_bytes(bytes(data))
    done = world.run("worker", world.argv(), data=bad)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().startswith("error: shield:"), done.stderr


def test_rollback_of_a_data_volume_is_refused(world: World) -> None:
    assert world.run("worker", world.argv()).returncode == 7
    v2 = world.data_volume(2, "a,b\n3,4\n")
    newer = world.run("worker", world.argv(), data=v2)
    assert newer.returncode == 7, newer.stderr
    world.latest = v2
    assert "DATA a,b|3,4" in newer.stdout
    older = world.run("worker", world.argv(), data=world.data_v1)  # v1 again
    assert older.returncode == 1
    assert older.stderr.strip().startswith("error: rollback:"), older.stderr
    with SpmClient(world.spm.url, pin=world.spm.pin) as client:
        state = client.volume_state("run", "data")
    assert state["version"] == 2


def test_signals_are_forwarded(world: World) -> None:
    proc = world.run("worker", world.argv("--wait"), wait=False)
    assert isinstance(proc, subprocess.Popen)
    _wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 42  # the workload's own SIGTERM handler's code


def test_death_by_signal_passes_through(world: World) -> None:
    proc = world.run("worker", world.argv("--die"), wait=False)
    assert isinstance(proc, subprocess.Popen)
    _wait_ready(proc)
    proc.send_signal(signal.SIGUSR1)  # the workload does not handle it: it dies of it
    assert proc.wait(timeout=30) == -signal.SIGUSR1


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.startswith("READY"):
            return
        assert time.monotonic() < deadline
    raise AssertionError(f"the workload did not start: {proc.stderr.read() if proc.stderr else ''}")


def test_python_module_runs_from_memory(world: World) -> None:
    done = world.run("mod", ["x"], module="mytask")
    assert done.returncode == 0, done.stderr
    assert "MODULE mytask ['x']" in done.stdout
    assert "STREAM a,b" in done.stdout


def test_measure_for_run_matches(world: World) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "measure", "--for-run",
         "--code-volume", f"code={world.base / 'code.vol'}", "--", *world.argv()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == world.measurement(world.argv())


def test_an_unverified_spm_is_refused(world: World) -> None:
    args = [sys.executable, "-m", "secfl.cli.main", "run", "--spm", world.spm.url,
            "--policy", "run", "--service", "tool", "--", *world.tool_argv]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: spm: give --spm-pin or --spm-measurement")
    wrong = [*args[:6], "--spm-measurement", "00" * 48, "--sim-root",
             str(world.sim_dir / simulated.ROOT_CERT), *args[6:]]  # fmt: skip
    done = subprocess.run(wrong, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: measurement:"), done.stderr
