"""A robustness grid on a real local Ray instance: the records the process pool writes,
``--resume`` across engines, Ctrl-C that keeps what finished, one-line refusals.

Ray is optional (``pip install 'secfl[ray]'``): a clone without it skips these tests
saying why; under CI (``CI`` set) a missing Ray fails them, as a CI run that skipped
the engine's only tests would pass while proving nothing. One Ray instance (2 CPUs,
a small object store, ``ray start --head``) serves the module: starting one takes
seconds. Ray never runs inside the test process: every driver is a ``secfl`` process
of its own. A Ray driver leaves gRPC threads in its process, and a later fork of it
with a ``preexec_fn`` (the launcher's tests) aborted in gRPC's poller.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secfl.cli.main import main
from secfl.eval.folder import load_records
from secfl.eval.grid import key
from tests.conftest import in_ci

pytestmark = pytest.mark.heavy(55)  # seconds on one worker: scheduled first

GRID = ["eval", "robustness", "--tasks", "digits", "--clients", "6", "--partitions", "iid",
        "--malicious", "0,0.34", "--attacks", "sign-flip", "--defences",
        "fedavg,median", "--seeds", "1", "--rounds", "2", "--epochs", "1"]  # fmt: skip
RUNS = 2 * (1 + 1)  # defences x (clean + attacks)
ENTRY = "import sys; from secfl.cli.main import main; sys.exit(main(sys.argv[1:]))"
#: A line of Ray's or gRPC's own C++ logging (``[2026-12-05 10:44:46,414 E ...]``,
#: ``E1205 10:33:46.214149 ...``), not secfl's, also as Ray forwards it from another
#: process (``\x1b[33m(raylet)\x1b[0m [2026-...``: the raylet's warning that the disk
#: is nearly full, seen in CI).
LOGGED = r"(\x1b\[[\d;]*m)?(\([^)]*\)\s*)?(\x1b\[[\d;]*m)?\s*(\[\d{4}-\d\d-\d\d |[EWIF]\d{4} \d\d:)"


def _timing(name: str) -> bool:
    """The fields that measure time (and ratios of times): they differ run to run."""
    return (
        name == "seconds" or name.endswith(("_seconds", "_seconds_max", "_s")) or ("ratio" in name)
    )


def _untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not _timing(k)}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _runs(folder: Path) -> dict[tuple[Any, ...], Any]:
    """The folder's records by run, without their timings; a run recorded twice fails."""
    records = load_records(folder)
    runs = {key(r): _untimed(r) for r in records}
    assert len(runs) == len(records), "a run was recorded twice"
    return runs


RAY = Path(sys.executable).with_name("ray")
#: Drivers given an address send the instance's token (``~/.ray``) only when told to.
ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


def _cli(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``secfl`` in a process of its own (the Ray driver stays out of this one)."""
    return subprocess.run([sys.executable, "-c", ENTRY, *argv], capture_output=True,
                          text=True, env=ENV, timeout=280, **kwargs)  # fmt: skip


def _free_cpus(address: str) -> float:
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(ray.available_resources().get('CPU', 0.0))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe, address], capture_output=True,
                          text=True, env=ENV, timeout=60)  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a local Ray instance this module shares (2 CPUs)."""
    try:
        import importlib.util

        missing = importlib.util.find_spec("ray") is None
    except ValueError:
        missing = True
    if missing or not RAY.exists():
        if in_ci():
            pytest.fail("ray is not installed, and CI must test --ray (bash scripts/setup.sh "
                        "installs it; unset CI only for a local run)", pytrace=False)  # fmt: skip
        pytest.skip("ray is not installed: pip install 'secfl[ray]' (or bash scripts/setup.sh)")
    from secfl.eval.ray_engine import LOCAL_STORE_BYTES

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tmp_path_factory.mktemp("ray")
    # The instance's own token (a fresh machine has none in ~/.ray, and `ray start`
    # with token authentication makes none): for this instance and its drivers only.
    token = tmp_path_factory.mktemp("ray-token") / "auth_token"
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))
    ENV["RAY_AUTH_TOKEN_PATH"] = str(token)
    start = [str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", "2", "--object-store-memory", str(LOCAL_STORE_BYTES),
             "--include-dashboard", "false", "--disable-usage-stats",
             "--temp-dir", str(temp)]  # fmt: skip
    subprocess.run(start, check=True, capture_output=True, env=ENV, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, env=ENV, timeout=120)


