"""``secfl demo --keep work`` with a relative path once failed.

The demo starts every process inside its work folder, so a relative work path
named a folder below itself: the SPM wrote its ready file where nobody waited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from secfl._internal.files import ram_base
from secfl.cli.main import main
from secfl.demo import federation
from secfl.demo.federation import DemoSettings, Federation
from secfl.errors import DemoError


def test_a_relative_work_folder_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fed = Federation(Path("work"), DemoSettings(clients=1))
    try:
        assert fed.work == tmp_path / "work"
        fed.start_spm()  # a real `secfl spm serve`, started in the work folder
        assert fed.spm_url.startswith("https://127.0.0.1:")
        assert (tmp_path / "work" / "spm.ready.json").exists()
        assert not (tmp_path / "work" / "work").exists()
    finally:
        fed.stop()


def _stub_federation(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A federation that stops the demo at its first step; the folders it was given."""
    seen: list[Path] = []

    class Stub:
        def __init__(self, work: Path, settings: Any) -> None:
            seen.append(work)
            self.settings = settings

        def start_spm(self) -> None:
            raise DemoError("demo: stopped here by the test")

        def stop(self) -> None:
            pass

    monkeypatch.setattr(federation, "Federation", Stub)
    return seen


def test_the_command_gives_the_demo_an_absolute_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = _stub_federation(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--keep", "work", "--rounds", "1", "--clients", "1"]) == 1
    assert "demo: stopped here by the test" in capsys.readouterr().err
    assert seen == [tmp_path / "work"]


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie too: its parent is gone, not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_a_killed_demo_takes_its_processes_and_plaintext_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a hostile review: a SIGKILLed `secfl demo` left its SPM serving for ever
    (and its workloads running), and its folder on disk with every party's data staged in
    the clear. The processes now get SIGTERM when it dies, and the folder is in RAM."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from secfl.demo.federation import DemoSettings, Federation\n"
        "fed = Federation(Path(sys.argv[1]), DemoSettings(clients=1))\n"
        "fed.start_spm()\n"
        "print(fed._all[0].proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    demo = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "work")],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    spm = 0
    try:
        assert demo.stdout is not None
        spm = int(demo.stdout.readline())
        assert not _gone(spm)  # serving
        demo.kill()
        demo.wait(10)
        deadline = time.monotonic() + 20
        while not _gone(spm) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(spm), "the SPM outlived the killed demo"
    finally:
        demo.kill()
        if spm and not _gone(spm):
            os.kill(spm, signal.SIGKILL)

    seen = _stub_federation(monkeypatch)
    assert main(["demo", "--rounds", "1", "--clients", "1"]) == 1
    capsys.readouterr()
    base = ram_base()
    assert seen and (base is None or seen[0].parent == Path(base))
    assert seen[0].name.startswith(f"secfl-demo-{os.stat('/proc/self/ns/pid').st_ino}-")
    # what a SIGKILLed demo left is removed by the next one (its owner is gone)
    left = Path(base or tempfile.gettempdir()) / "secfl-demo-{}-999999-1-abc".format(
        os.stat("/proc/self/ns/pid").st_ino
    )
    left.mkdir()
    (left / "site-1.csv").write_text("plaintext")
    assert main(["demo", "--rounds", "1", "--clients", "1"]) == 1
    capsys.readouterr()
    assert not left.exists()


@pytest.mark.parametrize("demo", [["demo"], ["flower", "demo"]])
def test_keep_refuses_a_folder_in_use(tmp_path: Path, demo: list[str]) -> None:
    """A hostile review: ``--keep DIR`` wrote the demo's ``sim/`` (a new simulation root,
    forced), ``policy.yaml``, ``spm/`` and ``volumes/`` into a folder in use, replacing
    the user's own; a second demo in the same folder failed reading the first one's
    ready file. A folder that is not empty is now refused, and nothing in it changes."""
    from tests.clirun import one_error, secfl

    mine = tmp_path / "mine"
    assert secfl("sim", "init", str(mine / "sim")).returncode == 0
    (mine / "policy.yaml").write_text("the user's own policy\n")
    before = {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    line = one_error(secfl(*demo, "--keep", str(mine), "--rounds", "1", timeout=120))
    assert "--keep" in line and "is not empty" in line
    assert {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before
    assert sorted(mine.iterdir()) == [mine / "policy.yaml", mine / "sim"]
    # an empty folder others may write in: a link planted in it as policy.yaml later
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # noqa: S103 (as root, another user's folder is refused likewise)
    line = one_error(secfl(*demo, "--keep", str(shared), "--rounds", "1", timeout=120))
    assert "--keep: others may write in" in line and list(shared.iterdir()) == []


def test_report_refuses_a_folder_it_would_write_over_or_through(tmp_path: Path) -> None:
    """A hostile review: ``secfl demo --report .`` replaced the user's ``policy.yaml``
    and ``logs/`` with the demo's at its end, and in a folder another user may write in
    (``secfl demo`` run from a shared folder, where ``secfl-demo-report`` was theirs) a
    link planted as ``model.safetensors`` was written through to the file it named.
    Each is refused in one line before the demo starts; an earlier report is replaced."""
    from tests.clirun import one_error, secfl, secfl_all

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "policy.yaml").write_text("the user's own policy\n")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("a file of the user's\n")
    (theirs / "model.safetensors").symlink_to(victim)
    os.chmod(theirs, 0o777)  # noqa: S103 (as root, another user's folder is refused likewise)
    args = ["demo", "--rounds", "1", "--clients", "1", "--samples", "300", "--epochs", "1"]
    done = secfl_all([*args, "--report", str(mine)], [*args, "--report", str(theirs)],
                     timeout=240)  # fmt: skip
    assert "holds files of its own" in one_error(done[0])
    assert "others may write in" in one_error(done[1])
    # an empty path (an unset variable: --report "$OUT") was the current folder
    empty = secfl(*args, "--report", "", cwd=mine, timeout=240)
    assert "--report: the path is empty" in one_error(empty)
    assert sorted(p.name for p in mine.iterdir()) == ["policy.yaml"]
    assert (mine / "policy.yaml").read_text() == "the user's own policy\n"
    assert victim.read_text() == "a file of the user's\n"


def test_report_is_not_the_kept_work_folder(tmp_path: Path) -> None:
    """A hostile review: ``--keep w --report w`` ran the whole demo, then failed copying
    ``w/policy.yaml`` onto itself (a traceback); it is refused before the demo starts."""
    from tests.clirun import one_error, secfl

    work = tmp_path / "w"
    args = ["demo", "--rounds", "1", "--clients", "1", "--samples", "300", "--epochs", "1"]
    done = secfl(*args, "--keep", str(work), "--report", str(work), timeout=240)
    assert "--report: it is the --keep folder" in one_error(done)
    assert not work.exists()
