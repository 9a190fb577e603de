"""A policy `secfl policy init` wrote, against a real SPM and real `secfl run` processes.

- `--seal` seals the owners' keys for exactly this board: the SPM opens them when the
  signed policy is submitted;
- the aggregator's measured command holds no address or folder: the host sets them in
  the environment, and the aggregator warns at start when no output key is configured;
- a refused measurement shows what `secfl run` measured, in the form the policy's
  comments use, and an unknown service name lists the real ones (launcher and SPM).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from secfl.shield import encrypt_directory
from secfl.spm.client import SpmClient, SpmRefused
from secfl.tee import _simulated as simulated
from tests.spm.harness import Board, SpmProcess, make_sim

TASK = '''"""The federation's task: scikit-learn's digits."""
from secfl.tasks._registry import get_task

_task = get_task("digits")
name = _task.name
build_model, load_data = _task.build_model, _task.load_data
train, evaluate = _task.train, _task.evaluate
'''


def _env(**extra: str) -> dict[str, str]:
    """This install's `secfl` on PATH, as a user has it; plus ``extra``."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def secfl(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["secfl", *args], capture_output=True, text=True, timeout=120, check=False,
        cwd=cwd, env=_env(**env),
    )  # fmt: skip


@dataclass
class Fed:
    base: Path
    spm: SpmProcess
    policy: dict[str, object]

    def run_argv(
        self, service: str, *command: str, task: str = "task.secfl", data: str = ""
    ) -> list[str]:
        volumes = ["--volume", f"task={task}"]
        if service != "aggregator":  # not opened before attestation: any path will do
            volumes += ["--volume", f"{service}={data or 'unused.secfl'}"]
        return ["secfl", "run", "--spm", self.spm.url, "--spm-pin", self.spm.pin,
                "--policy", "fed", "--service", service, "--platform", "simulated",
                "--sim-dir", str(self.base / "sim"), *volumes, "--", *command]  # fmt: skip


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    base = tmp_path_factory.mktemp("init-run")
    make_sim(base / "sim")
    spm = SpmProcess(base / "spm-data", base / "sim", None).start()
    try:
        board = Board.create()
        for name in board.keys:
            (base / f"{name}.pub").write_bytes(board.public[name])
        (base / "task").mkdir()
        (base / "task" / "task.py").write_text(TASK)
        for name in ("task", "model", "site-1", "site-2"):
            (base / f"{name}.key").write_text(os.urandom(32).hex())
        key = bytes.fromhex((base / "task.key").read_text())
        encrypt_directory(base / "task", base / "task.secfl", key)
        made = secfl(
            "policy", "init", "--name", "fed", "--threshold", "2",
            *[f"--member={n}={n}.pub" for n in board.keys], "--site", "site-1", "--site", "site-2",
            "--task", "task.secfl", "--sim-root", f"sim/{simulated.ROOT_CERT}",
            "--seal", "task-key=task.key", "--seal", "output-key=model.key",
            "--seal", "site-1-key=site-1.key", "--seal", "site-2-key=site-2.key",
            "--spm", spm.url, "--spm-pin", spm.pin, "--rounds", "1", "--min-clients", "1",
            cwd=base,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert "to fill in" not in made.stdout
        # This federation's model owner forgot the output key: the aggregator must say so.
        doc = yaml.safe_load((base / "policy.yaml").read_text())
        doc["services"][0]["inject"]["files"].pop("/fl/output.key")
        doc["secrets"] = [s for s in doc["secrets"] if s["name"] != "output-key"]
        (base / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        sigs = []
        for member in ("alice", "bob"):
            (base / f"{member}.key").write_bytes(board.keys[member])
            signed = secfl("policy", "sign", "policy.yaml", "--key", f"{member}.key",
                           "--member", member, cwd=base)  # fmt: skip
            assert signed.returncode == 0, signed.stderr
            sigs += ["--sig", f"policy.yaml.{member}.sig"]
        # The SPM opens every sealed key when it provisions the version: `--seal` sealed
        # them for this policy and exactly this board.
        submitted = secfl("policy", "submit", "policy.yaml", *sigs, "--spm", spm.url,
                          "--spm-pin", spm.pin, cwd=base)  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        yield Fed(base, spm, doc)
    finally:
        spm.stop()


def test_a_federation_runs_on_host_settings_and_warns_without_an_output_key(fed: Fed) -> None:
    """The measured commands hold no address or folder: where the aggregator listens,
    checkpoints, writes metrics and reports ready, and whom the site dials, are the
    hosts' settings. The site's data volume, which the policy protects by a counter, is
    shielded only now. The aggregator says at start that the final model would be
    sealed to nobody."""
    base = fed.base
    split = secfl("data", "split", "--task", "digits", "--clients", "2", "-o", "shards", cwd=base)
    assert split.returncode == 0, split.stderr
    (base / "site-1-data").mkdir()
    (base / "shards" / "client-000.safetensors").rename(base / "site-1-data" / "shard.safetensors")
    key = bytes.fromhex((base / "site-1.key").read_text())
    encrypt_directory(base / "site-1-data", base / "site-1.secfl", key, version=1)

    ready = base / "agg-ready.json"
    agg_env = _env(SECFL_LISTEN="127.0.0.1:0", SECFL_READY_FILE=str(ready),
                   SECFL_CHECKPOINTS=str(base / "ckpt"), SECFL_METRICS=str(base / "m.jsonl"),
                   SECFL_OUTPUT=str(base / "out"))  # fmt: skip
    agg = _start(fed, "aggregator", agg_env, "secfl", "aggregator", "--task", "volume:task")
    site = None
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert agg.poll() is None, (base / "aggregator.log").read_text()
            assert time.monotonic() < deadline, (base / "aggregator.log").read_text()
            time.sleep(0.1)
        port = json.loads(ready.read_text())["port"]
        assert port != 7443  # SECFL_LISTEN's port 0: any free one
        site_env = _env(SECFL_AGGREGATOR=f"127.0.0.1:{port}")
        site = _start(fed, "site-1", site_env, "secfl", "collaborator", "--task", "volume:task",
                      data="site-1.secfl")  # fmt: skip
        assert agg.wait(timeout=180) == 0, (base / "aggregator.log").read_text()
        assert site.wait(timeout=60) == 0, (base / "site-1.log").read_text()
    finally:
        for proc in (agg, site):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    text = (base / "aggregator.log").read_text()
    assert (
        "WARNING secfl.fl: output: no output key: the final model will be sealed to nobody "
        "(it stays only in the aggregator's sealed checkpoints); to let the model owner "
        "open it, seal their key"
    ) in text, text
    rounds = [json.loads(line) for line in (base / "m.jsonl").read_text().splitlines()]
    assert [(r["round"], r["participants"]) for r in rounds] == [(1, ["site-1"])]
    assert any((base / "ckpt").rglob("*")) and not (base / "out" / "model.secfl").exists()


def _start(
    fed: Fed, service: str, env: dict[str, str], *command: str, data: str = ""
) -> subprocess.Popen[bytes]:
    with open(fed.base / f"{service}.log", "wb") as out:
        return subprocess.Popen(
            fed.run_argv(service, *command, data=data), stdout=out, stderr=subprocess.STDOUT,
            cwd=fed.base, env=env, start_new_session=True,
        )  # fmt: skip


def test_a_refused_measurement_shows_what_was_measured(fed: Fed) -> None:
    """An address put back on the command line changes the measurement: `secfl run`
    shows the command it measured next to what the policy accepts."""
    command = ["secfl", "collaborator", "--aggregator", "127.0.0.1:7443", "--task", "volume:task"]
    done = subprocess.run(fed.run_argv("site-1", *command), capture_output=True, text=True,
                          timeout=120, cwd=fed.base, env=_env(), check=False)  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    accepted = fed.policy["services"][1]["measurements"]["simulated"][0]  # type: ignore[index]
    assert lines[0] == (
        "secfl run: the SPM refused the measurement of service 'site-1'; secfl run measured:"
    )
    assert lines[1].startswith("secfl run:   program:      /") and "(sha256 " in lines[1]
    assert lines[2] == (
        "secfl run:   command:      secfl collaborator --aggregator 127.0.0.1:7443 --task "
        "volume:task"
    )
    # (a bare name: where PATH found it is measured too)
    assert lines[3] == (
        f"secfl run:   found at:     {shutil.which('secfl', path=_env()['PATH'])} (on PATH: "
        "install it there on every machine)"
    )
    assert lines[4].startswith("secfl run:   code volumes: task=")
    assert lines[6] == f"secfl run:   the policy accepts (simulated): {accepted}"
    assert lines[7].startswith("error: measurement: simulated measurement ") and lines[7].endswith(
        "is not accepted for service 'site-1' of policy 'fed' version 1 (it pins 1 "
        "simulated identity): the program, its command line or its code differ from what "
        "the policy pins; what secfl run measured is shown above: compare it with what the "
        "policy's measurement was computed from (the comments `secfl policy init` writes "
        "next to it, or `secfl measure --for-run`)"
    ), lines[7]
    assert len(lines) == 8


def test_another_release_of_the_code_is_refused_by_the_spm_and_named(fed: Fed) -> None:
    """The SPM refuses it (the refusal is in its audit log, not a check the host's own
    launcher could skip); the launcher then says in plain words which volume differs."""
    other = fed.base / "other-task"
    other.mkdir(exist_ok=True)
    (other / "task.py").write_text(TASK + "\n# changed\n")
    encrypt_directory(other, fed.base / "other.secfl", os.urandom(32))
    done = subprocess.run(
        fed.run_argv("site-1", "secfl", "collaborator", "--task", "volume:task",
                     task="other.secfl"),
        capture_output=True, text=True, timeout=120, cwd=fed.base, env=_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 1
    pinned = fed.policy["volumes"][0]["tag"]  # type: ignore[index]
    last = done.stderr.splitlines()[-1]
    assert last.startswith("error: measurement: "), last
    assert "code volume 'task' (other.secfl) has tag " in last
    assert last.endswith(
        f", the policy pins {pinned[:16]}...: this is another release of the code than the "
        "board approved"
    ), last


def test_an_unknown_service_lists_the_real_ones(fed: Fed) -> None:
    done = subprocess.run(fed.run_argv("site1", "secfl", "collaborator", "--task", "volume:task"),
                          capture_output=True, text=True, timeout=120, cwd=fed.base, env=_env(),
                          check=False)  # fmt: skip
    assert (done.returncode, done.stderr) == (
        1, "error: policy: 'fed' has no service 'site1' (its services: aggregator, site-1, "
        "site-2)\n",
    )  # fmt: skip
    # the SPM says the same to a workload that asks it directly
    from secfl.spm.enroll import enroll

    with SpmClient(fed.spm.url, pin=fed.spm.pin) as client:
        tee = simulated.SimulatedPlatform(fed.base / "sim")
        with pytest.raises(SpmRefused) as info:
            enroll(client, tee, "fed", "site1", measurement="00" * 48)
    assert str(info.value) == (
        "policy: 'fed' has no service 'site1' (its services: aggregator, site-1, site-2)"
    )