@pytest.fixture(scope="module")
def pool_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[Any, ...], Any]:
    """The grid run by the process pool (``--workers 2``), the reference."""
    out = tmp_path_factory.mktemp("pool")
    assert main([*GRID, "--workers", "2", "-o", str(out)]) == 0
    runs = _runs(out)
    assert len(runs) == RUNS
    return runs


@pytest.mark.timeout(600)  # with the setup of Ray and of the pool's reference
def test_a_grid_on_ray_records_what_the_process_pool_records(
    ray_address: str, pool_runs: dict[tuple[Any, ...], Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "ray"
    done = _cli([*GRID, "--ray", ray_address, "-o", str(out)])
    assert done.returncode == 0, done.stderr
    said = done.stdout
    assert f"{RUNS} runs to go on Ray" in said and f"[{RUNS}/{RUNS}]" in said
    assert [p.name for p in out.glob("runs*.jsonl")] == ["runs-ray.jsonl"]
    ray_runs = _runs(out)
    assert ray_runs == pool_runs  # the same seeds give the same runs, to the last bit
    assert all(r["accuracy"] > 0.1 and len(r["rounds"]) == 2 for r in ray_runs.values())
    report = (out / "report.md").read_text()
    assert f"Runs: {RUNS}" in report and "--ray" not in report  # the grid, not the engine


@pytest.mark.timeout(300)
def test_a_grid_half_run_by_a_process_worker_is_finished_on_ray(
    ray_address: str, pool_runs: dict[tuple[Any, ...], Any], tmp_path: Path
) -> None:
    out = tmp_path / "both"
    assert main([*GRID, "--shard", "0/2", "-o", str(out)]) == 0  # a worker's half
    half = _runs(out)
    assert len(half) == RUNS // 2
    done = _cli([*GRID, "--resume", "--ray", ray_address, "-o", str(out)])
    assert done.returncode == 0, done.stderr
    runs = _runs(out)
    assert runs == pool_runs
    # the worker's runs were kept, only the others ran on Ray
    ray_keys = {key(json.loads(x)) for x in (out / "runs-ray.jsonl").read_text().splitlines()}
    assert ray_keys == set(pool_runs) - set(half)


@pytest.mark.timeout(120)
def test_a_node_that_builds_another_model_is_refused(
    ray_address: str, tmp_path: Path
) -> None:  # fmt: skip
    """Runs of another secfl's model are not comparable: the worker checks the model it
    builds against the driver's and the grid stops in one line, writing nothing. The
    driver here plays the other version (its digest changed); the workers are real."""
    out = tmp_path / "other"
    other = ("import sys; import secfl.eval.ray_engine as engine; "
             "engine.model_digest = lambda task: '0' * 16; "
             "from secfl.cli.main import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip
    argv = [*GRID, "--ray", ray_address, "-o", str(out)]
    done = subprocess.run([sys.executable, "-c", other, *argv], capture_output=True, text=True,
                          env=ENV, timeout=110)  # fmt: skip
    assert done.returncode == 1, done.stderr
    err = "\n".join(x for x in done.stderr.splitlines() if x.startswith("error: ")) + "\n"
    assert err.startswith("error: --ray: node ") and len(err.splitlines()) == 1
    assert "builds another 'digits' model than this machine" in err
    assert not any(out.glob("runs*.jsonl"))


@pytest.mark.timeout(300)
def test_ctrl_c_stops_a_ray_grid_keeping_what_finished(
    ray_address: str, pool_runs: dict[tuple[Any, ...], Any], tmp_path: Path
) -> None:
    """A driver of its own, connecting by address, is interrupted as a user would:
    it keeps the runs that finished, says in one line what continues the grid, its
    tasks stop, and the process engine finishes the grid. Four seeds, so that runs
    are still in flight when the first has finished."""
    grid = [*GRID[:-6], "--seeds", "4", *GRID[-4:]]
    runs = 4 * RUNS
    out = tmp_path / "stopped"
    records = out / "runs-ray.jsonl"
    argv = [*grid, "--ray", ray_address, "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (records.exists() and records.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no run finished on Ray in 180 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # ours, without the lines Ray's and gRPC's C++ loggers print on a stop ("[2026-...",
    # "E1205 ...": a task whose error could not reach the driver that left)
    lines = [x for x in stderr.splitlines() if x.strip() and not re.match(LOGGED, x)]
    assert proc.returncode == 130, stderr
    assert len(lines) == 1 and lines[0].startswith(f"stopped: the finished runs are kept in {out}")
    assert lines[0].endswith(f"-o {out} --resume --ray {ray_address}")
    kept = _runs(out)
    assert 0 < len(kept) < runs and not (out / "report.md").exists()
    size = records.stat().st_size
    deadline = time.monotonic() + 30  # the stopped grid's tasks end: the CPUs are free
    while (free := _free_cpus(ray_address)) != 2:
        assert time.monotonic() < deadline, free
        time.sleep(0.2)
    assert records.stat().st_size == size  # and nothing more arrives
    # the process engine continues a grid that Ray started
    assert main([*grid, "--resume", "-o", str(out)]) == 0
    finished = _runs(out)
    assert len(finished) == runs and kept.items() <= finished.items()
    assert {k: v for k, v in finished.items() if k[-1] == 0} == pool_runs


def test_ray_settings_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusals that need no cluster: nothing runs, nothing is written."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    for extra, match in (
        (["--ray", "auto", "--workers", "2"], "--ray runs the whole grid on the cluster: "
                                              "leave out --workers"),
        (["--ray", "auto", "--shard", "0/2"], "leave out --shard"),
        (["--ray", "auto", "--report-only"], "leave out --report-only"),
        (["--ray", "head"], "'head' is not auto, local, HOST:PORT or ray://HOST:PORT"),
        (["--ray", "ray://head:port"], "is not auto, local, HOST:PORT"),
        (["--ray", f"127.0.0.1:{closed}"], f"cannot reach 127.0.0.1:{closed}"),
        (["--ray", f"ray://127.0.0.1:{closed}"], "check the address"),
    ):  # fmt: skip
        assert main([*GRID, "-o", str(tmp_path / "x"), *extra]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and match in err and len(err.splitlines()) == 1, err
    assert not any((tmp_path / "x").glob("runs*.jsonl"))
    monkeypatch.setitem(sys.modules, "ray", None)  # a clone without Ray
    assert main([*GRID, "-o", str(tmp_path / "y"), "--ray", "auto"]) == 1
    err = capsys.readouterr().err
    assert err == "error: --ray: Ray is not installed here: pip install 'secfl[ray]'\n"


def test_only_timings_are_left_out_of_the_comparison() -> None:
    """The comparison above would pass vacuously if it dropped the results."""
    record = {"accuracy": 0.5, "seconds": 3.0, "aggregate_s": 0.1, "audit_ratio": 2.0,
              "rounds": [{"test_accuracy": 0.5, "train_seconds_max": 1.0,
                          "aggregate_seconds": 0.1, "true_positive_rate": 1.0}]}  # fmt: skip
    assert _untimed(record) == {
        "accuracy": 0.5, "rounds": [{"test_accuracy": 0.5, "true_positive_rate": 1.0}],
    }  # fmt: skip
