"""Where task code and data come from: multi-file task volumes, any data files."""

from __future__ import annotations

import importlib.machinery
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from secfl.errors import FlError
from secfl.fl._inputs import FolderImporter, data_path, load_task
from secfl.shield import Volume
from secfl.tasks._contract import Task, task_errors_shown
from tests.clirun import call
from tests.fl.example_task import write_task


@pytest.fixture(autouse=True)
def clean_imports() -> Iterator[None]:
    """Each test imports its task afresh: forget task modules and their folders."""
    saved_path = list(sys.path)
    yield
    sys.path[:] = saved_path
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, FolderImporter)]
    for name in list(sys.modules):
        top = name.split(".")[0]
        if top in ("mymodels", "numpy_extras", "extras") or name.startswith("secfl_task_"):
            del sys.modules[name]


def shielded_volume(
    capsys: pytest.CaptureFixture[str], plain: Path, volumes: Path, name: str
) -> None:
    """``plain`` encrypted with `secfl shield encrypt`, then opened below ``volumes/name``
    as `secfl run` gives it to a workload (``--allow-compiled``: the bytecode planted
    here is what a volume's author can ship, as any other tool would)."""
    key = volumes.parent / f"{name}.key"
    volumes.mkdir(parents=True, exist_ok=True)
    code, _, err = call(capsys, "shield", "keygen", "-o", str(key))
    assert code == 0, err
    sealed = volumes.parent / f"{name}.secfl"
    code, _, err = call(capsys, "shield", "encrypt", str(plain), "-o", str(sealed),
                        "--key-file", str(key), "--allow-compiled")  # fmt: skip
    assert code == 0, err
    with Volume.open(sealed, key.read_text().strip()) as volume:
        volume.extract(volumes / name)


def decoy(root: Path) -> Path:
    """An installed-looking ``mymodels`` that is not the task's, first on sys.path."""
    (root / "mymodels").mkdir(parents=True)
    (root / "mymodels" / "__init__.py").write_text("DECOY = True\n")
    (root / "mymodels" / "extra.py").write_text("FROM_ELSEWHERE = True\n")
    sys.path.insert(0, str(root))
    return root


