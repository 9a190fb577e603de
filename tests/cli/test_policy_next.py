"""`secfl policy next` (the next version of a policy, with new federation settings) and
`secfl policy init --settings` (the task's federation.yaml as the policy's settings).

A real SPM accepting the version `next` writes, and the federation taking it without a
reset, is the scientist's path test (tests/cli/test_own_task.py).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
import yaml

from secfl.policy import digest, load_policy, load_policy_file
from secfl.policy._next import next_version
from tests.cli.test_policy_init import ALL_SEALED, _init
from tests.cli.test_policy_init import world as world  # the fixture, shared
from tests.clirun import call, failed
from tests.imports import modules_loaded

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def v1(world: Path, capsys: Capsys) -> Path:
    code, _, err = _init(capsys, "--validation", "validation.secfl", *ALL_SEALED,
                         "--rounds", "3", "--train", "epochs=2")  # fmt: skip
    assert (code, err) == (0, ""), err
    return world / "policy.yaml"


def test_next_names_its_predecessor_changes_the_settings_and_keeps_the_rest(
    v1: Path, capsys: Capsys
) -> None:
    before = load_policy_file(v1)
    code, out, err = call(capsys, "policy", "next", str(v1), "--rounds", "8",
                          "--set", "start_from=previous", "--train", "lr=0.1")  # fmt: skip
    assert (code, err) == (0, ""), err
    written = v1.with_name("policy-v2.yaml")
    after = load_policy_file(written)
    assert (after.version, after.predecessor) == (2, digest(before))
    assert after.federation == {
        **before.federation, "rounds": 8, "start_from": "previous", "run": 2,
        "train": {"epochs": 2, "lr": 0.1},
    }  # fmt: skip
    # nothing but the version, its predecessor and the federation changed
    same = {"version", "predecessor", "federation"}
    assert after.model_dump(exclude=same) == before.model_dump(exclude=same)
    # the comments `init` wrote (what each measurement covers) are still there
    comments = [line for line in v1.read_text().splitlines() if line.lstrip().startswith("#")]
    assert comments and comments == [
        line for line in written.read_text().splitlines() if line.lstrip().startswith("#")
    ]
    assert f"wrote {written}: policy fed version 2 after version 1" in out
    assert "federation changes: rounds, run, start_from, train" in out
    assert "run 2: a new version is a new run; it starts from the newest model" in out
    # the board of version 1 signs it as it signs any version
    code, _, err = call(capsys, "policy", "sign", str(written), "--key", "board/alice.key",
                        "--member", "alice")  # fmt: skip
    assert code == 0, err


def test_next_of_next_and_an_explicit_run(v1: Path, capsys: Capsys) -> None:
    assert call(capsys, "policy", "next", str(v1))[0] == 0
    v2 = v1.with_name("policy-v2.yaml")
    code, out, err = call(capsys, "policy", "next", str(v2), "--set", "run=7")
    assert (code, err) == (0, ""), err
    v3 = load_policy_file(v1.with_name("policy-v3.yaml"))  # not policy-v2-v3.yaml
    assert (v3.version, v3.predecessor) == (3, digest(load_policy_file(v2)))
    assert v3.federation["run"] == 7 and v3.federation["rounds"] == 3
    assert "it starts from the task's initial model" in out


def test_a_run_that_does_not_go_up_is_refused(v1: Path, capsys: Capsys) -> None:
    """It was written, and said "run N: a new version is a new run" of an old number."""
    assert call(capsys, "policy", "next", str(v1), "--set", "run=4")[0] == 0
    v2 = v1.with_name("policy-v2.yaml")
    for run in ("4", "1"):
        error = failed(capsys, "policy", "next", str(v2), "--set", f"run={run}")
        assert error == (
            f"error: --set run={run}: version 2 trains run 4 and a new version is a new run; "
            "give run=5 or more, or leave --set run out (run 5)\n"
        )
        assert not v1.with_name("policy-v3.yaml").exists()
    assert call(capsys, "policy", "next", str(v2), "--set", "run=5")[0] == 0


def test_the_highest_run_has_no_next_run(v1: Path, capsys: Capsys) -> None:
    """It wrote run 2**31 + 1, which the schema refuses (and `validate` then said so)."""
    assert call(capsys, "policy", "next", str(v1), "--set", f"run={2**31}")[0] == 0
    v2 = v1.with_name("policy-v2.yaml")
    error = failed(capsys, "policy", "next", str(v2))
    assert error == (
        f"error: version 2 trains run {2**31}, the highest run number: a new version would "
        "be a new run; start a policy of another name\n"
    )
    assert not v1.with_name("policy-v3.yaml").exists()


def test_an_argument_is_quoted_as_given_never_as_an_emoji(world: Path, capsys: Capsys) -> None:
    """`:warning:` in a file name was shown as the emoji (Rich's emoji codes)."""
    error = failed(capsys, "policy", "next", ":warning:.yaml")
    assert error.startswith("error: cannot read policy ':warning:.yaml': "), error


def test_a_bad_setting_is_one_line_and_writes_nothing(v1: Path, capsys: Capsys) -> None:
    error = failed(capsys, "policy", "next", str(v1), "--set", "round=8")
    assert error.startswith("error: federation: round: unknown setting (did you mean 'rounds'?)")
    assert not v1.with_name("policy-v2.yaml").exists()
    error = failed(capsys, "policy", "next", str(v1), "--strategy", "fedavgg")
    assert error.startswith("error: ") and "fedavgg" in error
    assert not v1.with_name("policy-v2.yaml").exists()
    # an existing file is replaced only with --force
    v1.with_name("policy-v2.yaml").write_text("mine")
    assert "--force" in failed(capsys, "policy", "next", str(v1))
    assert v1.with_name("policy-v2.yaml").read_text() == "mine"


def test_a_layout_the_line_edit_cannot_follow_is_written_out_whole(v1: Path) -> None:
    doc = yaml.safe_load(v1.read_text())
    as_json = json.dumps(doc)  # one line: no `version:` line to edit
    policy, text = next_version(as_json, {**doc["federation"], "rounds": 4})
    assert (policy.version, policy.predecessor) == (2, digest(load_policy(as_json)))
    assert policy.federation["rounds"] == 4
    assert load_policy(text) == policy


def test_init_takes_the_tasks_federation_yaml(world: Path, capsys: Capsys) -> None:
    (world / "federation.yaml").write_text(
        "federation:\n  rounds: 4\n  objective: {metric: r2, mode: max}\n"
        "  train: {epochs: 2, lr: 0.05}\n"
    )
    code, _, err = _init(capsys, *ALL_SEALED, "--settings", "federation.yaml",
                         "--train", "epochs=3")  # fmt: skip
    assert (code, err) == (0, ""), err
    fed = load_policy_file(world / "policy.yaml").federation
    assert fed["rounds"] == 4 and fed["objective"] == {"metric": "r2", "mode": "max"}
    assert fed["train"] == {"epochs": 3, "lr": 0.05}  # the flag overrides one key
    # settings the aggregator would refuse are refused here, and nothing is written
    (world / "policy.yaml").unlink()
    (world / "federation.yaml").write_text("federation:\n  round: 4\n")
    error = failed(capsys, "policy", "init", "--name", "fed", "--member", "alice=board/alice.pub",
                   "--site", "site-1", "--task", "task.secfl", "--sim-root", "sim/root.pem",
                   *ALL_SEALED[:1], "--settings", "federation.yaml")  # fmt: skip
    assert "round: unknown setting (did you mean 'rounds'?)" in error
    assert not (world / "policy.yaml").exists()


def test_the_policy_commands_do_not_load_torch(v1: Path) -> None:
    """Board members run them on machines that train nothing: they start in a fraction
    of a second (torch alone takes one or more). `init --settings` loaded the
    aggregator's startup, torch and all, to read the settings file."""
    v1.with_name("federation.yaml").write_text("federation:\n  rounds: 4\n")
    commands = [
        ["policy", "validate", str(v1)],
        ["policy", "next", str(v1), "-o", str(v1.with_name("next.yaml")), "--rounds", "5"],
        ["policy", "init", "--name", "fed", "--member", "alice=board/alice.pub",
         "--member", "bob=board/bob.pub", "--member", "carol=board/carol.pub",
         "--site", "site-1", "--site", "site-2", "--task", "task.secfl",
         "--sim-root", "sim/root.pem", "--validation", "validation.secfl", *ALL_SEALED,
         "--settings", "federation.yaml", "-o", str(v1.with_name("init.yaml"))],
    ]  # fmt: skip
    code = (
        "from secfl.cli.main import main\n"
        f"for argv in {commands!r}:\n"
        "    assert main(argv) == 0, argv\n"
    )
    assert modules_loaded(code, ["torch"])[0] == []
    assert load_policy_file(v1.with_name("init.yaml")).federation["rounds"] == 4


def test_only_the_lines_of_changed_settings_change() -> None:
    """The board reviews a diff of exactly what changed: the example policy's comments,
    inline ones included, and its flow-style settings stay as they were written."""
    text = (Path(__file__).resolve().parents[2] / "examples" / "policy.yaml").read_text()
    current = load_policy(text)
    settings = {**current.federation, "rounds": 12, "start_from": "previous"}
    settings["train"] = {**settings["train"], "lr": 0.1}  # type: ignore[dict-item]
    del settings["fraction"]
    policy, new = next_version(text, settings)
    assert policy.federation == settings
    diff = [
        line
        for line in difflib.unified_diff(text.splitlines(), new.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert sorted(diff) == sorted([
        "-version: 1", "+version: 2", '-predecessor: ""', f"+predecessor: {digest(current)}",
        "-  rounds: 10", "+  rounds: 12",
        "-  fraction: 1.0              # of the joined collaborators sampled each round",
        "-  train: {epochs: 2, lr: 0.05, batch_size: 32}",
        "+  train: {epochs: 2, lr: 0.1, batch_size: 32}",
        "+  start_from: previous",
    ])  # fmt: skip
