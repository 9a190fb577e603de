"""Hostile command lines and files for the federation's commands, run as real processes.

- In secure mode a task or data *path* on ``secfl aggregator`` / ``secfl collaborator``
  is refused before anything is read: attestation covers the command line, not the
  file a path names, so the host could swap in its own code.
- Garbage, deeply nested, huge-integer ``--federation`` settings, ``reset.json`` and
  ``grid.json`` files are one ``error:`` line, never a traceback (item 14).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from secfl.cli.main import main
from secfl.errors import FlError, LaunchError
from secfl.fl._reset import check_reset, reset_statement, sign_reset
from secfl.fl._transport import Credentials
from secfl.fl._workload_identity import WorkloadIdentity
from secfl.policy import load_policy
from secfl.policy._canonical import digest
from tests.policy import member_keys, policy_dict, to_yaml

HUGE = "9" * 5000  # more digits than int() converts (4300)
DEEP = "[" * 100_000 + "]" * 100_000


def secfl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``secfl ARGS`` as a real process, outside any ``secfl run`` (no $SECFL_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECFL_")}
    return subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env, check=False,
    )  # fmt: skip


def run_all(argvs: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Several ``secfl`` processes, two at a time (each takes seconds to import)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda argv: secfl(*argv, cwd=cwd), argvs))


def one_error_line(done: subprocess.CompletedProcess[str], start: str) -> str:
    """The process failed with exit 1 and one ``error: <start>...`` line, no traceback;
    other stderr lines may only be --insecure's warnings and log lines."""
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {start}"), done.stderr[-3000:]
    assert len(errors[0]) < 600, errors[0][:600]  # the hostile input is not echoed back
    return errors[0]


def in_process(capsys: pytest.CaptureFixture[str], argv: list[str], start: str) -> str:
    """``secfl ARGV`` in this process: exit 1 and one ``error: <start>...`` line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, (argv, err[-2000:])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {start}"), (argv, err[-2000:])
    assert len(errors[0]) < 600, errors[0][:600]
    return errors[0]


# --- item 15: secure mode takes only sources that attestation covers -------------------


EVIL_TASK = """\
from pathlib import Path
Path(__file__).with_name("imported").write_text("the host's code ran")
from secfl.tasks._registry import get_task
_t = get_task("digits")
name, build_model, load_data, train, evaluate = (
    _t.name, _t.build_model, _t.load_data, _t.train, _t.evaluate)
"""


def test_secure_workloads_refuse_task_and_data_files(tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text(EVIL_TASK)
    shard = tmp_path / "shard.safetensors"
    shard.write_bytes(b"whatever the host put here")
    agg = ["aggregator", "--listen", "127.0.0.1:0", "--checkpoints", str(tmp_path / "ck")]
    col = ["collaborator", "--aggregator", "127.0.0.1:1"]
    cases = {
        "--task": [*agg, "--task", "evil.py"],
        "--validation": [*agg, "--task", "digits", "--validation", str(shard)],
        "--test": [*agg, "--task", "volume:task", "--test", str(shard)],
        "collaborator --task": [*col, "--task", str(tmp_path / "evil.py")],
        "--data": [*col, "--task", "digits", "--data", str(shard)],
    }
    results = dict(zip(cases, run_all(list(cases.values()), tmp_path), strict=True))
    for option, done in results.items():
        line = one_error_line(done, f"source: {option.split()[-1]} ")
        assert "shield it into a volume" in line and "--insecure" in line, line
    assert not (tmp_path / "imported").exists()  # the host's code never ran


def test_secure_workloads_take_volumes_and_built_in_tasks(tmp_path: Path) -> None:
    """Volumes and built-ins pass the check: these stop only where `secfl run` is missing,
    and --insecure still takes a file (its code runs: nothing is attested there)."""
    (tmp_path / "evil.py").write_text(EVIL_TASK)
    cases = [
        ["collaborator", "--aggregator", "127.0.0.1:1", "--task", "digits",
         "--data", "volume:site-1"],
        ["aggregator", "--listen", "127.0.0.1:0", "--task", "volume:task",
         "--validation", "volume:validation"],
        ["collaborator", "--insecure", "--name", "s", "--aggregator", "127.0.0.1:1",
         "--task", "evil.py", "--data", "missing.safetensors"],
    ]  # fmt: skip
    secure_col, secure_agg, insecure = run_all(cases, tmp_path)
    one_error_line(secure_col, "identity: $SECFL_IDENTITY is not set")
    # (the last line: what an operator sees who started it without `secfl run`)
    assert secure_col.stderr.strip().splitlines()[-1].startswith("error: identity: ")
    one_error_line(secure_agg, "identity: $SECFL_IDENTITY is not set")
    one_error_line(insecure, "source: no data file missing.safetensors")
    assert (tmp_path / "imported").exists()


def test_a_volume_name_cannot_leave_the_volumes_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secfl.fl._inputs import data_path, load_task

    (tmp_path / "volumes" / "task").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "task.py").write_text(EVIL_TASK)
    monkeypatch.setenv("SECFL_VOLUMES", str(tmp_path / "volumes"))
    for spec in ("volume:../outside", "volume:.", "volume:a/b", "volume:"):
        with pytest.raises(FlError, match=r"^source: .* is not a volume name"):
            load_task(spec)
        with pytest.raises(FlError, match=r"^source: .* is not a volume name"):
            data_path(spec)
    assert not (tmp_path / "outside" / "imported").exists()


def test_key_options_name_only_injected_files(tmp_path: Path) -> None:
    """The same hole for keys: ``--checkpoint-key /host/file`` would seal checkpoints
    under a key the host chose. Only files under $SECFL_FILES are taken."""
    files = tmp_path / "files"
    (files / "fl").mkdir(parents=True)
    (files / "fl" / "other.key").write_text("00" * 32)
    (tmp_path / "host.key").write_text("11" * 32)
    ident = WorkloadIdentity(
        policy="p", service="aggregator", spm_url="https://spm", spm_pin="0" * 64,
        policy_digest="d" * 64, platform="simulated", sim_dir=None, measurement=None,
        creds=Credentials(b"", b"", b""), session_token="t", files=files,
    )  # fmt: skip
    assert ident.secret_file("fl/checkpoint.key", "fl/other.key") == files / "fl" / "other.key"
    for given in (str(tmp_path / "host.key"), "../host.key", "fl/../../host.key"):
        with pytest.raises(LaunchError, match=r"^secret: .* is not an injected file"):
            ident.secret_file("fl/checkpoint.key", given)


# --- item 14: hostile --federation files -----------------------------------------------


def _laughs(levels: int = 9) -> str:
    """A YAML "billion laughs": each alias list holds ten of the previous (10**10 values)."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


