"""``secfl new task`` and ``secfl simulate``: the scientist's quick loop, as real processes.

The template is written into a fresh folder, its own test passes under pytest, and
``secfl simulate`` federates it over its three sites' CSV data: the loss falls, the
metrics are finite, and the final model loads with safetensors. A folder in use is
never written over without --force, and a task's mistakes are one line each.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import safetensors
import safetensors.numpy

from secfl.cli._template import SITES, new_task, package_for, synthetic_data
from tests.clirun import ERROR_LINE, call, check_parses, failed, secfl_all, shell_commands

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "src" / "secfl" / "cli" / "templates"
SITE_ARGS = [a for s in SITES for a in ("--data", f"data/{s}")]


def secfl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A task written by the real command into a new folder."""
    base = tmp_path_factory.mktemp("new")
    done = secfl("new", "task", "clinic-risk", cwd=base)
    assert done.returncode == 0, done.stderr
    assert "wrote task 'clinic-risk'" in done.stdout
    return base / "clinic-risk"


def test_it_writes_a_multi_file_task_with_data_settings_and_a_readme(made: Path) -> None:
    files = sorted(str(p.relative_to(made)) for p in made.rglob("*") if p.is_file())
    assert files == [
        ".gitignore",
        "README.md",
        "code/clinic_risk/__init__.py",
        "code/clinic_risk/data.py",
        "code/clinic_risk/model.py",
        "code/clinic_risk/training.py",
        "code/task.py",
        "data/site-1/part-1.csv",
        "data/site-1/part-2.csv",
        "data/site-2/part-1.csv",
        "data/site-3/part-1.csv",
        "data/test/part-1.csv",
        "data/validation/part-1.csv",
        "federation.yaml",
        "test_task.py",
    ]
    task = (made / "code" / "task.py").read_text()
    assert 'name = "clinic-risk"' in task and "from clinic_risk.model import" in task
    texts = [p.read_text() for p in made.rglob("*") if p.is_file() and p.suffix != ".csv"]
    assert not [t for t in texts if "{{" in t]
    readme = (made / "README.md").read_text()
    for command in ("secfl simulate --task code", "secfl shield encrypt code", "secfl policy init"):
        assert command in readme