def test_a_task_volume_imports_its_own_package(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_task(tmp_path / "plain")
    volumes = tmp_path / "run" / "volumes"
    shielded_volume(capsys, tmp_path / "plain", volumes, "task")
    monkeypatch.setenv("SECFL_VOLUMES", str(volumes))
    monkeypatch.setenv("SECFL_CODE_VOLUMES", "task")  # as secfl run says
    decoy(tmp_path / "site-packages")
    task = load_task("volume:task")
    model = task.build_model(0)
    assert type(model).__module__ == "mymodels.net"
    package = sys.modules["mymodels"]
    assert not hasattr(package, "DECOY")
    assert Path(package.__file__ or "").is_relative_to(volumes / "task")
    assert task.name == "csv-regression"


def test_a_task_volume_compiles_to_no_bytecode_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile review: the task and its modules, decrypted from a volume,
    were imported by Python's file loader, which wrote their bytecode under a host's
    PYTHONPYCACHEPREFIX, on disk, where it outlived the workload."""
    write_task(tmp_path / "plain")
    volumes = tmp_path / "run" / "volumes"
    shielded_volume(capsys, tmp_path / "plain", volumes, "task")
    monkeypatch.setenv("SECFL_VOLUMES", str(volumes))
    monkeypatch.setenv("SECFL_CODE_VOLUMES", "task")
    cache = tmp_path / "host-cache"
    monkeypatch.setattr(sys, "pycache_prefix", str(cache))  # as the variable sets it
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    task = load_task("volume:task")
    task.build_model(0)  # imports the task's own package too
    assert sys.modules["mymodels"].__file__
    written = [p for p in cache.rglob("*.pyc")] if cache.exists() else []
    written += list((volumes / "task").rglob("*.pyc"))
    assert written == []


def test_a_task_is_not_taken_from_a_data_volume(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--task volume:NAME` names a volume the policy declares data (no tag, a counter:
    its key holder publishes new releases without the board): refused, nothing of it
    imported. The launcher names the code volumes in SECFL_CODE_VOLUMES."""
    write_task(tmp_path / "plain")
    (tmp_path / "plain" / "mymodels" / "__init__.py").write_text(
        "raise SystemExit('imported from a data volume')\n"
    )
    volumes = tmp_path / "run" / "volumes"
    shielded_volume(capsys, tmp_path / "plain", volumes, "site-data")
    monkeypatch.setenv("SECFL_VOLUMES", str(volumes))
    for code in ("", "task", "task,other"):
        monkeypatch.setenv("SECFL_CODE_VOLUMES", code)
        with pytest.raises(FlError, match=r"^source: volume 'site-data' is not a code volume"):
            load_task("volume:site-data")
    assert "mymodels" not in sys.modules


def test_a_package_folder_without_init_is_the_volumes_own(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mymodels/` without `__init__.py` (a namespace package) is still the volume's:
    an installed regular package of that name on sys.path does not shadow it."""
    write_task(tmp_path / "plain")
    (tmp_path / "plain" / "mymodels" / "__init__.py").unlink()
    volumes = tmp_path / "run" / "volumes"
    shielded_volume(capsys, tmp_path / "plain", volumes, "task")
    monkeypatch.setenv("SECFL_VOLUMES", str(volumes))
    monkeypatch.setenv("SECFL_CODE_VOLUMES", "task")
    decoy(tmp_path / "site-packages")
    (tmp_path / "site-packages" / "mymodels" / "net.py").write_text("raise SystemExit('decoy')\n")
    task = load_task("volume:task")
    assert type(task.build_model(0)).__module__ == "mymodels.net"
    package = sys.modules["mymodels"]
    assert not hasattr(package, "DECOY")
    assert list(package.__path__) == [str(volumes.resolve() / "task" / "mymodels")]
    assert Path(sys.modules["mymodels.net"].__file__ or "").is_relative_to(volumes.resolve())


def test_a_namespace_folder_bound_to_another_module_is_refused(tmp_path: Path) -> None:
    folder = write_task(tmp_path / "mytask")
    (folder / "mymodels" / "__init__.py").unlink()
    decoy(tmp_path / "site-packages")
    import mymodels  # noqa: F401  (imported from elsewhere before the task)

    with pytest.raises(FlError, match=r"^source: the task's module 'mymodels' has the name of a"):
        load_task(str(folder))


def test_a_module_the_volume_lacks_is_not_taken_from_elsewhere(tmp_path: Path) -> None:
    folder = write_task(tmp_path / "mytask")
    with open(folder / "task.py", "a") as fh:
        fh.write("\nimport mymodels.extra\n")
    decoy(tmp_path / "site-packages")
    with task_errors_shown(), pytest.raises(FlError) as info:  # as --insecure shows it
        load_task(str(folder))
    assert str(info.value) == (
        "source: the task module (task.py) failed: ModuleNotFoundError: No module named "
        "'mymodels.extra'"
    )
    with pytest.raises(FlError) as hidden:  # as a secure workload shows it: type and place
        load_task(str(folder))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    place = f"task file #{files.index('task.py') + 1} of {len(files)}"  # (no name: a review)
    assert str(hidden.value).startswith(
        f"source: the task module ({place}) failed: ModuleNotFoundError at {place}, line "
    ), str(hidden.value)


def test_a_name_bound_to_another_module_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mytask"
    (folder / "numpy").mkdir(parents=True)
    (folder / "numpy" / "__init__.py").write_text("MINE = True\n")
    (folder / "task.py").write_text("import numpy\nassert numpy.MINE\n")
    assert "numpy" in sys.modules
    with pytest.raises(FlError) as info:
        load_task(str(folder / "task.py"))
    text = str(info.value)
    assert text.startswith("source: the task's module 'numpy' has the name of a module already ")
    assert text.endswith("; rename it in the task")


def test_a_clash_inside_the_task_package_is_refused_too(tmp_path: Path) -> None:
    folder = tmp_path / "mytask"
    (folder / "mymodels").mkdir(parents=True)
    (folder / "mymodels" / "__init__.py").write_text("import json\n")
    (folder / "json.py").write_text("MINE = True\n")
    (folder / "task.py").write_text("import mymodels\n")
    assert "json" in sys.modules
    with pytest.raises(FlError, match=r"^source: the task's module 'json' has the name of a"):
        load_task(str(folder))


def test_which_module_of_a_folder_is_the_task(tmp_path: Path) -> None:
    single = tmp_path / "single"
    single.mkdir()
    (single / "model_task.py").write_text("name = 'one'\n")
    with pytest.raises(Exception, match="it lacks build_model, load_data, train, evaluate"):
        load_task(str(single))  # its only .py file is the task (and this one is incomplete)
    (single / "helpers.py").write_text("")
    with pytest.raises(FlError) as info:
        load_task(str(single))
    assert str(info.value) == (
        "source: folder '" + str(single) + "' holds 2 .py files at its top and no task.py; "
        "name the task module task.py"
    )


def test_data_is_the_volume_folder_or_the_path_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volumes = tmp_path / "volumes"
    for name, files in (("task", ["task.py"]), ("site-1", ["a.csv", "b.parquet", "img/1.png"])):
        for file in files:
            (volumes / name / file).parent.mkdir(parents=True, exist_ok=True)
            (volumes / name / file).write_bytes(b"x")
    monkeypatch.setenv("SECFL_VOLUMES", str(volumes))
    assert data_path("volume:site-1") == volumes / "site-1"
    assert data_path(None, exclude={"task"}) == volumes / "site-1"  # the only data volume
    assert data_path(str(volumes / "site-1" / "a.csv")) == volumes / "site-1" / "a.csv"
    assert data_path(str(volumes / "site-1")) == volumes / "site-1"
    with pytest.raises(FlError, match=r"^source: no data file .*missing \(nor a folder"):
        data_path(str(tmp_path / "missing"))
    with pytest.raises(FlError, match=r"^source: give --data \(this workload has 2 data volumes"):
        data_path(None)


def _compiled_over(plain: Path, relative: str, source: str) -> None:
    """Beside ``plain/relative``, its ``__pycache__`` bytecode compiled from ``source``
    instead, "unchecked-hash": Python's file loader runs it without a look at the
    source."""
    import importlib.util
    import py_compile

    other = plain.parent / "other" / relative
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_text(source)
    target = importlib.util.cache_from_source(str(plain / relative))
    mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
    py_compile.compile(str(other), cfile=target, dfile=str(plain / relative), doraise=True,
                       invalidation_mode=mode)  # fmt: skip


def _run_from_volume(
    capsys: pytest.CaptureFixture[str], plain: Path, monkeypatch: pytest.MonkeyPatch
) -> Task:
    """``plain`` shielded, opened as `secfl run` gives it, and its task loaded."""
    volumes = plain.parent / "run" / "volumes"
    shielded_volume(capsys, plain, volumes, "task")
    monkeypatch.setenv("SECFL_VOLUMES", str(volumes))
    monkeypatch.setenv("SECFL_CODE_VOLUMES", "task")
    return load_task("volume:task")


def test_a_volume_runs_its_source_not_bytecode_hidden_beside_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile review: a code volume whose task.py (and its package's modules)
    its reviewers read ran, under `secfl run`, the ``__pycache__`` bytecode shielded
    beside them, compiled from other code."""
    plain = write_task(tmp_path / "plain")
    source = "import extras.util\n" + (plain / "task.py").read_text()
    (plain / "task.py").write_text(source)
    _compiled_over(plain, "task.py", source.replace("csv-regression", "from-bytecode"))
    _compiled_over(plain, "mymodels/__init__.py", "HIDDEN = True\n")
    (plain / "extras").mkdir()  # a namespace folder of the task's: its modules too
    (plain / "extras" / "util.py").write_text("WHO = 'source'\n")
    _compiled_over(plain, "extras/util.py", "WHO = 'bytecode'\n")
    task = _run_from_volume(capsys, plain, monkeypatch)
    assert list((tmp_path / "run" / "volumes" / "task").rglob("*.pyc"))  # shielded too
    assert task.name == "csv-regression"
    assert not hasattr(sys.modules["mymodels"], "HIDDEN")
    assert sys.modules["extras.util"].WHO == "source"


def test_a_volume_runs_its_source_not_a_compiled_module_of_its_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's finder takes ``net.<platform>.so`` before ``net.py``: what ran was not
    the source the reviewers read (an empty file here: it fails to load if tried)."""
    plain = write_task(tmp_path / "plain")
    (plain / "mymodels" / f"net{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    task = _run_from_volume(capsys, plain, monkeypatch)
    assert type(task.build_model(0)).__module__ == "mymodels.net"
    assert Path(sys.modules["mymodels.net"].__file__ or "").suffix == ".py"