LAUGHS = _laughs()
FEDERATION_FILES: dict[str, str | bytes] = {
    "garbage.json": b"\xff\xfe\x00garbage\x00\x01{{{",
    "deep.json": DEEP,
    "deep.yaml": "rounds: " + DEEP,
    "digits.json": '{"rounds": ' + HUGE + "}",
    "digits.yaml": "strategy_settings: {beta: " + HUGE + "}",
    "overflow.json": '{"strategy": "trimmed-mean", "strategy_settings": {"beta": 1'
    + "0" * 400
    + "}}",
    "train.json": '{"train": {"epochs": 1' + "0" * 400 + "}}",
    "inf.yaml": "heartbeat: .inf\ndead_after: .inf\n",
    "nan.json": '{"round_timeout": NaN}',
    "laughs.yaml": LAUGHS,
    "hex.yaml": "strategy_settings: {beta: 0x" + "f" * 5000 + "}\n",  # base 16: no digit limit
    "bad.yaml": "rounds: [1, 2\nseed: {\n",
    "date.yaml": "strategy_settings: {when: 2024-01-01}\n",
    "bool.json": '{"rounds": true}',
    "timeout.json": '{"heartbeat": 1e300, "dead_after": 1e301}',
}


#: Run as real processes; the others in-process (the same code, seconds faster each).
AS_PROCESSES = ("garbage.json", "deep.json", "overflow.json")


def test_hostile_federation_files_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, content in FEDERATION_FILES.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    (tmp_path / "folder.yaml").mkdir()

    def argv(name: str) -> list[str]:
        return ["aggregator", "--insecure", "--federation", str(tmp_path / name),
                "--task", "digits", "--listen", "127.0.0.1:0"]  # fmt: skip

    for done in run_all([argv(name) for name in AS_PROCESSES], tmp_path):
        one_error_line(done, "federation: ")
    for name in [*FEDERATION_FILES, "folder.yaml"]:
        if name not in AS_PROCESSES:
            in_process(capsys, argv(name), "federation: ")


# --- item 14: hostile reset.json files ----------------------------------------------------


RESET_FILES: dict[str, str | bytes] = {
    "garbage": b"\x00\xff\xfegarbage",
    "deep": DEEP,
    "digits": '{"statement": {"value": ' + HUGE + '}, "signatures": []}',
    "strings": '{"statement": "reset please", "signatures": "all of them"}',
    "list": "[1, 2, 3]",
    "signature strings": '{"statement": {}, "signatures": ["alice", 3]}',
    "nan": '{"statement": {"value": NaN}, "signatures": []}',
    "empty": "",
}