def test_its_own_test_passes(made: Path) -> None:
    """...and leaves no bytecode in code/, which is what becomes the code volume (it was
    shielded into it: a tag that depended on the Python that ran the test)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "test_task.py", "-q", "-p", "no:cacheprovider",
         "-W", "error::UserWarning"],
        capture_output=True, text=True, timeout=120, cwd=made, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b5 passed\b", done.stdout), done.stdout
    assert not list((made / "code").rglob("*.pyc"))


def test_its_code_is_lint_clean(made: Path) -> None:
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed next to this Python")
    done = subprocess.run(
        [str(ruff), "check", "--isolated", "--line-length", "100", "--select",
         "E,F,W,I,B,UP,SIM", "--config", 'src = ["code"]', "."],
        capture_output=True, text=True, timeout=60, cwd=made, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_simulate_federates_it(made: Path) -> None:
    done = secfl(
        "simulate", "--task", "code", *SITE_ARGS, "--validation", "data/validation",
        "--test", "data/test", "--settings", "federation.yaml", "--rounds", "6",
        "--output", "model.safetensors", "--metrics", "metrics.jsonl", cwd=made,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 sites (site-1 400, site-2 250, site-3 150 samples), 6 rounds of fedavg" in done.stdout
    assert "val loss*" in done.stdout  # the objective's column
    assert re.search(r"best round by val_loss \(min\): \d \([0-9.e-]+\); the final", done.stdout)
    rounds = [json.loads(line) for line in (made / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == list(range(1, 7))
    assert rounds[-1]["train_loss"] < rounds[0]["train_loss"] / 2
    assert rounds[-1]["val_loss"] < rounds[0]["val_loss"] / 2
    assert rounds[-1]["test_r2"] > 0.5
    for entry in rounds:
        assert entry["participants"] == list(SITES)
        for key, value in entry.items():
            if key.startswith(("train_", "val_", "test_")):
                assert math.isfinite(value), (key, value)
    model = safetensors.numpy.load_file(str(made / "model.safetensors"))
    assert sorted(model) == [f"layers.{i}.{p}" for i in (0, 2, 4) for p in ("bias", "weight")]
    assert all(v.dtype.name == "float32" for v in model.values())
    with safetensors.safe_open(str(made / "model.safetensors"), "np") as fh:
        meta = fh.metadata()
    assert meta["objective"] == "loss (min)" and meta["objective_metric"] == "val_loss"
    assert int(meta["best_round"]) == min(rounds, key=lambda r: r["val_loss"])["round"]


def test_a_task_that_raises_is_one_line_and_debug_shows_where(made: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    task = (made / "code" / "task.py").read_text()
    (code / "task.py").write_text(
        task.replace(
            "    return fit(model, data, config)", "    raise ValueError('no such column')"
        )
    )
    (code / "clinic_risk").symlink_to(made / "code" / "clinic_risk")
    args = ["simulate", "--task", str(code), *SITE_ARGS]
    plain, debug = secfl_all(args, [*args, "--debug"], timeout=120, cwd=made)  # at once
    assert plain.returncode == 1
    assert plain.stderr.splitlines() == [
        "error: train: the task raised ValueError: no such column (site-1, round 1); "
        "--debug shows the traceback"
    ]
    assert debug.returncode == 1
    assert 'code/task.py", line' in debug.stderr and "in train" in debug.stderr
    assert "secfl/fl/_local.py" not in debug.stderr  # the task's frames, not secfl's
    assert debug.stderr.splitlines()[-1].startswith("error: train: the task raised ValueError")


def test_a_task_missing_a_function_is_refused(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lacking = tmp_path / "lacking.py"
    lacking.write_text("name = 'x'\ndef build_model(seed=None): ...\ndef load_data(path): ...\n")
    sites = [a for s in SITES for a in ("--data", str(made / "data" / s))]
    line = failed(capsys, "simulate", "--task", str(lacking), *sites)
    assert "is not a task" in line and "train" in line and "evaluate" in line


def test_a_bad_setting_fails_as_the_aggregator_would(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "federation.yaml"
    bad.write_text("federation:\n  round: 8\n")
    line = failed(
        capsys, "simulate", "--task", str(made / "code"), "--data", str(made / "data/site-1"),
        "--settings", str(bad),
    )  # fmt: skip
    assert line.startswith("error: federation: round: ")


def test_too_few_sites_for_the_settings_is_refused(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = failed(
        capsys, "simulate", "--task", str(made / "code"), "--data", str(made / "data/site-1"),
        "--settings", str(made / "federation.yaml"),
    )  # fmt: skip
    assert "min_clients is 3 but 1 site is given" in line


def test_missing_data_is_named(made: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sites = [a for s in SITES for a in ("--data", str(made / "data" / s))]
    task = ["simulate", "--task", str(made / "code")]
    line = failed(capsys, *task, *sites, "--validation", str(made / "nowhere"))
    assert (
        line
        == f"error: --validation: {made}/nowhere does not exist; give a folder or file of data\n"
    )
    line = failed(capsys, *task, *sites[:2], "--data", str(made / "data" / "site-9"))
    assert line.startswith(f"error: --data: {made}/data/site-9 does not exist")


def test_standard_output_is_no_file_for_the_model_or_the_metrics(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: `-o -` ran the whole simulation, then wrote the model to a
    file named '-' in the working folder (stdout carries the rounds' table). Refused
    before anything runs now, and no file is made."""
    monkeypatch.chdir(tmp_path)
    sites = [a for s in SITES for a in ("--data", str(made / "data" / s))]
    task = ["simulate", "--task", str(made / "code"), *sites]
    for option in ("--output", "-o", "--metrics"):
        line = failed(capsys, *task, option, "-")
        name = "--output" if option == "-o" else option
        assert line == (
            f"error: {name} -: standard output carries the rounds' table; give a file name\n"
        )
    assert not (tmp_path / "-").exists()