@pytest.fixture(scope="module")
def board_policy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    folder = tmp_path_factory.mktemp("board")
    policy = folder / "policy.yaml"
    policy.write_text(to_yaml(policy_dict()))
    key = folder / "alice.key"
    key.write_bytes(member_keys()["alice"][0])
    return policy, key, load_policy(policy.read_text())


def test_a_hostile_reset_file_is_one_line_for_the_aggregator(
    tmp_path: Path, board_policy: tuple[Path, Path, Any]
) -> None:
    _, _, policy = board_policy
    pdigest = digest(policy)
    for name, content in RESET_FILES.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        with pytest.raises(FlError, match=r"^reset: ") as info:
            check_reset(path, policy, pdigest, "rounds")
        assert "\n" not in str(info.value) and len(str(info.value)) < 400, (name, info.value)
    statement = reset_statement(policy.name, pdigest, "rounds", 1, "lost")
    huge = {**statement, "value": 10**400}  # under the digit limit, over any counter
    signed = tmp_path / "signed.json"
    for member in ("alice", "carol"):
        sign_reset(signed, huge, member_keys()[member][0], member)
    with pytest.raises(FlError, match=r"^reset: the statement names no counter value"):
        check_reset(signed, policy, pdigest, "rounds")
    # Found by a hostile review: a statement naming this policy, its digest and counter
    # (all public) with a lone surrogate ("\\ud800" is valid JSON) was a traceback at
    # the aggregator's start, before any signature was checked.
    planted = tmp_path / "surrogate.json"
    text = json.dumps({"statement": {**statement, "reason": "@"}, "signatures": []})
    planted.write_text(text.replace('"@"', '"\\ud800"'))
    with pytest.raises(FlError, match=r"^reset: .* holds text with no UTF-8 form"):
        check_reset(planted, policy, pdigest, "rounds")
    good = tmp_path / "good.json"
    for member in ("alice", "carol"):
        sign_reset(good, statement, member_keys()[member][0], member)
    assert check_reset(good, policy, pdigest, "rounds") == 1  # a genuine one still passes


def test_sign_reset_refuses_a_hostile_reset_file_in_one_line(
    tmp_path: Path, board_policy: tuple[Path, Path, Any]
) -> None:
    policy, key, _ = board_policy
    argvs, before = [], {}
    for name, content in RESET_FILES.items():
        path = tmp_path / f"{name.replace(' ', '-')}.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        before[path] = path.read_bytes()
        argvs.append(["policy", "sign-reset", "--policy", str(policy), "--value", "3",
                      "--counter", "round", "--key", str(key), "--member", "alice",
                      "-o", str(path)])  # fmt: skip
    for done in run_all(argvs, tmp_path):
        one_error_line(done, "reset: ")
    assert all(path.read_bytes() == content for path, content in before.items())  # untouched


# --- item 14: hostile grid.json files ------------------------------------------------------


def _grid(**changes: Any) -> str:
    grid = {"tasks": ["digits"], "clients": 10, "partitions": [None], "malicious": [0.0],
            "attacks": ["sign-flip"], "defences": ["fedavg"], "seeds": [0], "rounds": 2,
            "epochs": 1, "samples": None, "clones": 30}  # fmt: skip
    return json.dumps({"grid": {**grid, **changes}, "command": "secfl eval robustness"})


GRID_FILES: dict[str, str | bytes] = {
    "deep": DEEP,
    "deep-inside": '{"grid": ' + "[" * 5000 + "]" * 5000 + ', "command": "x"}',
    "digits": '{"clients": ' + HUGE + "}",
    "huge": _grid(clients=10**400),
    "garbage": b"\xff\xfe\x00\x01",
    "wrong-type": _grid(tasks=5),
    "unknown-field": _grid(surprise=1),
    "missing-field": json.dumps({"grid": {"tasks": ["digits"]}, "command": "x"}),
}


def test_hostile_grid_files_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argvs = {}
    for name, content in GRID_FILES.items():
        folder = tmp_path / name
        folder.mkdir()
        path = folder / "grid.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        argvs[name] = ["eval", "robustness", "--report-only", "-o", str(folder)]
    real = ["deep", "huge"]
    for done in run_all([argvs[name] for name in real], tmp_path):
        one_error_line(done, "")
    for name, argv in argvs.items():
        if name not in real:
            in_process(capsys, argv, "")
        assert not (tmp_path / name / "report.md").exists()
    resumed = [*argvs["deep-inside"][:2], "--quick", "--resume", "-o", str(tmp_path / "deep")]
    in_process(capsys, resumed, "grid: ")  # --resume reads it too


def test_the_grid_fields_checked_are_the_grid_s() -> None:
    import dataclasses

    from secfl.eval.folder import GRID_FIELDS
    from secfl.eval.grid import Grid

    assert set(GRID_FIELDS) == {f.name for f in dataclasses.fields(Grid)}