def test_an_output_that_cannot_be_written_is_refused_before_the_rounds(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model was written after the whole run: a typo in --output's folder lost it."""
    sites = [a for s in SITES for a in ("--data", str(made / "data" / s))]
    task = ["simulate", "--task", str(made / "code"), *sites]
    for output, why in ((tmp_path / "nowhere" / "model.safetensors", "is not a folder"),
                        (tmp_path, "is a folder")):  # fmt: skip
        code, out, err = call(capsys, *task, "--output", str(output))
        assert code == 1 and "simulating" not in out, out
        assert err.startswith("error: --output: ") and why in err and err.count("\n") == 1


def test_one_site_given_twice_or_two_sites_of_one_name_are_refused(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each --data is a site, named after its folder: never one site's data trained
    twice under two names."""
    task = ["simulate", "--task", str(made / "code")]
    one = str(made / "data" / "site-1")
    line = failed(capsys, *task, "--data", one, "--data", f"{made}/data/../data/site-1")
    assert line == (
        f"error: --data: {made}/data/../data/site-1 is given twice (as {one} too); give each "
        "site's data once\n"
    )
    other = tmp_path / "elsewhere" / "site-1"
    other.mkdir(parents=True)
    line = failed(capsys, *task, "--data", one, "--data", str(other))
    assert line.startswith(f"error: --data: two sites would be named 'site-1' ({one} and {other})")


# --- the folder -----------------------------------------------------------------------


def test_a_non_empty_folder_is_refused_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    line = failed(capsys, "new", "task", str(folder))
    assert "is not empty" in line and "--force" in line
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    code, out, _ = call(capsys, "new", "task", str(folder), "--force")
    assert code == 0, out
    assert (folder / "notes.txt").read_text() == "keep me"
    assert (folder / "code" / "task.py").is_file()


def test_force_never_writes_through_a_linked_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From a review: with --force, a `data/` that was a link to another folder got the
    template's CSV files written into whatever it led to."""
    folder, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (folder / "data").symlink_to(elsewhere)
    line = failed(capsys, "new", "task", str(folder), "--force")
    assert f"new task: {folder / 'data'} is a symbolic link; the template is written only" in line
    assert list(elsewhere.iterdir()) == []


def test_an_empty_folder_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = call(capsys, "new", "task", str(tmp_path), "--name", "t1")
    assert code == 0, err
    assert (tmp_path / "code" / "t1" / "model.py").is_file()


@pytest.mark.parametrize("name", ["1abc", "a b", "x" * 65, "über"])
def test_a_bad_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    line = failed(capsys, "new", "task", str(tmp_path / "t"), "--name", name)
    assert ERROR_LINE.match(line) and "is not a task name" in line and "--name" in line
    assert not (tmp_path / "t").exists()


def test_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    assert "is a file" in failed(capsys, "new", "task", str(tmp_path / "f"))


def test_the_package_never_shadows_a_module_it_needs() -> None:
    assert package_for("clinic-risk") == "clinic_risk"
    for taken in ("json", "task", "test_task", "torch", "class", "secfl", "yaml", "google"):
        assert package_for(taken) == f"{taken}_task"


@pytest.mark.parametrize("name", ["yaml", "rich"])
def test_a_task_named_like_a_module_secfl_imports_still_simulates(
    tmp_path: Path, name: str
) -> None:
    """``secfl new task yaml`` wrote a package ``yaml`` that its next step refused: the
    workload had imported PyYAML before the task ("rename it in the task")."""
    assert secfl("new", "task", name, cwd=tmp_path).returncode == 0
    task = tmp_path / name
    assert (task / "code" / f"{name}_task" / "data.py").is_file()
    done = secfl("simulate", "--task", "code", *SITE_ARGS, "--rounds", "1", cwd=task)
    assert done.returncode == 0, done.stderr
    assert f"simulating '{name}'" in done.stdout


def test_the_data_is_the_same_every_time() -> None:
    first, again, other = synthetic_data(0), synthetic_data(0), synthetic_data(1)
    assert first == again and first != other
    assert sorted(first) == [
        "site-1/part-1.csv", "site-1/part-2.csv", "site-2/part-1.csv", "site-3/part-1.csv",
        "test/part-1.csv", "validation/part-1.csv",
    ]  # fmt: skip


def test_new_task_is_a_library_call_too(tmp_path: Path) -> None:
    made = new_task(tmp_path / "lib")
    assert made.name == "lib" and made.package == "lib"
    assert all(p.is_file() for p in made.files) and len(made.files) == 15


def test_a_wheel_ships_every_template_file() -> None:
    """``[tool.setuptools.package-data]`` covers every file under the templates folder
    (a non-editable install would otherwise write a task with files missing)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["secfl"]
    files = [p for p in TEMPLATES.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files
    for path in files:
        relative = str(path.relative_to(ROOT / "src" / "secfl"))
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative


@pytest.mark.parametrize("document", ["template", "docs"])
def test_every_command_in_the_readmes_parses(made: Path, document: str) -> None:
    """Each ``secfl`` line the task's README and docs/quickstart-task.md show is one the
    CLI accepts as written: its commands exist and its options parse."""
    path = made / "README.md" if document == "template" else ROOT / "docs" / "quickstart-task.md"
    commands = shell_commands(path.read_text())
    assert len(commands) >= 2, commands
    for argv in commands:
        check_parses(argv)


def test_a_folder_that_cannot_be_looked_up_is_one_line(tmp_path: Path) -> None:
    """A hostile review: a folder the system will not look up (a name longer than 255
    bytes here; one below a folder the user may not search likewise) was a traceback
    from ``Path.exists``."""
    from tests.clirun import one_error

    done = secfl("new", "task", "a" * 300, "--name", "t1", cwd=tmp_path)
    assert "File name too long" in one_error(done)
    assert list(tmp_path.iterdir()) == []
